// Mixed precision (autograd/autocast.h): the bf16 GEMM against the f32 GEMM on rounded
// operands, the f32 <-> bf16 copies, to_lowp's cache, every autocast op against its f32 run,
// and a whole PEFT ViT step in bf16 against the f32 step (relative error, saved bytes).
#include <chrono>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "autograd/autocast.h"
#include "autograd/ops.h"
#include "core/backend.h"
#include "core/cpu/gemm_kernel.h"
#include "core/random.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
Tensor rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  Tensor t = Tensor::empty(s, DType::F32);
  Generator(seed).uniform_(t, lo, hi);
  return t;
}
// t rounded to bf16 and back: the values a bf16 GEMM multiplies
Tensor rounded(const Tensor& t) { return t.to(DType::BF16).to(DType::F32); }
bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && a.to_vector() == b.to_vector();
}
}  // namespace

TEST_CASE("autocast: f32 <-> bf16 copies round to nearest even, strided and broadcast sources") {
  std::vector<float> v = {1.0f, -2.5f, 1.00390625f /* 1 + 2^-8: a tie, to even (1) */, 1.01171875f /* 1 + 3*2^-8: tie, up */,
                          3.14159265f, 1e-40f, 65504.0f, -0.0f};
  Tensor t = Tensor::from_vector(v, {int64_t(v.size())});
  Tensor b = t.to(DType::BF16);
  CHECK(b.dtype() == DType::BF16);
  std::vector<double> back = b.to_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    INFO(i);
    CHECK(back[i] == double(bf16_to_f32(f32_to_bf16(v[i]))));
  }
  CHECK(back[2] == 1.0);
  CHECK(back[3] == 1.015625);
  CHECK(back[4] == 3.140625);
  // NaN stays a (quiet) NaN, infinities stay, the largest f32 rounds up to infinity as RNE says
  Tensor special = Tensor::from_vector(std::vector<float>{NAN, -INFINITY, INFINITY, 3.4028235e38f}, {4});
  std::vector<double> sp = special.to(DType::BF16).to_vector();
  CHECK(std::isnan(sp[0]));
  CHECK(sp[1] == -INFINITY);
  CHECK(sp[2] == INFINITY);
  CHECK(sp[3] == INFINITY);
  // a transposed and a broadcast source go through the strided path
  Tensor m = rnd({5, 7}, 1);
  Tensor mt = view::transpose(m, 0, 1);
  Tensor bt = mt.to(DType::BF16);
  CHECK(bt.is_contiguous());
  CHECK(bitwise_equal(bt.to(DType::F32), rounded(mt.contiguous())));
  Tensor e = view::expand(Tensor::from_vector(std::vector<float>{0.1f, 0.2f, 0.3f}, {1, 3}), {4, 3});
  CHECK(bitwise_equal(e.to(DType::BF16).to(DType::F32), rounded(e.contiguous())));
  // bf16 -> bf16 strided copy (contiguous() of a bf16 view)
  CHECK(bitwise_equal(view::transpose(b.to(DType::F32).to(DType::BF16), 0, 0).contiguous().to(DType::F32),
                      b.to(DType::F32)));
}

// The CPU's two bf16 GEMMs: "f32" (operands widened, the f32 GEMM) always; "onednn" (native
// bf16 kernels) where the CPU and build have them. Restores the start-up choice.
struct Bf16GemmModes {
  const bool saved = cpu::bf16_gemm_native();
  std::vector<std::string> modes() const {
    std::vector<std::string> m = {"f32"};
    if (saved) m.push_back("onednn");
    return m;
  }
  ~Bf16GemmModes() { cpu::set_bf16_gemm(saved ? "onednn" : "f32"); }
};

TEST_CASE("autocast: the CPU bf16 GEMM is the f32 GEMM of the rounded operands (bit for bit when widened)") {
  Backend& be = backend(Device::CPU);
  Bf16GemmModes restore;
  for (const std::string& mode : restore.modes())
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (int64_t batch : {1, 3}) {
        INFO(mode, " ta ", ta, " tb ", tb, " batch ", batch);
        cpu::set_bf16_gemm(mode);
        const int64_t M = 33, N = 20, K = 47;
        // A padded (ld = stored cols + 3), B shared by the batch (stride 0) when batched
        const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        Tensor A = rnd({batch, ar, ac + 3}, 10 + ta), B = rnd({br, bc}, 20 + tb);
        Backend::Gemm g;
        g.ta = ta;
        g.tb = tb;
        g.batch = batch;
        g.M = M;
        g.N = N;
        g.K = K;
        g.lda = ac + 3;
        g.ldb = bc;
        g.ldc = N;
        g.stride_a = ar * (ac + 3);
        g.stride_b = 0;
        g.stride_c = M * N;
        g.alpha = 0.5;
        g.beta = 1;
        Tensor C0 = rnd({batch, M, N}, 30);
        Tensor c16 = C0.clone(), c32 = C0.clone(), exact = C0.clone();
        be.gemm(g, A.to(DType::BF16), B.to(DType::BF16), c16);
        be.gemm(g, rounded(A), rounded(B), c32);
        be.gemm(g, A, B, exact);
        // widened: exact products, the same f32 GEMM; native: the same exact products summed in
        // another order (f32 accumulation), so equal to f32 rounding
        if (mode == "f32") CHECK(bitwise_equal(c16, c32));
        else CHECK(test::rel_err(c16, c32) < 1e-6);
        // and the rounding did happen: bf16 operands err by ~2^-9 relative, so the products do too
        const double e = test::rel_err(c16, exact);
        CHECK(e > 1e-4);
        CHECK(e < 1e-2);
      }
  // dtype combinations other than (bf16, bf16) -> f32 are refused with the dtypes named
  Backend::Gemm g;
  g.M = g.N = g.K = g.lda = g.ldb = g.ldc = 2;
  Tensor a = rnd({2, 2}, 1);
  CHECK_THROWS_WITH(be.gemm(g, a.to(DType::BF16), a, Tensor::empty({2, 2})),
                    doctest::Contains("bf16 operands with an f32 result"));
}

TEST_CASE("autocast: a widened bf16 product's time counts once in the GEMM share") {
  // gemm() widens bf16 operands and calls itself on the f32 copies: the benchmark's share of the
  // step in GEMM (kernel_time) counted that product twice and read above 100% in bf16.
  Backend& be = backend(Device::CPU);
  Bf16GemmModes restore;
  cpu::set_bf16_gemm("f32");
  const int64_t n = 256;
  Tensor A = rnd({n, n}, 1).to(DType::BF16), B = rnd({n, n}, 2).to(DType::BF16), C = Tensor::empty({n, n});
  Backend::Gemm g;
  g.M = g.N = g.K = g.lda = g.ldb = g.ldc = n;
  be.gemm(g, A, B, C);  // warm-up: the GEMM choice, thread pool, pages
  cpu::reset_kernel_time();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) be.gemm(g, A, B, C);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double counted = cpu::kernel_time().gemm_s;
  CHECK(counted > 0);
  CHECK(counted <= wall);  // twice the widened product's time would exceed the wall time
}

TEST_CASE("autocast: to_lowp makes one bf16 copy per tensor and version, held weakly") {
  AutocastGuard ac;
  Tensor x = rnd({4, 8}, 3);
  Tensor a = to_lowp(x), b = to_lowp(x);
  CHECK(a.dtype() == DType::BF16);
  CHECK(a.raw() == b.raw());  // one copy
  x.fill_(2.0);               // an in-place write bumps the version: a fresh copy
  Tensor c = to_lowp(x);
  CHECK(c.raw() != a.raw());
  CHECK(c.to_vector() == std::vector<double>(32, 2.0));
  CHECK(to_lowp(c).raw() == c.raw());  // bf16 stays itself
  // the copy lives as long as its source (a gradient read by several backward ops is converted
  // once), and stays correct: its users dropped, the next call returns the same buffer
  const void* kept = c.raw();
  c = Tensor();
  a = b = Tensor();
  Tensor d = to_lowp(x);
  CHECK(d.raw() == kept);
  CHECK(d.to_vector() == std::vector<double>(32, 2.0));
  // ... but a parameter's copy lives only as long as its users (a frozen weight's would stay for
  // the whole run): nothing holds it once they are gone
  Tensor w = rnd({4, 8}, 5);
  w.set_name("blocks.0.mlp.fc1.weight");
  Tensor w_low = to_lowp(w);
  CHECK(x.impl()->storage->derived != nullptr);
  CHECK(w.impl()->storage->derived == nullptr);
  std::weak_ptr<Storage> w_copy = w_low.impl()->storage;
  w_low = Tensor();
  CHECK(w_copy.expired());
  // the copy is of the data: another view object reading the same elements (a reshape, as the
  // backward's GEMMs take a [B*T, C] view of a [B, T, C] gradient per product) shares it ...
  Tensor g = rnd({2, 3, 8}, 7);
  Tensor g_low = to_lowp(g), flat_low = to_lowp(view::reshape(g, {6, 8}));
  CHECK(flat_low.raw() == g_low.raw());
  CHECK(flat_low.shape() == Shape{6, 8});
  CHECK(flat_low.to_vector() == g_low.to_vector());
  CHECK(to_lowp(view::reshape(g, {48})).raw() == g_low.raw());
  // ... while other elements or another order are other data: a slice, a transposed view
  Tensor part = to_lowp(view::slice(g, 0, 1, 2));
  CHECK(part.raw() != g_low.raw());
  const std::vector<double> all = g_low.to_vector(), want_part(all.begin() + 24, all.end());
  CHECK(part.to_vector() == want_part);
  Tensor gt = view::transpose(g, 1, 2), gt_low = to_lowp(gt);
  CHECK(gt_low.raw() != g_low.raw());
  CHECK(gt_low.is_contiguous());
  CHECK(gt_low.to_vector() == to_lowp(gt.contiguous()).to_vector());
  CHECK(to_lowp(view::transpose(g, 1, 2)).raw() == gt_low.raw());  // the same layout again: shared
  g.fill_(1.0);  // a write through any view bumps the storage's version: every view converts again
  CHECK(to_lowp(view::reshape(g, {6, 8})).raw() != g_low.raw());
  CHECK(to_lowp(view::reshape(g, {6, 8})).to_vector() == std::vector<double>(48, 1.0));
  CHECK_THROWS_WITH(to_lowp(Tensor::zeros({2}, DType::F64)), doctest::Contains("expected an f32 tensor"));
  CHECK_THROWS_WITH(AutocastGuard(DType::F16), doctest::Contains("f16"));
  CHECK_THROWS_WITH(parse_precision("fp8", "--precision"), doctest::Contains("--precision: precision 'fp8'"));
  CHECK(parse_precision("bf16", "x") == DType::BF16);
}

TEST_CASE("autocast: outside a guard, and for f64, nothing changes") {
  Tensor x = rnd({3, 5}, 4), W = rnd({6, 5}, 5);
  Tensor y0 = linear(x, W);
  {
    AutocastGuard ac;
    {
      AutocastGuard off(DType::F32);  // nested: off again
      CHECK(!autocast_on());
      CHECK(bitwise_equal(linear(x, W), y0));
    }
    CHECK(autocast_on());
    Tensor x64 = x.to(DType::F64), W64 = W.to(DType::F64);
    Tensor y64 = linear(x64, W64);
    CHECK(y64.dtype() == DType::F64);
    AutocastGuard off(DType::F32);
    CHECK(bitwise_equal(linear(x64, W64), y64));
  }
  CHECK(!autocast_on());
  CHECK(bitwise_equal(linear(x, W), y0));
}

namespace {
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
struct Run {
  Tensor y;
  std::vector<Tensor> grads;
  size_t held = 0;
  std::string dump;
};
Run run(const std::vector<Tensor>& in, const Fn& f, bool bf16) {
  std::vector<Tensor> x;
  for (const Tensor& t : in) {
    Tensor c = t.clone();
    c.set_requires_grad(true);
    x.push_back(c);
  }
  Run r;
  tape().clear();
  {
    AutocastGuard ac(bf16 ? DType::BF16 : DType::F32);
    r.y = f(x);
    r.held = tape().held_bytes();
    r.dump = tape().dump();
    tape().backward(r.y, rnd(r.y.shape(), 77));
  }
  for (const Tensor& t : x) r.grads.push_back(t.grad());
  return r;
}
// The autocast run of f against its f32 run: outputs f32 and close, every gradient close, and
// (where the op keeps activations) bf16 on the tape.
// gemm: the op multiplies (its forward changes); otherwise only what it keeps is bf16 (the
// forward is bit-identical, the gradients change).
void versus_f32(const std::string& what, const std::vector<Tensor>& in, const Fn& f, double tol, bool gemm) {
  INFO(what);
  Run a = run(in, f, false), b = run(in, f, true);
  CHECK(b.y.dtype() == DType::F32);
  const double ey = test::rel_err(b.y, a.y);
  CHECK(ey < tol);
  if (gemm) CHECK(ey > 0);
  else CHECK(ey == 0);
  double eg = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    INFO("gradient of input ", i);
    REQUIRE(b.grads[i].defined());
    CHECK(b.grads[i].dtype() == DType::F32);
    const double e = test::rel_err(b.grads[i], a.grads[i]);
    CHECK(e < tol);
    eg = std::max(eg, e);
  }
  CHECK(eg > 0);
  INFO(b.dump);
  CHECK(b.dump.find("bf16") != std::string::npos);
  CHECK(b.held < a.held);
}
}  // namespace

TEST_CASE("autocast: every op that multiplies or keeps activations, bf16 against f32") {
  const double tol = 1.5e-2;  // bf16 keeps 8 significant bits: 2^-9 = 2e-3 per rounding
  versus_f32("linear", {rnd({2, 5, 16}, 1), rnd({12, 16}, 2), rnd({12}, 3)},
             [](const std::vector<Tensor>& x) { return linear(x[0], x[1], x[2]); }, tol, true);
  versus_f32("matmul batched tb", {rnd({3, 6, 16}, 4), rnd({3, 9, 16}, 5)},
             [](const std::vector<Tensor>& x) { return matmul(x[0], x[1], false, true, 0.25); }, tol, true);
  versus_f32("matmul ta broadcast", {rnd({2, 1, 16, 6}, 6), rnd({3, 16, 5}, 7)},
             [](const std::vector<Tensor>& x) { return matmul(x[0], x[1], true, false); }, tol, true);
  for (bool rc : {false, true})
    versus_f32(rc ? "linear_gelu recompute" : "linear_gelu", {rnd({2, 5, 16}, 8), rnd({24, 16}, 9), rnd({24}, 10)},
               [rc](const std::vector<Tensor>& x) { return linear_gelu(x[0], x[1], x[2], rc); }, tol, true);
  for (bool fused : {true, false})
    versus_f32(fused ? "attention fused" : "attention composed", {rnd({2, 9, 3 * 16}, 11, -2, 2)},
               [fused](const std::vector<Tensor>& x) { return attention(x[0], 4, 0.5, fused); }, tol, true);
  versus_f32("layer_norm (keeps y)", {rnd({4, 16}, 12), rnd({16}, 13, 0.5, 1.5), rnd({16}, 14, -0.4, 0.4)},
             [](const std::vector<Tensor>& x) { return mul(layer_norm(x[0], x[1], x[2], 1e-5), x[0]); }, tol, false);
  versus_f32("layer_norm (keeps x)", {rnd({4, 16}, 15), rnd({16}, 16, 0.5, 1.5), rnd({16}, 17, -0.4, 0.4)},
             [](const std::vector<Tensor>& x) { return mul(layer_norm(x[0], x[1], x[2], 1e-5, true), x[0]); }, tol, false);
  versus_f32("gelu, softmax, mul", {rnd({4, 10}, 18, -3, 3), rnd({4, 10}, 19)},
             [](const std::vector<Tensor>& x) { return mul(softmax(gelu(x[0]), -1), x[1]); }, tol, false);
}

TEST_CASE("autocast: a bf16 linear is the f32 linear of the rounded operands; its saves are the bf16 operands") {
  Tensor x = rnd({6, 16}, 21), W = rnd({8, 16}, 22), b = rnd({8}, 23);
  x.set_requires_grad(true);
  W.set_requires_grad(true);
  tape().clear();
  Bf16GemmModes restore;
  cpu::set_bf16_gemm("f32");  // widened operands: bit for bit
  AutocastGuard ac;
  Tensor y = linear(x, W, b);
  Tensor y_ref;
  {
    AutocastGuard off(DType::F32);
    NoGradGuard ng;
    y_ref = linear(rounded(x), rounded(W), b);
    CHECK(bitwise_equal(y, y_ref));
  }
  for (const std::string& mode : restore.modes()) {  // native bf16 kernels: to f32 rounding
    NoGradGuard ng;
    cpu::set_bf16_gemm(mode);
    CHECK(test::rel_err(linear(x, W, b), y_ref) < 1e-6);
  }
  REQUIRE(tape().records().size() == 1);
  const Record& r = tape().records()[0];
  CHECK(r.saved_stored("x").dtype() == DType::BF16);
  CHECK(r.saved_stored("W").dtype() == DType::BF16);
  CHECK(r.saved_bytes() == size_t(6 * 16 + 8 * 16) * 2);
  tape().clear();
}

TEST_CASE("autocast: a PEFT ViT step in bf16 against the f32 step (loss, gradients, saved bytes)") {
  json mc = {{"img_size", 32}, {"patch_size", 8}, {"in_chans", 3}, {"embed_dim", 48}, {"depth", 3}, {"num_heads", 4},
             {"num_classes", 7}};
  const std::map<std::string, json> methods = {
      {"lora", {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"init", "random"}}}}, {"trainable", {"head.*"}}}},
      {"adapter_plus", {{"deltas", {{{"name", "ad"}, {"method", "adapter_plus"}, {"init", "bert"}}}}}},
      {"vpt_deep", {{"deltas", {{{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 4}}}}}},
  };
  Tensor x = rnd({4, 3, 32, 32}, 50);
  Tensor labels = Tensor::from_vector(std::vector<int64_t>{1, 6, 0, 3}, {4});
  for (const auto& [name, pc] : methods) {
    INFO(name);
    double loss[2];
    size_t held[2];
    std::map<std::string, Tensor> grads[2];
    for (int p = 0; p < 2; ++p) {
      tape().clear();
      nn::VisionTransformer m(nn::vit_config_from_json(mc));
      peft::PeftModel pm(m, peft::parse_peft_config(pc), 3);
      m.eval();
      AutocastGuard ac(p ? DType::BF16 : DType::F32);
      Tensor l = cross_entropy(pm.forward(x), labels);
      loss[p] = l.item();
      held[p] = tape().held_bytes();
      backward(l);
      for (auto& [n, t] : pm.trainable_parameters()) grads[p][n] = t.grad();
    }
    MESSAGE(name, ": loss f32 ", loss[0], " bf16 ", loss[1], ", saved bytes ", held[0], " -> ", held[1]);
    CHECK(std::abs(loss[1] - loss[0]) / std::abs(loss[0]) < 1e-2);
    CHECK(loss[1] != loss[0]);
    CHECK(double(held[1]) < 0.6 * double(held[0]));
    double worst = 0;
    for (auto& [n, g] : grads[0]) {
      INFO(n);
      REQUIRE(grads[1][n].defined());
      const double e = test::rel_err(grads[1][n], g);
      worst = std::max(worst, e);
      CHECK(e < 5e-2);
    }
    MESSAGE(name, ": worst gradient relative error ", worst, " over ", grads[0].size(), " tensors");
  }
}
