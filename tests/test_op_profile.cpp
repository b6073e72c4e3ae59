// The op profile (core/op_profile.h) on the CPU backend, timed by the host clock: counts per
// family and per call kind are the calls made, times are non-negative and fit in the wall time.
// (On the GPU the same code times CUDA events; scripts/gpu_run.sh's profile step runs it there.)
#include <chrono>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/backend.h"
#include "core/op_profile.h"
#include "core/random.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
struct ProfileOn {  // profiling on for one test case, off again after (even when a check throws)
  ProfileOn() {
    profile::set_enabled(true);
    profile::reset(Device::CPU);
  }
  ~ProfileOn() { profile::set_enabled(false); }
};
const profile::Row& family(const profile::Report& r, profile::Family f) { return r.families[size_t(f)]; }
int64_t op_calls(const profile::Report& r, const std::string& name) {
  for (const profile::Row& o : r.ops)
    if (o.name == name) return o.calls;
  return 0;
}
Tensor rand_tensor(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s);
  Generator(seed).uniform_(t, -1, 1);
  return t;
}
}  // namespace

TEST_CASE("op profile: each backend call is counted once, under its family, and nothing while off") {
  Tensor a = rand_tensor({8, 16}, 1), b = rand_tensor({16, 4}, 2), c = Tensor::empty({8, 4});
  Backend::Gemm g;
  g.M = 8, g.N = 4, g.K = 16, g.lda = 16, g.ldb = 4, g.ldc = 4;
  backend(Device::CPU).gemm(g, a, b, c);  // before profiling: not recorded
  ProfileOn on;
  Backend& be = backend(Device::CPU);
  CHECK(std::string(be.name()) == "cpu");
  for (int i = 0; i < 3; ++i) be.gemm(g, a, b, c);
  be.unary(UnaryOp::Gelu, c, c, 0.0);
  be.unary(UnaryOp::Exp, c, c, 0.0);
  be.binary(BinaryOp::Add, c, c, c);
  Tensor ln = Tensor::empty({8, 16}), mean = Tensor::empty({8}), rstd = Tensor::empty({8});
  be.layernorm(a, Tensor(), Tensor(), 8, 16, 1e-6, ln, mean, rstd);
  be.copy(a, ln);
  be.fill(ln, 0.5);
  be.copy(view::transpose(b, 0, 1), Tensor::empty({4, 16}));
  profile::set_enabled(false);
  backend(Device::CPU).gemm(g, a, b, c);  // off again: not recorded
  const profile::Report r = profile::collect(Device::CPU, 1.0, 1);
  CHECK(family(r, profile::Family::Gemm).calls == 3);
  CHECK(family(r, profile::Family::Elementwise).calls == 3);
  CHECK(family(r, profile::Family::LayerNorm).calls == 1);
  CHECK(family(r, profile::Family::Copies).calls == 3);
  CHECK(family(r, profile::Family::Attention).calls == 0);
  CHECK(family(r, profile::Family::Optimizer).calls == 0);
  CHECK(r.calls == 10);
  CHECK(op_calls(r, "gemm") == 3);
  CHECK(op_calls(r, "unary gelu") == 1);
  CHECK(op_calls(r, "unary exp") == 1);
  CHECK(op_calls(r, "copy contiguous") == 1);
  CHECK(op_calls(r, "copy strided") == 1);
  CHECK(op_calls(r, "fill") == 1);
  profile::reset(Device::CPU);  // forgets
  CHECK(profile::collect(Device::CPU, 1.0, 1).calls == 0);
}

TEST_CASE("op profile: a LoRA ViT training step on the CPU has every family, counts that match the model, times within the wall") {
  json mc = {{"img_size", 32}, {"patch_size", 8}, {"in_chans", 3}, {"embed_dim", 48}, {"depth", 3}, {"num_heads", 4},
             {"num_classes", 7}};
  json pc = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"init", "random"}}}}, {"trainable", {"head.*"}}};
  nn::VisionTransformer m(nn::vit_config_from_json(mc));
  peft::PeftModel pm(m, peft::parse_peft_config(pc), 3);
  m.train();
  nn::AdamW opt(pm.trainable_parameters(), 1e-2, 0.05);
  Tensor x = rand_tensor({4, 3, 32, 32}, 5);
  Tensor y = Tensor::from_vector(std::vector<int64_t>{1, 6, 0, 3}, {4});
  auto step = [&] {
    opt.zero_grad();
    Tensor loss = cross_entropy(pm.forward(x), y);
    backward(loss);
    opt.step();
    backend(Device::CPU).synchronize();
  };
  step();  // warm-up, not profiled
  ProfileOn on;
  const int steps = 2;
  const auto t0 = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) step();
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const profile::Report r = profile::collect(Device::CPU, wall, steps);
  int64_t fam_calls = 0, op_calls_sum = 0;
  double fam_ms = 0;
  for (profile::Family f : {profile::Family::Gemm, profile::Family::Attention, profile::Family::LayerNorm,
                            profile::Family::Elementwise, profile::Family::Copies, profile::Family::Optimizer}) {
    INFO(profile::family_name(f));
    CHECK(family(r, f).calls > 0);
  }
  for (const profile::Row& f : r.families) {
    CHECK(f.ms >= 0);
    fam_calls += f.calls, fam_ms += f.ms;
  }
  for (const profile::Row& o : r.ops) op_calls_sum += o.calls;
  CHECK(fam_calls == r.calls);
  CHECK(op_calls_sum == r.calls);
  CHECK(fam_ms == doctest::Approx(r.op_ms));
  CHECK(r.op_ms <= wall);  // the timed calls never overlap (a nested call is its caller's)
  CHECK(r.gap_ms() >= 0);
  // the counts are the model's: a LayerNorm forward per norm (2 per block + the final one), one
  // fused AdamW call per trainable tensor, one loss per step
  CHECK(op_calls(r, "layernorm") == steps * (2 * 3 + 1));
  CHECK(op_calls(r, "adamw") == steps * int64_t(pm.trainable_parameters().size()));
  CHECK(op_calls(r, "cross_entropy") == steps);
  const std::string table = profile::format(r, "tiny LoRA step");
  for (const char* row : {"| GEMM |", "| attention |", "| LayerNorm |", "| elementwise |", "| copies |",
                          "| optimizer |", "| other |", "| gaps |"})
    CHECK(table.find(row) != std::string::npos);
  MESSAGE(table);
}
