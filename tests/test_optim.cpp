// Optimizers, clipping and schedules: parity with torch.optim (fixture from
// scripts/make_optim_golden.py), masks, frozen tensors, param groups, state round trip.
#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "nn/schedule.h"
#include "test_util.h"

using namespace dg;
using namespace dg::nn;

namespace {

const SafeTensors& golden() {
  static SafeTensors st = load_safetensors(std::string(DG_SOURCE_DIR) + "/tests/fixtures/optim_golden.safetensors");
  return st;
}
const Tensor& G(const std::string& k) {
  auto it = golden().tensors.find(k);
  REQUIRE_MESSAGE(it != golden().tensors.end(), "missing fixture tensor ", k);
  return it->second;
}

const char* kNames[] = {"pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
                        "blocks.0.attn.qkv.bias", "head.weight", "head.bias"};

NamedTensors init_params() {
  NamedTensors ps;
  for (const char* n : kNames) {
    Tensor t = G(std::string("init.") + n).clone();
    t.set_requires_grad(true);
    ps.push_back({n, t});
  }
  return ps;
}

void set_grad(const Tensor& p, const Tensor& g) { p.impl()->grad = g.clone().impl_ptr(); }

void feed_grads(const NamedTensors& ps, int k) {
  for (auto& [n, p] : ps) set_grad(p, G("grad" + std::to_string(k) + "." + n));
}

template <class Opt>
void run5(Opt& opt, const NamedTensors& ps) {
  for (int k = 0; k < 5; ++k) {
    feed_grads(ps, k);
    opt.step();
  }
}

// Relative 1e-6 per element, against max(|ref|, 1e-2 * max|ref|): the fixture's values
// come out of 5-step sums with cancellation (some elements end 500x below the tensor's
// largest), and for those the element-wise ratio would measure the rounding of the larger
// terms (PyTorch's CPU kernels use FMA, ours round twice), not a difference in the update.
double golden_err(const Tensor& got, const Tensor& want) {
  double mx = 0;
  for (double x : want.to_vector()) mx = std::max(mx, std::abs(x));
  return test::max_rel_err(got, want, std::max(1e-2 * mx, 1e-30));
}

void check_final(const NamedTensors& ps, const std::string& run) {
  for (auto& [n, p] : ps) {
    const double e = golden_err(p, G(run + ".final." + n));
    INFO(run, " ", n, " max rel err ", e, " (plain element-wise ", test::max_rel_err(p, G(run + ".final." + n)), ")");
    CHECK(e < 1e-6);
  }
}

// The gradients of the fixture have a few exact zeros and magnitudes down to e^-9.
TEST_CASE("optim: AdamW 5 steps with two param groups match torch.optim.AdamW") {
  NamedTensors ps = init_params();
  AdamW opt(ps, 1e-2, 0.05);
  const auto& gr = opt.param_groups();
  REQUIRE(gr.size() == 2);
  CHECK(gr[0].name == "decay");
  CHECK(gr[0].params == std::vector<std::string>{"blocks.0.attn.qkv.weight", "head.weight"});
  CHECK(gr[1].name == "no_decay");
  CHECK(gr[1].params ==
        std::vector<std::string>{"pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"});
  CHECK(gr[0].weight_decay == 0.05);
  CHECK(gr[1].weight_decay == 0.0);
  std::vector<uint64_t> v0;
  for (auto& [n, p] : ps) v0.push_back(p.version());
  run5(opt, ps);
  check_final(ps, "adamw");
  for (auto& [n, p] : ps) {
    CHECK(golden_err(opt.state_dict().at(n + ".exp_avg"), G("adamw.exp_avg." + n)) < 1e-6);
    CHECK(golden_err(opt.state_dict().at(n + ".exp_avg_sq"), G("adamw.exp_avg_sq." + n)) < 1e-6);
  }
  for (size_t i = 0; i < ps.size(); ++i) CHECK(ps[i].second.version() >= v0[i] + 5);  // in-place writes
  CHECK(opt.steps() == 5);
}

TEST_CASE("optim: AdamW with other betas/eps and a per-group lr scale matches torch") {
  NamedTensors ps = init_params();
  AdamW opt(ps, 1e-2, 0.1, 0.8, 0.99, 1e-6);
  opt.set_group_options("no_decay", 0.5, 0.0);
  CHECK(opt.param_groups()[1].lr_scale == 0.5);
  run5(opt, ps);
  check_final(ps, "adamw_lrs");
  CHECK_THROWS_WITH_AS(opt.set_group_options("decoy", 1, 0), doctest::Contains("decoy"), Error);
}

TEST_CASE("optim: SGD momentum (plain and nesterov) with coupled weight decay matches torch.optim.SGD") {
  for (bool nest : {false, true}) {
    NamedTensors ps = init_params();
    SGD opt(ps, 5e-2, 0.9, 1e-4, nest);
    run5(opt, ps);
    check_final(ps, nest ? "sgd_nest" : "sgd");
    CHECK(opt.num_state_tensors() == ps.size());  // one momentum buffer each
  }
}

TEST_CASE("optim: clip_grad_norm matches torch and a hand computation") {
  NamedTensors ps = init_params();
  double ss = 0;
  for (auto& [n, p] : ps) {
    Tensor g = mul_scalar(G("grad0." + n), 40.0);
    set_grad(p, g);
    for (double x : g.to_vector()) ss += x * x;
  }
  const double norm = clip_grad_norm(ps, 1.0);
  CHECK(norm == doctest::Approx(std::sqrt(ss)).epsilon(1e-12));
  CHECK(norm == doctest::Approx(G("clip.norm").item()).epsilon(1e-6));
  CHECK(norm > 1.0);
  double after = 0;
  for (auto& [n, p] : ps) {
    CHECK(golden_err(p.grad(), G("clip.grad." + n)) < 1e-6);
    for (double x : p.grad().to_vector()) after += x * x;
  }
  CHECK(std::sqrt(after) == doctest::Approx(1.0).epsilon(1e-5));
  // Below the threshold nothing changes (bit for bit) and the norm is still returned.
  std::map<std::string, std::vector<double>> before;
  for (auto& [n, p] : ps) before[n] = p.grad().to_vector();
  const double n2 = clip_grad_norm(ps, 10.0);
  CHECK(n2 == doctest::Approx(1.0).epsilon(1e-5));
  for (auto& [n, p] : ps) CHECK(p.grad().to_vector() == before[n]);
  // Frozen tensors' gradients are not counted.
  Tensor frozen = Tensor::full({3}, 100.0);
  set_grad(frozen, Tensor::full({3}, 100.0));
  NamedTensors with_frozen = ps;
  with_frozen.push_back({"frozen", frozen});
  CHECK(clip_grad_norm(with_frozen, 10.0) == doctest::Approx(n2).epsilon(1e-12));
}

TEST_CASE("optim: masked-out elements stay bit-identical after AdamW steps with weight decay; others move") {
  for (int kind = 0; kind < 2; ++kind) {  // 0: AdamW, 1: SGD with momentum and decay
    NamedTensors ps = init_params();
    const std::string wname = "blocks.0.attn.qkv.weight";
    Tensor w = ps[2].second;
    REQUIRE(ps[2].first == wname);
    std::vector<double> mk(size_t(w.numel()));
    for (size_t i = 0; i < mk.size(); ++i) mk[i] = (i * 7 + 3) % 5 == 0 ? 1.0 : 0.0;  // 20% trainable
    Tensor mask = Tensor::from_vector(mk, w.shape());  // f64 on purpose: converted to f32
    const std::vector<double> before = w.to_vector();
    std::unique_ptr<Optimizer> opt;
    if (kind == 0)
      opt = std::make_unique<AdamW>(ps, 1e-2, 0.5);  // large decay: any leak would show
    else
      opt = std::make_unique<SGD>(ps, 5e-2, 0.9, 0.5);
    opt->set_mask(wname, mask);
    for (int k = 0; k < 5; ++k) {
      feed_grads(ps, k);
      opt->step();
    }
    const std::vector<double> after = w.to_vector();
    const std::string slot = kind == 0 ? ".exp_avg" : ".momentum_buffer";
    const std::vector<double> st = opt->state_dict().at(wname + slot).to_vector();
    int moved = 0;
    for (size_t i = 0; i < mk.size(); ++i) {
      if (mk[i] == 0) {
        CHECK(after[i] == before[i]);
        CHECK(st[i] == 0.0);
      } else {
        moved += after[i] != before[i];
      }
    }
    CHECK(moved > 0);
    // Unmasked tensors of the same optimizer still follow the plain update: compare with
    // an unmasked run on head.weight.
    NamedTensors ps2 = init_params();
    std::unique_ptr<Optimizer> ref;
    if (kind == 0)
      ref = std::make_unique<AdamW>(ps2, 1e-2, 0.5);
    else
      ref = std::make_unique<SGD>(ps2, 5e-2, 0.9, 0.5);
    for (int k = 0; k < 5; ++k) {
      feed_grads(ps2, k);
      ref->step();
    }
    CHECK(ps[4].second.to_vector() == ps2[4].second.to_vector());
    // Masked elements of the reference moved (so the mask is what kept them).
    const std::vector<double> free_w = ps2[2].second.to_vector();
    int free_moved = 0;
    for (size_t i = 0; i < mk.size(); ++i) free_moved += mk[i] == 0 && free_w[i] != before[i];
    CHECK(free_moved > 0);
  }
}

TEST_CASE("optim: frozen tensors get no state; state count and bytes are exact") {
  Tensor w = Tensor::full({4, 3}, 0.5).set_requires_grad(true);
  Tensor b = Tensor::zeros({4}).set_requires_grad(true);
  Tensor frozen = Tensor::full({100, 100}, 1.0);  // no requires_grad
  NamedTensors ps{{"fc.weight", w}, {"fc.bias", b}, {"base.weight", frozen}};
  AdamW opt(ps, 1e-2, 0.05);
  CHECK(opt.num_trainable() == 2);
  CHECK(opt.num_state_tensors() == 0);  // lazily created on the first step
  set_grad(w, Tensor::full({4, 3}, 0.1));
  set_grad(b, Tensor::full({4}, 0.2));
  set_grad(frozen, Tensor::full({100, 100}, 0.3));  // even a stray gradient is ignored
  const std::vector<double> fb = frozen.to_vector();
  const uint64_t fv = frozen.version();
  opt.step();
  CHECK(opt.num_state_tensors() == 4);
  CHECK(opt.state_bytes() == 2 * (12 + 4) * sizeof(float));
  CHECK(frozen.to_vector() == fb);
  CHECK(frozen.version() == fv);
  auto sd = opt.state_dict();
  CHECK(sd.size() == 5);  // 2 x (exp_avg, exp_avg_sq) + step
  CHECK(sd.count("fc.weight.exp_avg"));
  CHECK(sd.count("fc.bias.exp_avg_sq"));
  CHECK(!sd.count("base.weight.exp_avg"));
  CHECK_THROWS_WITH_AS(opt.set_mask("base.weight", Tensor::ones({100, 100})), doctest::Contains("base.weight"),
                       Error);
  CHECK_THROWS_WITH_AS(opt.set_mask("fc.weight", Tensor::ones({3, 4})), doctest::Contains("[4, 3]"), Error);
}

TEST_CASE("optim: no-decay rule (timm) on names and shapes") {
  Tensor w2 = Tensor::zeros({4, 4}), w1 = Tensor::zeros({4}), w3 = Tensor::zeros({1, 5, 4});
  CHECK(!is_no_decay("blocks.0.attn.qkv.weight", w2));
  CHECK(!is_no_decay("head.weight", w2));
  CHECK(!is_no_decay("patch_embed.proj.weight", Tensor::zeros({4, 3, 2, 2})));
  CHECK(is_no_decay("head.bias", w1));
  CHECK(is_no_decay("blocks.0.norm1.weight", w1));
  CHECK(is_no_decay("anything", w1));             // any 1-D tensor
  CHECK(is_no_decay("pos_embed", w3));            // 3-D but named
  CHECK(is_no_decay("cls_token", Tensor::zeros({1, 1, 4})));
  CHECK(is_no_decay("norm.weight", w2));          // by name even if 2-D
  CHECK(is_no_decay("blocks.1.norm2.weight", w2));
  CHECK(!is_no_decay("blocks.0.vpt.prompts", w3));  // a name alone: nn/ knows no PEFT method's names
  Tensor marked = Tensor::zeros({1, 5, 4});
  marked.set_no_weight_decay(true);                 // what a method does for its tensors (VPT's prompts)
  CHECK(is_no_decay("blocks.0.vpt.prompts", marked));
  CHECK(is_no_decay("blocks.0.attn.qkv.q_lora.bias", w2));
}

TEST_CASE("optim: state_dict round trip continues bit-identically; mismatches are refused") {
  NamedTensors a = init_params(), b = init_params();
  AdamW oa(a, 1e-2, 0.05), ob(b, 1e-2, 0.05);
  for (int k = 0; k < 3; ++k) {
    feed_grads(a, k);
    oa.step();
  }
  // b gets a's parameters and state, then both take two more steps
  for (size_t i = 0; i < a.size(); ++i) b[i].second.copy_(a[i].second);
  std::map<std::string, Tensor> sd;
  for (auto& [k, t] : oa.state_dict()) sd[k] = t.clone();
  ob.load_state_dict(sd);
  CHECK(ob.steps() == 3);
  for (int k = 3; k < 5; ++k) {
    feed_grads(a, k);
    feed_grads(b, k);
    oa.step();
    ob.step();
  }
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i].second.to_vector() == b[i].second.to_vector());
  check_final(b, "adamw");

  auto bad = sd;
  bad["head.weight.exp_avg"] = Tensor::zeros({6, 7});
  CHECK_THROWS_WITH_AS(ob.load_state_dict(bad), doctest::Contains("head.weight.exp_avg"), Error);
  bad = sd;
  bad["head.weight.momentum_buffer"] = Tensor::zeros({7, 6});  // SGD state into AdamW
  CHECK_THROWS_WITH_AS(ob.load_state_dict(bad), doctest::Contains("momentum_buffer"), Error);
  bad = sd;
  bad.erase("step");
  CHECK_THROWS_WITH_AS(ob.load_state_dict(bad), doctest::Contains("step"), Error);
  CHECK(ob.steps() == 5);  // a refused load leaves the optimizer as it was
}

TEST_CASE("optim: step after a real backward; zero_grad; the update bumps the version a tape checks") {
  tape().clear();
  Tensor w = Tensor::from_vector(std::vector<float>{1, -2, 3, -4}, {2, 2}).set_requires_grad(true);
  Tensor x = Tensor::from_vector(std::vector<float>{0.5f, 1.5f, -1, 2}, {2, 2});
  SGD opt({{"w", w}}, 0.1, 0.0);
  backward(sum(mul(w, x)));  // d/dw = x
  REQUIRE(w.grad().defined());
  opt.step();
  const std::vector<double> want{1 - 0.1 * 0.5, -2 - 0.1 * 1.5, 3 + 0.1 * 1, -4 - 0.1 * 2}, got = w.to_vector();
  for (size_t i = 0; i < 4; ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-6));
  CHECK(opt.num_state_tensors() == 0);  // momentum 0: no buffers
  opt.zero_grad();
  CHECK(!w.grad().defined());
  // A graph recorded before the update must refuse to backprop through the changed weight.
  Tensor y = sum(mul(w, w));
  set_grad(w, Tensor::ones({2, 2}));
  opt.step();
  CHECK_THROWS_AS(backward(y), Error);
  tape().clear();
}

TEST_CASE("schedule: cosine with linear warm-up and constant, at known steps") {
  // warm-up 10 steps from 0 to 1e-3, then cosine to 1e-5 over the remaining 90
  CHECK(cosine_lr(0, 100, 1e-3, 10, 1e-5) == 0.0);
  CHECK(cosine_lr(5, 100, 1e-3, 10, 1e-5) == doctest::Approx(5e-4).epsilon(1e-14));
  CHECK(cosine_lr(10, 100, 1e-3, 10, 1e-5) == doctest::Approx(1e-3).epsilon(1e-14));
  CHECK(cosine_lr(55, 100, 1e-3, 10, 1e-5) == doctest::Approx(1e-5 + 0.5 * (1e-3 - 1e-5)).epsilon(1e-14));
  // t = 40: 30 of 90 steps into the cosine: cos(pi/3) = 0.5 -> min + 0.75 * (base - min)
  CHECK(cosine_lr(40, 100, 1e-3, 10, 1e-5) == doctest::Approx(1e-5 + 0.75 * (1e-3 - 1e-5)).epsilon(1e-12));
  CHECK(cosine_lr(100, 100, 1e-3, 10, 1e-5) == doctest::Approx(1e-5).epsilon(1e-14));
  CHECK(cosine_lr(250, 100, 1e-3, 10, 1e-5) == doctest::Approx(1e-5).epsilon(1e-14));
  // warm-up from a non-zero init (timm's warmup_lr_init): lr(t) = init + t*(base-init)/W
  CHECK(cosine_lr(0, 100, 1e-3, 4, 0.0, 1e-6) == 1e-6);
  CHECK(cosine_lr(3, 100, 1e-3, 4, 0.0, 1e-6) == doctest::Approx(1e-6 + 3 * (1e-3 - 1e-6) / 4).epsilon(1e-14));
  // no warm-up: starts at base, monotone down
  double prev = cosine_lr(0, 20, 0.1);
  CHECK(prev == 0.1);
  for (int t = 1; t <= 20; ++t) {
    const double lr = cosine_lr(t, 20, 0.1);
    CHECK(lr < prev);
    prev = lr;
  }
  CHECK(prev == doctest::Approx(0.0).epsilon(1e-15));
  CHECK(constant_lr(0, 0.1) == 0.1);
  CHECK(constant_lr(2, 0.1, 4) == doctest::Approx(0.05).epsilon(1e-14));
  CHECK(constant_lr(4, 0.1, 4) == 0.1);
  CHECK(constant_lr(1000, 0.1, 4) == 0.1);
  CHECK_THROWS_AS(cosine_lr(-1, 10, 0.1), Error);
}

}  // namespace
