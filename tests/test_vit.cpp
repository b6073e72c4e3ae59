// The ViT against PyTorch (tests/fixtures/vit_golden.safetensors, made by
// scripts/make_vit_golden.py), plus names, loading refusals and module mechanics.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "nn/vit.h"
#include "tests/test_util.h"

using namespace dg;
using namespace dg::nn;

namespace {
SafeTensors load_fixture(const char* name) { return load_safetensors(std::string(DG_SOURCE_DIR "/tests/fixtures/") + name); }
const SafeTensors& golden() {
  static SafeTensors st = load_fixture("vit_golden.safetensors");
  return st;
}
ViTConfig config_of(const SafeTensors& st) { return vit_config_from_json(nlohmann::json::parse(st.metadata.at("config"))); }
ViTConfig golden_cfg() { return config_of(golden()); }
std::map<std::string, Tensor> weights_of(const SafeTensors& st) {
  std::map<std::string, Tensor> w;
  for (const auto& [k, t] : st.tensors)
    if (k.rfind("grad.", 0) != 0 && k.rfind("input.", 0) != 0 && k != "logits" && k != "loss" && k != "adamw_losses")
      w[k] = t;
  return w;
}
std::map<std::string, Tensor> golden_weights() { return weights_of(golden()); }
int sd_trainable_count(Module& m) {
  int n = 0;
  for (auto& [k, t] : m.named_parameters()) n += t.requires_grad();
  return n;
}

// Load the fixture's weights, run forward + backward on its batch with every parameter
// trainable, compare logits/loss (relative 1e-5) and every gradient (relative 1e-4, by norm).
void check_parity(const SafeTensors& st, size_t want_params) {
  tape().clear();
  VisionTransformer m(config_of(st));
  LoadReport rep = load_state_dict(m, weights_of(st), "golden");
  CHECK(rep.head_loaded);
  CHECK_FALSE(rep.pos_embed_resampled);
  m.set_trainable("*", true);  // full fine-tune: every parameter gets a gradient
  m.eval();
  Tensor logits = m(st.tensors.at("input.images"));
  const double e_logits = test::rel_err(logits, st.tensors.at("logits"));
  CHECK(e_logits < 1e-5);
  Tensor loss = cross_entropy(logits, st.tensors.at("input.labels"));
  const double want_loss = st.tensors.at("loss").item(), e_loss = std::abs(loss.item() - want_loss) / want_loss;
  CHECK(e_loss < 1e-5);
  backward(loss);
  size_t n = 0;
  double worst = 0;
  std::string worst_name;
  for (auto& [name, p] : m.named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    const double e = test::rel_err(p.grad(), st.tensors.at("grad." + name));
    CHECK(e < 1e-4);
    if (e > worst) worst = e, worst_name = name;
    ++n;
  }
  CHECK(n == want_params);
  CHECK(n == weights_of(st).size());  // the fixture holds exactly the model's tensors
  MESSAGE("parity: logits rel ", e_logits, " (max elementwise ", test::max_rel_err(logits, st.tensors.at("logits"), 1e-3),
          "), loss rel ", e_loss, ", worst gradient rel ", worst, " (", worst_name, ")");
}
}  // namespace

TEST_CASE("vit: logits, loss and every gradient match PyTorch") {
  check_parity(golden(), 4 + 12 * 3 + 4);  // patch w/b, cls, pos; 12 per block; norm w/b, head w/b
}

TEST_CASE("vit: avg pooling, fc_norm, LayerScale, no class token, no qkv bias match PyTorch") {
  SafeTensors st = load_fixture("vit_avg_golden.safetensors");
  ViTConfig c = config_of(st);
  REQUIRE(c.global_pool == "avg");
  REQUIRE_FALSE(c.class_token);
  REQUIRE(c.init_values > 0);
  // patch w/b, pos (no cls); per block 11 (no qkv.bias) + ls1/ls2.gamma; fc_norm w/b, head w/b
  check_parity(st, 3 + 2 * 13 + 4);
  CHECK(st.tensors.count("blocks.0.ls1.gamma"));
  CHECK(st.tensors.count("fc_norm.weight"));
}

TEST_CASE("vit: 5 AdamW steps follow PyTorch's losses") {
  tape().clear();
  VisionTransformer m(golden_cfg());
  load_state_dict(m, golden_weights(), "vit_golden");
  m.set_trainable("*", true);
  m.eval();
  AdamW opt(m.named_parameters(), 1e-3, 0.05);
  std::vector<double> want = golden().tensors.at("adamw_losses").to_vector();
  double worst = 0;
  for (int s = 0; s < 5; ++s) {
    opt.zero_grad();
    Tensor loss = cross_entropy(m(golden().tensors.at("input.images")), golden().tensors.at("input.labels"));
    INFO("step ", s);
    const double e = std::abs(loss.item() - want[size_t(s)]) / want[size_t(s)];
    CHECK(e < 1e-4);
    worst = std::max(worst, e);
    backward(loss);
    opt.step();
  }
  MESSAGE("AdamW: worst relative loss error over 5 steps ", worst, " (losses ", want[0], " -> ", want[4], ")");
}

TEST_CASE("vit: timm names and parameter count for vit_tiny_patch16_224") {
  VisionTransformer m(vit_preset("vit_tiny_patch16_224"));
  auto params = m.named_parameters();
  int64_t total = 0;
  for (auto& [n, t] : params) total += t.numel();
  CHECK(total == 5717416);
  CHECK(params.front().first == "cls_token");  // PyTorch order: own parameters, then children
  CHECK(params[2].first == "patch_embed.proj.weight");
  auto sd = state_dict(m);
  for (const char* k : {"cls_token", "pos_embed", "patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
                        "blocks.0.attn.proj.bias", "blocks.11.mlp.fc1.weight", "blocks.11.mlp.fc2.bias", "norm.weight",
                        "head.weight"})
    CHECK_MESSAGE(sd.count(k), k);
  CHECK(sd["blocks.0.attn.qkv.weight"].shape() == Shape{576, 192});
  CHECK(sd["pos_embed"].shape() == Shape{1, 197, 192});
  VisionTransformer small(vit_preset("vit_small_patch16_224"));
  total = 0;
  for (auto& [n, t] : small.named_parameters()) total += t.numel();
  CHECK(total == 22050664);  // timm's count for vit_small_patch16_224
}

TEST_CASE("vit: loaded weights are frozen; globs and train/eval are independent") {
  VisionTransformer m(golden_cfg());
  for (auto& [n, t] : m.named_parameters()) CHECK_FALSE(t.requires_grad());
  CHECK(m.set_trainable("blocks.*.attn.qkv.*", true) == 3 * 2);
  CHECK(m.set_trainable("head.*", true) == 2);
  m.eval();
  CHECK(sd_trainable_count(m) == 8);
  m.train();
  CHECK(sd_trainable_count(m) == 8);
  CHECK(m.set_trainable("*.bias", true) > 0);
}

TEST_CASE("vit: mismatched and corrupt checkpoints are refused with the tensor's name") {
  VisionTransformer m(golden_cfg());
  auto w = golden_weights();
  auto bad = w;
  bad["blocks.1.mlp.fc1.weight"] = Tensor::zeros({10, 48});
  CHECK_THROWS_WITH_AS(load_state_dict(m, bad, "ckpt"),
                       doctest::Contains("'blocks.1.mlp.fc1.weight' has shape [10, 48], expected [192, 48]"), Error);
  bad = w;
  bad.erase("blocks.2.norm1.bias");
  CHECK_THROWS_WITH_AS(load_state_dict(m, bad, "ckpt"), doctest::Contains("missing tensor 'blocks.2.norm1.bias'"), Error);
  bad = w;
  bad["blocks.9.attn.qkv.weight"] = Tensor::zeros({2});
  CHECK_THROWS_WITH_AS(load_state_dict(m, bad, "ckpt"), doctest::Contains("unexpected tensor 'blocks.9"), Error);
  bad = w;
  Tensor nan = w["norm.weight"].clone();
  nan.data<float>()[3] = std::nanf("");
  bad["norm.weight"] = nan;
  CHECK_THROWS_WITH_AS(load_state_dict(m, bad, "ckpt"), doctest::Contains("'norm.weight' contains NaN"), Error);
  // a backbone without head.* loads and gets a fresh head
  bad = w;
  bad.erase("head.weight");
  bad.erase("head.bias");
  CHECK_FALSE(load_state_dict(m, bad, "ckpt").head_loaded);
}

TEST_CASE("vit: pos_embed is resampled for another image size") {
  ViTConfig c = golden_cfg();
  c.img_size = 48;  // grid 6 instead of 4
  VisionTransformer m(c);
  LoadReport r = load_state_dict(m, golden_weights(), "ckpt");
  CHECK(r.pos_embed_resampled);
  CHECK(m.pos_embed.shape() == Shape{1, 37, 48});
  // cls position is copied untouched; a constant grid stays constant under bilinear resampling
  CHECK(m.pos_embed.to_vector()[0] == golden_weights()["pos_embed"].to_vector()[0]);
  Tensor flat = Tensor::full({1, 1 + 16, 2}, 3.0);
  for (double v : resample_pos_embed(flat, 1, 7).to_vector()) CHECK(v == doctest::Approx(3.0));
  tape().clear();
  Tensor x = Tensor::zeros({1, 3, 48, 48});
  CHECK(m(x).shape() == Shape{1, 7});
}

TEST_CASE("vit: config JSON refuses unknown keys and bad values") {
  CHECK_THROWS_WITH_AS(vit_config_from_json(nlohmann::json{{"embed_dimm", 3}}), doctest::Contains("unknown key 'embed_dimm'"),
                       Error);
  CHECK_THROWS_WITH_AS(vit_config_from_json(nlohmann::json{{"embed_dim", 50}, {"num_heads", 4}}),
                       doctest::Contains("not divisible by num_heads"), Error);
  CHECK_THROWS_WITH_AS(vit_preset("vit_huge"), doctest::Contains("unknown model preset"), Error);
  ViTConfig c = vit_config_from_json(nlohmann::json{{"preset", "vit_small_patch16_224"}, {"num_classes", 5}});
  CHECK(c.embed_dim == 384);
  CHECK(c.num_classes == 5);
}

TEST_CASE("vit: state_dict round-trips through safetensors; another task's head is replaced by a fresh one") {
  tape().clear();
  NoGradGuard ng;
  VisionTransformer a(golden_cfg());
  load_state_dict(a, golden_weights(), "vit_golden");
  const std::string path = DG_BUILD_DIR "/vit_roundtrip_test.safetensors";
  save_safetensors(path, state_dict(a), {{"config", to_json(a.cfg).dump()}});
  SafeTensors st = load_safetensors(path);
  VisionTransformer b(config_of(st));
  CHECK(load_state_dict(b, st.tensors, path).head_loaded);
  const Tensor& x = golden().tensors.at("input.images");
  CHECK(b(x).to_vector() == a(x).to_vector());  // bit-identical: same weights, same kernels
  std::remove(path.c_str());
  // a 3-class model from the 7-class checkpoint: body loaded, head fresh (timm init, zero bias)
  ViTConfig c3 = golden_cfg();
  c3.num_classes = 3;
  VisionTransformer h(c3);
  CHECK_FALSE(load_state_dict(h, golden_weights(), "vit_golden").head_loaded);
  CHECK(state_dict(h)["blocks.2.mlp.fc2.weight"].to_vector() == golden_weights()["blocks.2.mlp.fc2.weight"].to_vector());
  for (double v : state_dict(h)["head.bias"].to_vector()) CHECK(v == 0.0);
  CHECK(h(x).shape() == Shape{3, 3});
}
