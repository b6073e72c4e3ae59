// Rows nobody reads (nn/vit.cpp, Block::dropped_rows) are keys and values only: a block's output rows
// [1, 1 + p) that VPT-deep's next prompt replaces, and with 'token' pooling every row of the last
// block but the class token's. The model with the skip must give the logits and every trainable
// gradient of the model computing every row (VisionTransformer::skip_unread_rows = false) to 3e-6
// in float32 and 1e-12 in float64, for VPT-deep, shallow, with prompt dropout, with LoRA and
// adapters beside it, with avg pooling (which reads every row) and for every registered method;
// and it must really save work and bytes.
#include <algorithm>
#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "autograd/cost_meter.h"
#include "autograd/ops.h"
#include "core/random.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {

// 16 px, patch 4: 16 patches + the class token; 3 blocks so that two of them skip rows.
nn::ViTConfig small(const json& over) {
  json j{{"img_size", 16}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 24}, {"depth", 3},
         {"num_heads", 2},  {"num_classes", 3}, {"mean", {0.5}},  {"std", {0.5}}};
  for (auto& [k, v] : over.items()) j[k] = v;
  return nn::vit_config_from_json(j);
}

// Every parameter of the model and its deltas widened to float64 in place (handles stay valid).
void to_f64(nn::Module& m) {
  for (auto& [n, t] : m.named_parameters(true)) {
    if (t.dtype() != DType::F32) continue;  // SHiRA's integer positions
    Tensor w = t.to(DType::F64).contiguous();
    TensorImpl* im = t.impl();
    im->storage = w.impl()->storage;
    im->strides = w.impl()->strides;
    im->offset = 0;
    im->dtype = DType::F64;
  }
}

struct Step {
  Tensor logits;
  std::map<std::string, Tensor> grads;
  size_t held_bytes = 0;  // what the tape saves for backward
  double flops = 0;       // the GEMMs issued, forward and backward
};

// perturb: noise on every trainable tensor first, so that a zero-initialised delta (LoRA's B)
// passes gradients to all of its tensors.
Step step(const json& model, const json& peft, DType dt, bool skip, bool perturb = false) {
  nn::VisionTransformer m(small(model));
  m.init_weights(3);
  peft::PeftModel pm(m, peft::parse_peft_config(peft), 5);
  if (perturb) {
    Generator g(9);
    NoGradGuard ng;
    for (auto& [name, t] : pm.trainable_parameters()) {
      Tensor noise = Tensor::empty(t.shape(), t.dtype());
      g.normal_(noise, 0.0, 0.05);
      Tensor(t).copy_(add(t, noise));
    }
  }
  if (dt == DType::F64) to_f64(m);
  m.skip_unread_rows = skip;
  m.train();
  Tensor x = Tensor::empty({4, 1, 16, 16});
  Generator(7).normal_(x);
  x = x.to(dt);
  Tensor y = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 1}, {4});
  default_generator().manual_seed(11);  // the same dropout masks on both paths
  Step s;
  FlopMeter meter;
  {
    FlopMeterGuard counting(meter);
    s.logits = pm.forward(x);
    Tensor loss = cross_entropy(s.logits, y);
    s.held_bytes = tape().held_bytes();
    backward(loss);
  }
  for (auto& [scope, f] : meter.forward) s.flops += f;
  for (auto& [scope, f] : meter.backward) s.flops += f;
  for (auto& [name, t] : pm.trainable_parameters()) {
    // MoSA trains a random part of its copies per step: the others get none (on both paths alike)
    if (peft.dump().find("mosa") == std::string::npos) REQUIRE_MESSAGE(t.grad().defined(), name);
    if (t.grad().defined()) s.grads[name] = t.grad();
  }
  return s;
}

// Skip and full rows agree: to 1e-12 in float64; in float32 to 3e-6 (about 50 float32 roundings:
// the two paths sum in different orders, and the orders move with the compiler's vectorization;
// the sanitized build at -O1 reached 1.6e-6 on a LoRA A gradient of the first block, -O2 stayed
// under 1e-6), or for a tensor whose float32 reference is itself further than that from float64
// (a bias gradient summed over rows with cancellation), to twice that reference's own rounding
// error (two float32 computations that each round so far from the truth). Returns the float32
// (skip, full).
// f32_only (a method whose frozen tensors are no parameters, which to_f64 cannot widen): float32
// alone, to 1e-5.
std::pair<Step, Step> same_with_and_without_skip(const json& model, const json& peft, bool perturb = false,
                                                 bool f32_only = false) {
  Step fast, full, full64;
  const std::vector<DType> dtypes = f32_only ? std::vector<DType>{DType::F32} : std::vector<DType>{DType::F64, DType::F32};
  for (DType dt : dtypes) {
    Step a = step(model, peft, dt, true, perturb), b = step(model, peft, dt, false, perturb);
    INFO("dtype ", std::string(dtype_name(dt)));
    auto tol = [&](const Tensor& ref64, const Tensor& ref) {
      if (f32_only) return 1e-5;
      return dt == DType::F64 ? 1e-12 : std::max(3e-6, 2 * test::rel_err(ref, ref64));
    };
    double worst = test::rel_err(a.logits, b.logits);
    CHECK(worst < tol(dt == DType::F32 && !f32_only ? full64.logits : b.logits, b.logits));
    REQUIRE(a.grads.size() == b.grads.size());
    for (auto& [name, g] : b.grads) {
      INFO(name);
      REQUIRE(a.grads.count(name));
      const double e = test::rel_err(a.grads.at(name), g);
      worst = std::max(worst, e);
      CHECK(e < tol(dt == DType::F32 && !f32_only ? full64.grads.at(name) : g, g));
      double mass = 0;
      for (double v : g.to_vector()) mass += std::abs(v);
      CHECK(mass > 0);  // a gradient that is there, not zeros on both sides
    }
    MESSAGE(std::string(dtype_name(dt)), ": largest relative difference ", worst, " over logits and ", b.grads.size(),
            " gradients");
    if (dt == DType::F32) fast = a, full = b;
    else full64 = b;
  }
  return {fast, full};
}

}  // namespace

TEST_CASE("vpt rows: VPT-deep with skipped prompt rows equals every row computed, and saves work and bytes") {
  const json deep{{"deltas", json::array({{{"method", "vpt_deep"}, {"num_tokens", 3}}})}, {"trainable", {"head.*"}}};
  auto [fast, full] = same_with_and_without_skip({}, deep);
  MESSAGE("vpt_deep: GEMM FLOPs ", fast.flops, " vs ", full.flops, ", saved bytes ", fast.held_bytes, " vs ",
          full.held_bytes);
  CHECK(fast.flops < full.flops);
  CHECK(fast.held_bytes < full.held_bytes);
}

TEST_CASE("vpt rows: prompt dropout, LoRA and adapters beside the prompts, avg pooling: the same results") {
  const json drop{{"deltas", json::array({{{"method", "vpt_deep"}, {"num_tokens", 2}, {"dropout", 0.3}}})}};
  same_with_and_without_skip({}, drop);
  const json mixed{{"deltas", json::array({{{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 3}},
                                           {{"name", "lora"}, {"method", "lora"}, {"init", "random"}},
                                           {{"name", "par"}, {"method", "parallel"}, {"init", "bert"}, {"dim", 4}},
                                           {{"name", "hb"}, {"method", "houlsby"}, {"init", "bert"}, {"dim", 4}}})},
                   {"trainable", {"head.*"}}};
  auto [fast, full] = same_with_and_without_skip({}, mixed);
  CHECK(fast.flops < full.flops);
  // avg pooling reads the last block's prompt rows: that block keeps them, the others skip theirs
  auto [afast, afull] = same_with_and_without_skip({{"global_pool", "avg"}}, mixed);
  CHECK(afast.flops < afull.flops);
}

TEST_CASE("vpt rows: nothing is skipped for VPT-shallow with avg pooling, with dropout inside the blocks, or a disabled prompt") {
  const json shallow{{"deltas", json::array({{{"method", "vpt_shallow"}, {"num_tokens", 3}}})}};
  auto [s_fast, s_full] = same_with_and_without_skip({{"global_pool", "avg"}}, shallow);
  CHECK(s_fast.flops == s_full.flops);
  // with 'token' pooling only the last block skips, its rows beyond the class token
  auto [t_fast, t_full] = same_with_and_without_skip({}, shallow);
  CHECK(t_fast.flops < t_full.flops);
  // attention dropout would draw its masks over other shapes: the block computes every row
  const json deep{{"deltas", json::array({{{"method", "vpt_deep"}, {"num_tokens", 3}}})}};
  auto [d_fast, d_full] = same_with_and_without_skip({{"attn_drop_rate", 0.2}}, deep);
  CHECK(d_fast.flops == d_full.flops);
  CHECK(d_fast.held_bytes == d_full.held_bytes);
  // a disabled deep prompt replaces nothing, so the block before computes its rows
  nn::VisionTransformer m(small({}));
  peft::PeftModel pm(m, peft::parse_peft_config(deep));
  Tensor x = Tensor::empty({2, 1, 16, 16});
  Generator(8).normal_(x);
  NoGradGuard ng;
  pm.set_enabled("vpt_deep", false);
  Tensor off = pm.forward(x);
  pm.remove("vpt_deep");
  CHECK(test::rel_err(off, pm.forward(x)) < 1e-6);
}

TEST_CASE("vpt rows: Attention with skipped queries is the full attention's kept rows, fused and composed") {
  struct Identity : nn::Delta {  // at attn_drop: the probabilities must exist, so the composed path runs
    Identity() { name = "id"; }
    Position position() const override { return Position::Post; }
    const char* method() const override { return "identity"; }
    Tensor apply(const Tensor&, const Tensor& y) override { return y; }
  };
  for (bool composed : {false, true}) {
    INFO("composed ", composed);
    nn::Attention a(12, 2, true, 0.0, 0.0);
    Generator g(4);
    for (auto& [n, t] : a.named_parameters()) g.normal_(t, 0.0, 0.3);
    to_f64(a);
    if (composed) a.add_delta("attn_drop", std::make_shared<Identity>());
    Tensor x = Tensor::empty({2, 7, 12}, DType::F64);
    Generator(5).normal_(x);
    NoGradGuard ng;
    Tensor full = a(x);
    // a middle range (VPT-deep), every row but the first (the last block with 'token' pooling: the
    // kept queries are a view, not a copy) and a leading range
    for (auto [b, e] : {std::pair<int64_t, int64_t>{1, 4}, {1, 7}, {0, 6}}) {
      INFO("skip [", b, ", ", e, ")");
      a.skip_queries = {b, e};
      Tensor part = a(x);
      CHECK(part.shape() == Shape{2, 7 - (e - b), 12});
      CHECK(test::rel_err(part, without_range(full, 1, b, e)) < 1e-13);
    }
    a.skip_queries = {};
  }
}

TEST_CASE("rows: with token pooling the last block computes the class token's row only, for every registered method") {
  int cases = 0;
  for (const peft::MethodDef* md : peft::all_methods())
    for (const json& e : md->examples) {
      INFO(e.dump());
      // a dropout draws its mask over the tensor's shape, so the kept rows would get other draws
      // (of the same distribution) than in the full computation: off where the method has one
      json d = e;
      d["dropout"] = 0.0;
      try {
        peft::parse_peft_config(json{{"deltas", json::array({d})}});
      } catch (const Error&) {
        d = e;  // no such option
      }
      const json cfg{{"deltas", json::array({d})}, {"trainable", {"head.*"}}};
      const bool f32_only = md->name == "vera";  // its shared projections are no parameters
      auto [fast, full] = same_with_and_without_skip({}, cfg, true, f32_only);
      CHECK(fast.flops < full.flops);
      CHECK(fast.held_bytes < full.held_bytes);
      ++cases;
    }
  CHECK(cases >= int(peft::all_methods().size()));
}

TEST_CASE("rows: a delta that mixes tokens after the last block's attention keeps every row computed") {
  struct MixRows : nn::Delta {  // adds each image's mean token: row t reads every row
    MixRows() { name = "mix"; }
    Position position() const override { return Position::Post; }
    const char* method() const override { return "mix"; }
    bool row_wise() const override { return false; }
    Tensor apply(const Tensor&, const Tensor& y) override { return add(y, mean(y, {1}, true)); }
  };
  for (const char* site : {"blocks.2.mlp_branch", "blocks.2", "norm"}) {
    INFO(site);
    nn::VisionTransformer m(small({}));
    m.init_weights(3);
    m.add_delta(site, std::make_shared<MixRows>());
    CHECK_FALSE(m.pooled_row_only_ok());
    Tensor x = Tensor::empty({2, 1, 16, 16});
    Generator(6).normal_(x);
    NoGradGuard ng;
    Tensor fast = m.forward(x);
    m.skip_unread_rows = false;
    CHECK(test::rel_err(fast, m.forward(x)) < 1e-6);
  }
  nn::VisionTransformer m(small({}));
  CHECK(m.pooled_row_only_ok());
  m.add_delta("blocks.2", std::make_shared<MixRows>());
  m.remove_delta("blocks.2", "mix");
  CHECK(m.pooled_row_only_ok());
  // forward_features is every token, whatever the pooling
  Tensor x = Tensor::empty({2, 1, 16, 16});
  Generator(6).normal_(x);
  NoGradGuard ng;
  CHECK(m.forward_features(x).shape() == Shape{2, 17, 24});
}
