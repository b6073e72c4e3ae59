// The ViT against PyTorch (tests/fixtures/vit_golden.safetensors, made by
// scripts/make_vit_golden.py), plus names, loading refusals and module mechanics.
#include <cmath>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "nn/vit.h"
#include "tests/test_util.h"

using namespace dg;
using namespace dg::nn;

namespace {
const SafeTensors& golden() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/vit_golden.safetensors");
  return st;
}
ViTConfig golden_cfg() {
  return vit_config_from_json(nlohmann::json::parse(golden().metadata.at("config")));
}
std::map<std::string, Tensor> golden_weights() {
  std::map<std::string, Tensor> w;
  for (const auto& [k, t] : golden().tensors)
    if (k.rfind("grad.", 0) != 0 && k.rfind("input.", 0) != 0 && k != "logits" && k != "loss" && k != "adamw_losses")
      w[k] = t;
  return w;
}
int sd_trainable_count(Module& m) {
  int n = 0;
  for (auto& [k, t] : m.named_parameters()) n += t.requires_grad();
  return n;
}
}  // namespace

TEST_CASE("vit: logits, loss and every gradient match PyTorch") {
  tape().clear();
  VisionTransformer m(golden_cfg());
  LoadReport rep = load_state_dict(m, golden_weights(), "vit_golden");
  CHECK(rep.head_loaded);
  m.set_trainable("*", true);  // full fine-tune: every parameter gets a gradient
  m.eval();
  Tensor logits = m(golden().tensors.at("input.images"));
  CHECK(test::rel_err(logits, golden().tensors.at("logits")) < 1e-5);
  Tensor loss = cross_entropy(logits, golden().tensors.at("input.labels"));
  CHECK(std::abs(loss.item() - golden().tensors.at("loss").item()) / golden().tensors.at("loss").item() < 1e-5);
  backward(loss);
  int n = 0;
  for (auto& [name, p] : m.named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    CHECK(test::rel_err(p.grad(), golden().tensors.at("grad." + name)) < 1e-4);
    ++n;
  }
  CHECK(n == 4 + 12 * 3 + 4);  // patch w/b, cls, pos; 12 per block; norm w/b, head w/b
}

TEST_CASE("vit: 5 AdamW steps follow PyTorch's losses") {
  tape().clear();
  VisionTransformer m(golden_cfg());
  load_state_dict(m, golden_weights(), "vit_golden");
  m.set_trainable("*", true);
  m.eval();
  AdamW opt(m.named_parameters(), 1e-3, 0.05);
  std::vector<double> want = golden().tensors.at("adamw_losses").to_vector();
  for (int s = 0; s < 5; ++s) {
    opt.zero_grad();
    Tensor loss = cross_entropy(m(golden().tensors.at("input.images")), golden().tensors.at("input.labels"));
    INFO("step ", s);
    CHECK(std::abs(loss.item() - want[size_t(s)]) / want[size_t(s)] < 1e-4);
    backward(loss);
    opt.step();
  }
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
