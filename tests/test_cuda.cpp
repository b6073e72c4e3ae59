// GPU against CPU: every op forward and backward, the backend primitives the ops do not
// reach directly, and a whole ViT training step with LoRA. Each case skips with one line
// when no GPU (or no CUDA build) is present.
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "autograd/autocast.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"
#include "core/random.h"
#include "cuda/cuda_api.h"
#include "nn/device.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
bool gpu() {
  if (backend_available(Device::CUDA)) return true;
  test::skip("no CUDA device (or a build without CUDA)");
  return false;
}
DType g_dt = DType::F32;  // dtype of rnd() (the op test runs once per float type)
Tensor rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  Tensor t = Tensor::empty(s, g_dt);
  Generator(seed).uniform_(t, lo, hi);
  return t;
}
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
// Run fn on CPU and GPU copies of the inputs (all trainable floats), compare the output and
// every input gradient (relative error of the whole tensor).
double g_tol = 1e-5;
void both(const char* what, std::vector<Tensor> in, const Fn& fn, double tol = -1) {
  if (tol < 0) tol = g_tol;
  INFO(what);
  std::vector<Tensor> c, g;
  for (const Tensor& t : in) {
    Tensor a = t.clone(), b = t.to(Device::CUDA);
    if (is_float(t.dtype())) a.set_requires_grad(true), b.set_requires_grad(true);
    c.push_back(a);
    g.push_back(b);
  }
  tape().clear();
  Tensor yc = fn(c);
  Tensor w = rnd(yc.shape(), 99);
  tape().backward(yc, w);
  Tensor yg = fn(g);
  CHECK(yg.device() == Device::CUDA);
  tape().backward(yg, w.to(Device::CUDA));
  CHECK(test::rel_err(yg.to(Device::CPU), yc) < tol);
  for (size_t i = 0; i < in.size(); ++i)
    if (c[i].grad().defined()) {
      INFO("gradient of input ", i);
      REQUIRE(g[i].grad().defined());
      CHECK(test::rel_err(g[i].grad().to(Device::CPU), c[i].grad()) < tol);
    }
}
}  // namespace

// Op coverage is the registry's: every op's float64 gradient-check cases (autograd/op_registry.h),
// run on the GPU and the CPU in f32 and in f64, outputs and input gradients compared. An op
// cannot land without a gradient check, so it cannot land without this comparison either.
TEST_CASE("cuda: every op with a gradient check matches the CPU, forward and backward (f32 and f64)") {
  if (!gpu()) return;
  std::printf("GPU: %s\n", cuda::device_name());
  std::set<std::string> covered;
  int cases = 0;
  for (const GradCheckEntry& e : all_gradchecks())
    for (const GradCheckCase& c : e.cases())
      for (auto [dt, tol] : {std::pair{DType::F32, 1e-4}, std::pair{DType::F64, 1e-10}}) {
        const DeviceCheckResult r = device_check(c, Device::CUDA, dt, tol);
        CHECK_MESSAGE(r.ok, e.op, " / ", c.label, " (", dtype_name(dt), "): ", r.report);
        covered.insert(e.op);
        ++cases;
      }
  for (const OpDef* op : all_ops()) CHECK_MESSAGE(covered.count(op->name), "op '", op->name, "' was not run on CUDA");
  MESSAGE("CUDA against CPU: ", cases, " cases of ", covered.size(), " ops");
}

TEST_CASE("cuda: the fused attention kernel (opt-in, DG_CUDA_FUSED_ATTENTION=1) matches the CPU kernel") {
  if (!gpu()) return;
  struct Restore {  // as it was: scripts/gpu_run.sh runs every CUDA case with DG_CUDA_FUSED_ATTENTION=1 too
    const char* was = std::getenv("DG_CUDA_FUSED_ATTENTION");
    std::string value = was ? was : "";
    ~Restore() { was ? setenv("DG_CUDA_FUSED_ATTENTION", value.c_str(), 1) : unsetenv("DG_CUDA_FUSED_ATTENTION"); }
  } restore;
  setenv("DG_CUDA_FUSED_ATTENTION", "1", 1);
  for (DType dt : {DType::F32, DType::F64}) {
    g_dt = dt;
    const double tol = dt == DType::F32 ? 1e-5 : 1e-11;
    // token counts that are not multiples of the 32-row tile; head_dim 64 and 32
    both("attention hd 64", {rnd({2, 70, 3 * 128}, 50, -2, 2)}, [](auto& x) { return attention(x[0], 2, 0.125); }, tol);
    both("attention hd 32", {rnd({3, 45, 3 * 96}, 51, -2, 2)}, [](auto& x) { return attention(x[0], 3, 0.18); }, tol);
    both("attention ViT-S/16", {rnd({2, 197, 3 * 384}, 52)}, [](auto& x) { return attention(x[0], 6, 0.125); }, tol);
  }
  g_dt = DType::F32;
}

TEST_CASE("cuda: backend primitives (random streams, copies, AdamW with masks, sum of squares)") {
  if (!gpu()) return;
  Backend& g = backend(Device::CUDA);
  Backend& c = backend(Device::CPU);
  Tensor a = Tensor::empty({1000}), b = Tensor::empty({1000}, DType::F32, Device::CUDA);
  c.random_normal(a, 7, 11, 0, 1);
  g.random_normal(b, 7, 11, 0, 1);
  CHECK(test::rel_err(b.to(Device::CPU), a) < 1e-6);  // same Philox stream on both devices
  c.random_uniform(a, 3, 0, -2, 2);
  g.random_uniform(b, 3, 0, -2, 2);
  CHECK(test::rel_err(b.to(Device::CPU), a) < 1e-6);
  // strided + dtype-converting copies on the device
  Tensor x = rnd({4, 6}, 40);
  Tensor xg = x.to(Device::CUDA);
  CHECK(view::transpose(xg, 0, 1).contiguous().to(Device::CPU).to_vector() == view::transpose(x, 0, 1).contiguous().to_vector());
  CHECK(test::rel_err(xg.to(DType::F64).to(Device::CPU), x.to(DType::F64)) == 0);
  // AdamW with a mask and weight decay
  Tensor p = rnd({300}, 41), gr = rnd({300}, 42), mask = rnd({300}, 43, 0, 1);
  std::vector<double> mv = mask.to_vector();
  for (double& v : mv) v = v < 0.5 ? 0 : 1;
  mask = Tensor::from_vector(mv, {300}).to(DType::F32);
  Tensor m = Tensor::zeros({300}), v = Tensor::zeros({300});
  Tensor pg = p.to(Device::CUDA), gg = gr.to(Device::CUDA), mg = m.to(Device::CUDA), vg = v.to(Device::CUDA);
  for (int64_t s = 1; s <= 3; ++s) {
    Backend::AdamW h{1e-2, 0.9, 0.999, 1e-8, 0.1, s};
    c.adamw(h, p, gr, m, v, mask);
    g.adamw(h, pg, gg, mg, vg, mask.to(Device::CUDA));
  }
  CHECK(test::rel_err(pg.to(Device::CPU), p) < 1e-6);
  CHECK(test::rel_err(vg.to(Device::CPU), v) < 1e-6);
  CHECK(g.sum_squares(pg) == doctest::Approx(c.sum_squares(p)).epsilon(1e-6));
  CHECK(cuda::peak_bytes() > 0);
}

namespace {
// Three AdamW steps of a small LoRA ViT on `dev` in `precision`: the losses, the saved bytes of
// the first step, and the trainable tensors afterwards.
struct LoraRun {
  std::vector<double> losses;
  size_t held = 0;
  std::map<std::string, std::vector<double>> after;
};
LoraRun lora_steps(Device dev, DType precision) {
  json mc = {{"img_size", 32}, {"patch_size", 8}, {"in_chans", 3}, {"embed_dim", 48}, {"depth", 3}, {"num_heads", 4},
             {"num_classes", 7}};
  json pc = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"init", "random"}}}}, {"trainable", {"head.*"}}};
  Tensor x = rnd({4, 3, 32, 32}, 50);
  Tensor y = Tensor::from_vector(std::vector<int64_t>{1, 6, 0, 3}, {4});
  LoraRun r;
  tape().clear();
  nn::VisionTransformer m(nn::vit_config_from_json(mc));
  peft::PeftModel pm(m, peft::parse_peft_config(pc), 3);
  nn::move_to(m, dev);
  m.eval();
  nn::AdamW opt(pm.trainable_parameters(), 1e-2, 0.05);
  AutocastGuard ac(precision);
  for (int s = 0; s < 3; ++s) {
    opt.zero_grad();
    Tensor loss = cross_entropy(pm.forward(x.to(dev)), y.to(dev));
    r.losses.push_back(loss.item());
    if (s == 0) r.held = tape().held_bytes();
    backward(loss);
    opt.step();
  }
  for (auto& [n, t] : pm.trainable_parameters()) r.after[n] = t.to(Device::CPU).to_vector();
  return r;
}
// relative error of every trainable tensor of b against a, at most tol
void same_tensors(const LoraRun& b, const LoraRun& a, double tol) {
  for (auto& [n, v] : a.after) {
    INFO(n);
    REQUIRE(b.after.count(n));
    Tensor ta = Tensor::from_vector(v, {int64_t(v.size())}), tb = Tensor::from_vector(b.after.at(n), {int64_t(v.size())});
    CHECK(test::rel_err(tb, ta) < tol);
  }
}
}  // namespace

TEST_CASE("cuda: a ViT training step with LoRA on the GPU matches the CPU step") {
  if (!gpu()) return;
  LoraRun c = lora_steps(Device::CPU, DType::F32), g = lora_steps(Device::CUDA, DType::F32);
  for (size_t s = 0; s < 3; ++s) CHECK(g.losses[s] == doctest::Approx(c.losses[s]).epsilon(1e-5));
  same_tensors(g, c, 1e-4);
}

TEST_CASE("cuda: bf16 mixed precision: a LoRA ViT step under autocast matches the CPU's autocast step") {
  if (!gpu()) return;
  LoraRun c16 = lora_steps(Device::CPU, DType::BF16), g16 = lora_steps(Device::CUDA, DType::BF16),
          g32 = lora_steps(Device::CUDA, DType::F32);
  MESSAGE("losses cpu bf16 ", c16.losses[2], ", gpu bf16 ", g16.losses[2], ", gpu f32 ", g32.losses[2],
          "; saved bytes gpu bf16 ", g16.held, " vs f32 ", g32.held);
  for (size_t s = 0; s < 3; ++s) {
    // both sides multiply the same bf16 operands; a different f32 summation order can move a value
    // across a bf16 rounding boundary, hence more room than the f32 test's 1e-5
    CHECK(g16.losses[s] == doctest::Approx(c16.losses[s]).epsilon(2e-3));
    CHECK(g16.losses[s] == doctest::Approx(g32.losses[s]).epsilon(1e-2));
  }
  CHECK(double(g16.held) < 0.6 * double(g32.held));
  same_tensors(g16, c16, 2e-2);
}

// ---- every Backend method called directly, f32 and f64, against the CPU backend ----
namespace {
Backend& G() { return backend(Device::CUDA); }
Backend& C() { return backend(Device::CPU); }
Tensor R(const Shape& s, DType dt, uint64_t seed, double lo = -1, double hi = 1) {
  Tensor t = Tensor::empty(s, dt);
  Generator(seed).uniform_(t, lo, hi);
  return t;
}
Tensor D(const Tensor& t) { return t.to(Device::CUDA); }
// largest error of the method over all its cases, per dtype (printed by the last case)
std::map<std::string, double> g_max_err;
// max |gpu - cpu| / max |cpu|: the error relative to the tensor's scale
double close(const std::string& what, DType dt, const Tensor& gpu, const Tensor& cpu, double tol32, double tol64) {
  INFO(what, " ", dtype_name(dt));
  REQUIRE(gpu.device() == Device::CUDA);
  std::vector<double> a = gpu.to(Device::CPU).to_vector(), b = cpu.to_vector();
  REQUIRE(a.size() == b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num = std::max(num, std::abs(a[i] - b[i])), den = std::max(den, std::abs(b[i]));
  const double e = num / std::max(den, 1e-300);
  double& m = g_max_err[what + " " + dtype_name(dt)];
  m = std::max(m, e);
  CHECK(e <= (dt == DType::F64 ? tol64 : tol32));
  return e;
}
void same(const std::string& what, DType dt, const Tensor& gpu, const Tensor& cpu) { close(what, dt, gpu, cpu, 0, 0); }
const DType kFloats[] = {DType::F32, DType::F64};
}  // namespace

TEST_CASE("cuda backend: copy (host<->device, strided, broadcast, dtype-converting) and fill") {
  if (!gpu()) return;
  for (DType dt : kFloats) {
    Tensor x = R({5, 7}, dt, 1);
    Tensor xg = D(x);
    same("copy h2d/d2h", dt, xg, x);
    same("copy d2d transposed", dt, view::transpose(xg, 0, 1).contiguous(), view::transpose(x, 0, 1).contiguous());
    // host -> strided device destination
    Tensor dst = Tensor::zeros({7, 5}, dt, Device::CUDA);
    G().copy(x, view::transpose(dst, 0, 1));
    same("copy h2d strided dst", dt, dst, view::transpose(x, 0, 1).contiguous());
    // strided device source -> host, and -> a strided host destination
    Tensor h = Tensor::zeros({7, 5}, dt);
    G().copy(view::transpose(xg, 0, 1), h);
    CHECK(h.to_vector() == view::transpose(x, 0, 1).contiguous().to_vector());
    Tensor h2 = Tensor::zeros({7, 5}, dt);
    G().copy(view::slice(xg, 1, 0, 7, 1), view::transpose(h2, 0, 1));
    CHECK(h2.to_vector() == view::transpose(x, 0, 1).contiguous().to_vector());
    // broadcast (stride 0) source and a stepped slice on the device
    Tensor row = R({1, 7}, dt, 2);
    same("copy broadcast", dt, view::expand(D(row), {5, 7}).contiguous(), view::expand(row, {5, 7}).contiguous());
    same("copy stepped slice", dt, view::slice(xg, 1, 1, 7, 3).contiguous(), view::slice(x, 1, 1, 7, 3).contiguous());
    // fill through a strided view, and a whole tensor
    Tensor fg = D(x), fc = x.clone();
    G().fill(view::slice(fg, 1, 1, 7, 2), 3.25);
    C().fill(view::slice(fc, 1, 1, 7, 2), 3.25);
    same("fill strided", dt, fg, fc);
  }
  // dtype conversions on the device match the CPU's (floats truncate toward zero into ints)
  Tensor src = Tensor::from_vector(std::vector<double>{-3.75, -2.5, -1, 0, 0.25, 1.5, 2, 7.99, 1e6, -123456.5}, {2, 5});
  const DType all[] = {DType::F32, DType::F64, DType::I64, DType::I32};
  for (DType a : all)
    for (DType b : all) {
      INFO(dtype_name(a), " -> ", dtype_name(b));
      Tensor sa = src.to(a);
      Tensor want = sa.to(b);
      Tensor got = Tensor::empty({2, 5}, b, Device::CUDA);
      G().copy(D(sa), got);  // device -> device conversion
      CHECK(got.to(Device::CPU).to_vector() == want.to_vector());
      Tensor got2 = Tensor::empty({2, 5}, b, Device::CUDA);
      G().copy(sa, got2);  // host -> device conversion
      CHECK(got2.to(Device::CPU).to_vector() == want.to_vector());
      Tensor got3 = Tensor::empty({5, 2}, b, Device::CUDA);
      G().copy(view::transpose(D(sa), 0, 1), got3);  // strided and converting at once
      CHECK(got3.to(Device::CPU).to_vector() == view::transpose(want, 0, 1).contiguous().to_vector());
    }
  Tensor ig = Tensor::zeros({3, 4}, DType::I64, Device::CUDA);
  G().fill(view::slice(ig, 0, 1, 3), -7);
  CHECK(ig.to(Device::CPU).to_vector() == std::vector<double>{0, 0, 0, 0, -7, -7, -7, -7, -7, -7, -7, -7});
}

TEST_CASE("cuda backend: unary and unary_backward, every op, contiguous / transposed / broadcast inputs") {
  if (!gpu()) return;
  const UnaryOp ops[] = {UnaryOp::Neg,  UnaryOp::Exp,     UnaryOp::Log,       UnaryOp::Tanh,      UnaryOp::Sqrt,
                         UnaryOp::Erf,  UnaryOp::Gelu,    UnaryOp::Relu,      UnaryOp::Abs,       UnaryOp::Sigmoid,
                         UnaryOp::AddScalar, UnaryOp::MulScalar, UnaryOp::PowScalar};
  for (DType dt : kFloats)
    for (UnaryOp op : ops) {
      const bool pos = op == UnaryOp::Log || op == UnaryOp::Sqrt || op == UnaryOp::PowScalar;
      const double lo = pos ? 0.1 : -2, hi = 2, alpha = op == UnaryOp::PowScalar ? 2.5 : 1.7;
      const std::string name = unary_name(op);
      Tensor base = R({33, 65}, dt, 10 + int(op), lo, hi), tb = R({65, 33}, dt, 30 + int(op), lo, hi),
             rb = R({1, 65}, dt, 50 + int(op), lo, hi);
      const std::pair<Tensor, Tensor> inputs[] = {{base, D(base)},
                                                  {view::transpose(tb, 0, 1), view::transpose(D(tb), 0, 1)},
                                                  {view::expand(rb, {33, 65}), view::expand(D(rb), {33, 65})}};
      for (const auto& [xc, xg] : inputs) {
        Tensor yc = Tensor::empty({33, 65}, dt), yg = Tensor::empty({33, 65}, dt, Device::CUDA);
        C().unary(op, xc, yc, alpha);
        G().unary(op, xg, yg, alpha);
        close("unary " + name, dt, yg, yc, 2e-6, 1e-14);
      }
      Tensor y = Tensor::empty({33, 65}, dt);
      C().unary(op, base, y, alpha);
      Tensor gy = R({33, 65}, dt, 70 + int(op));
      Tensor gxc = Tensor::empty({33, 65}, dt), gxg = Tensor::empty({33, 65}, dt, Device::CUDA);
      C().unary_backward(op, base, y, gy, gxc, alpha);
      G().unary_backward(op, D(base), D(y), D(gy), gxg, alpha);
      close("unary_backward " + name, dt, gxg, gxc, 2e-6, 1e-14);
    }
}

TEST_CASE("cuda backend: binary with broadcasting up to 8 dims, and where") {
  if (!gpu()) return;
  const BinaryOp ops[] = {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min};
  struct Case { Shape a, b, out; };
  const Case cases[] = {{{4, 5, 6}, {4, 5, 6}, {4, 5, 6}},
                        {{4, 5, 6}, {6}, {4, 5, 6}},
                        {{4, 1, 6}, {5, 1}, {4, 5, 6}},
                        {{1}, {3, 2}, {3, 2}},
                        {{2, 1, 2, 1, 2, 1, 2, 3}, {1, 2, 1, 2, 1, 2, 1, 3}, {2, 2, 2, 2, 2, 2, 2, 3}}};
  for (DType dt : kFloats)
    for (BinaryOp op : ops) {
      const std::string name = binary_name(op);
      int k = 0;
      for (const Case& c : cases) {
        Tensor a = R(c.a, dt, 100 + k), b = R(c.b, dt, 200 + k, 0.5, 2);
        ++k;
        Tensor ac = view::expand(a, c.out), bc = view::expand(b, c.out);
        Tensor oc = Tensor::empty(c.out, dt), og = Tensor::empty(c.out, dt, Device::CUDA);
        C().binary(op, ac, bc, oc);
        G().binary(op, view::expand(D(a), c.out), view::expand(D(b), c.out), og);
        close("binary " + name, dt, og, oc, 1e-7, 1e-16);
      }
      // a transposed (non-contiguous) operand
      Tensor t = R({6, 5}, dt, 300), b = R({5, 6}, dt, 301, 0.5, 2);
      Tensor oc = Tensor::empty({5, 6}, dt), og = Tensor::empty({5, 6}, dt, Device::CUDA);
      C().binary(op, view::transpose(t, 0, 1), b, oc);
      G().binary(op, view::transpose(D(t), 0, 1), D(b), og);
      close("binary " + name, dt, og, oc, 1e-7, 1e-16);
    }
  // rank 9 and more: fine where dims coalesce (contiguous, size 1); refused with a message
  // when more than 8 dims stay apart, never a wrong answer
  const Shape s9 = {2, 1, 2, 1, 2, 1, 2, 1, 3};
  Tensor a9 = R(s9, DType::F32, 310), b9 = R(s9, DType::F32, 311);
  Tensor o9c = Tensor::empty(s9), o9g = Tensor::empty(s9, DType::F32, Device::CUDA);
  C().binary(BinaryOp::Mul, a9, b9, o9c);
  G().binary(BinaryOp::Mul, D(a9), D(b9), o9g);
  same("binary mul", DType::F32, o9g, o9c);
  const Shape s10 = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2};
  Tensor t10 = view::permute(Tensor::ones(s10, DType::F32, Device::CUDA), {9, 0, 8, 1, 7, 2, 6, 3, 5, 4});
  CHECK_THROWS_WITH_AS(t10.contiguous(), doctest::Contains("8 non-contiguous dims"), Error);
  for (DType dt : kFloats) {
    std::vector<double> cv = R({7, 9}, DType::F64, 400, 0, 1).to_vector();
    for (double& v : cv) v = v < 0.5 ? 0 : 1;
    Tensor cond = Tensor::from_vector(cv, {7, 9}).to(dt), a = R({7, 9}, dt, 401), b = R({7, 9}, dt, 402);
    Tensor oc = Tensor::empty({7, 9}, dt), og = Tensor::empty({7, 9}, dt, Device::CUDA);
    C().where(cond, a, b, oc);
    G().where(D(cond), D(a), D(b), og);
    same("where", dt, og, oc);
  }
}

TEST_CASE("cuda backend: reduce (sum, max) and argmax over [outer, n, inner], long rows split in two passes") {
  if (!gpu()) return;
  struct Case { int64_t outer, n, inner; };
  const Case cases[] = {{1, 100000, 1}, {7, 300, 1}, {3, 40, 5}, {1, 5000, 768}, {64, 1, 3},
                        {2, 3000, 2},   {1, 3, 1},   {1000, 64, 1}, {5, 2049, 1}};
  for (DType dt : kFloats)
    for (const Case& c : cases) {
      INFO(c.outer, "x", c.n, "x", c.inner);
      Tensor xs = R({c.outer, c.n, c.inner}, dt, 500 + c.n, 0, 1), xm = R({c.outer, c.n, c.inner}, dt, 600 + c.n);
      for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
        Tensor x = op == ReduceOp::Sum ? xs : xm;
        Tensor oc = Tensor::empty({c.outer, c.inner}, dt), og = Tensor::empty({c.outer, c.inner}, dt, Device::CUDA);
        C().reduce(op, x, c.outer, c.n, c.inner, oc);
        G().reduce(op, D(x), c.outer, c.n, c.inner, og);
        if (op == ReduceOp::Sum)
          close("reduce sum", dt, og, oc, 1e-5, 1e-13);
        else
          same("reduce max", dt, og, oc);
      }
      Tensor ac = Tensor::empty({c.outer, c.inner}, DType::I64), ag = Tensor::empty({c.outer, c.inner}, DType::I64, Device::CUDA);
      C().argmax(xm, c.outer, c.n, c.inner, ac);
      G().argmax(D(xm), c.outer, c.n, c.inner, ag);
      CHECK(ag.to(Device::CPU).to_vector() == ac.to_vector());
    }
}

namespace {
// A batched GEMM with padded leading dims (A +3, B +2), B shared by the batch if bcast, alpha/beta.
Backend::Gemm gemm_case(bool ta, bool tb, bool bcast, int64_t M, int64_t N, int64_t K, int64_t B) {
  Backend::Gemm g;
  g.ta = ta, g.tb = tb, g.batch = B, g.M = M, g.N = N, g.K = K;
  const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
  g.lda = ac + 3, g.ldb = bc + 2, g.ldc = N;
  g.stride_a = ar * g.lda, g.stride_b = bcast ? 0 : br * g.ldb, g.stride_c = M * N;
  g.alpha = 1.3, g.beta = 0.5;
  return g;
}
int64_t a_elems(const Backend::Gemm& g) { return g.batch * (g.ta ? g.K : g.M) * g.lda; }
int64_t b_elems(const Backend::Gemm& g) { return (g.stride_b ? g.batch : 1) * (g.tb ? g.N : g.K) * g.ldb; }
}  // namespace

TEST_CASE("cuda backend: gemm, every transpose, padded leading dims, batch strides (0 broadcasts), alpha/beta, TF32") {
  if (!gpu()) return;
  const int64_t M = 37, N = 29, K = 53, B = 3;
  for (DType dt : kFloats)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int bcast = 0; bcast < 2; ++bcast) {
          INFO("ta=", ta, " tb=", tb, " broadcast B=", bcast);
          const Backend::Gemm g = gemm_case(ta, tb, bcast, M, N, K, B);
          Tensor A = R({a_elems(g)}, dt, 700), Bm = R({b_elems(g)}, dt, 701), Cm = R({B * M * N}, dt, 702);
          Tensor Cg = D(Cm), Cc = Cm.clone();
          C().gemm(g, A, Bm, Cc);
          G().gemm(g, D(A), D(Bm), Cg);
          close("gemm", dt, Cg, Cc, 1e-5, 1e-13);
        }
  // TF32 (off by default): still close, at TF32's precision; off again restores full f32
  Backend::Gemm g;
  g.M = 64, g.N = 64, g.K = 512, g.lda = 512, g.ldb = 64, g.ldc = 64;
  Tensor A = R({64, 512}, DType::F32, 710), Bm = R({512, 64}, DType::F32, 711);
  Tensor Cc = Tensor::empty({64, 64}), Cg = Tensor::empty({64, 64}, DType::F32, Device::CUDA);
  C().gemm(g, A, Bm, Cc);
  cuda::set_tf32(true);
  G().gemm(g, D(A), D(Bm), Cg);
  cuda::set_tf32(false);
  const double e_tf32 = close("gemm tf32", DType::F32, Cg, Cc, 1e-2, 0);
  G().gemm(g, D(A), D(Bm), Cg);
  const double e_f32 = close("gemm", DType::F32, Cg, Cc, 1e-5, 0);
  MESSAGE("gemm 64x64x512 error vs CPU: tf32 ", e_tf32, ", f32 ", e_f32);
}

TEST_CASE("cuda backend: the cuBLASLt bias epilogue (opt-in) matches the unfused path, f32 and bf16") {
  if (!gpu()) return;
  struct Restore {
    bool was = cuda::lt_epilogue();
    ~Restore() { cuda::set_lt_epilogue(was); }
  } restore;
  const int64_t M = 37, N = 29, K = 53;
  int ran = 0, cases = 0;
  for (bool bf16 : {false, true})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (int64_t offset : {0, 1}) {  // offset 1: A's pointer 4 (f32) or 2 (bf16) bytes off alignment
          INFO("bf16 ", bf16, " ta ", ta, " tb ", tb, " offset ", offset);
          Backend::Gemm g = gemm_case(ta, tb, false, M, N, K, 1);
          g.beta = 0;
          const DType in = bf16 ? DType::BF16 : DType::F32;
          Tensor Ah = R({offset + a_elems(g)}, DType::F32, 740).to(in), Bh = R({b_elems(g)}, DType::F32, 741).to(in);
          Tensor bias = R({N}, DType::F32, 742);
          Tensor A = view::slice(D(Ah), 0, offset, offset + a_elems(g)), Bm = D(Bh);
          // the unfused path, as linear() runs it without the epilogue
          Tensor want = D(view::expand(bias, {M, N}).contiguous());
          Backend::Gemm g1 = g;
          g1.beta = 1;
          G().gemm(g1, A, Bm, want);
          cuda::set_lt_epilogue(false);
          Tensor C = Tensor::empty({M, N}, DType::F32, Device::CUDA);
          CHECK_FALSE(G().gemm_bias(g, A, Bm, D(bias), C));  // off: the caller's path
          cuda::set_lt_epilogue(true);
          ++cases;
          if (G().gemm_bias(g, A, Bm, D(bias), C)) {
            ++ran;
            close("gemm_bias", DType::F32, C, want.to(Device::CPU), 1e-5, 0);
          }
        }
  MESSAGE("cuBLASLt bias epilogue ran for ", ran, " of ", cases, " operand layouts (the rest fell back)");
  CHECK(ran > 0);
  // a whole LoRA step with the epilogue on still matches the CPU step
  cuda::set_lt_epilogue(true);
  LoraRun c = lora_steps(Device::CPU, DType::F32), gl = lora_steps(Device::CUDA, DType::F32);
  for (size_t s = 0; s < 3; ++s) CHECK(gl.losses[s] == doctest::Approx(c.losses[s]).epsilon(1e-5));
  same_tensors(gl, c, 1e-4);
}

TEST_CASE("cuda backend: bf16 copies round as the CPU's; the bf16 GEMM (f32 result) matches the CPU's") {
  if (!gpu()) return;
  // f32 -> bf16 on the device: bit for bit the CPU's rounding, contiguous and transposed sources
  Tensor v = R({37, 53}, DType::F32, 720, -300, 300);
  for (bool tr : {false, true}) {
    Tensor vd = D(v);
    Tensor host = tr ? view::transpose(v, 0, 1) : v, dev = tr ? view::transpose(vd, 0, 1) : vd;
    same("copy f32->bf16", DType::F32, dev.to(DType::BF16).to(DType::F32), host.to(DType::BF16).to(DType::F32));
  }
  // bf16 -> f32 back on the device, and a bf16 strided copy
  Tensor b16 = v.to(DType::BF16);
  same("copy bf16->f32", DType::F32, D(b16).to(DType::F32), b16.to(DType::F32));
  same("copy bf16 strided", DType::F32, view::transpose(D(b16), 0, 1).contiguous().to(DType::F32),
       view::transpose(b16, 0, 1).contiguous().to(DType::F32));
  const int64_t M = 37, N = 29, K = 53, B = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (int bcast = 0; bcast < 2; ++bcast) {
        INFO("bf16 ta=", ta, " tb=", tb, " broadcast B=", bcast);
        const Backend::Gemm g = gemm_case(ta, tb, bcast, M, N, K, B);
        Tensor A = R({a_elems(g)}, DType::F32, 730).to(DType::BF16);
        Tensor Bm = R({b_elems(g)}, DType::F32, 731).to(DType::BF16);
        Tensor Cm = R({B * M * N}, DType::F32, 732);
        Tensor Cg = D(Cm), Cc = Cm.clone();
        C().gemm(g, A, Bm, Cc);  // exact products, f32 sums
        G().gemm(g, D(A), D(Bm), Cg);
        close("gemm bf16", DType::F32, Cg, Cc, 1e-5, 0);
      }
}

TEST_CASE("cuda backend: softmax / log_softmax, forward and backward") {
  if (!gpu()) return;
  const std::pair<int64_t, int64_t> cases[] = {{5, 10}, {64, 197}, {3, 4096}, {1, 1}};
  for (DType dt : kFloats)
    for (auto [rows, n] : cases)
      for (bool lg : {false, true}) {
        INFO(rows, "x", n, lg ? " log" : "");
        Tensor x = R({rows, n}, dt, 800 + n, -4, 4), gy = R({rows, n}, dt, 801 + n);
        Tensor yc = Tensor::empty({rows, n}, dt), yg = Tensor::empty({rows, n}, dt, Device::CUDA);
        C().softmax(x, rows, n, lg, yc);
        G().softmax(D(x), rows, n, lg, yg);
        close(lg ? "log_softmax" : "softmax", dt, yg, yc, 2e-6, 1e-14);
        Tensor gc = Tensor::empty({rows, n}, dt), gg = Tensor::empty({rows, n}, dt, Device::CUDA);
        C().softmax_backward(yc, gy, rows, n, lg, gc);
        G().softmax_backward(D(yc), D(gy), rows, n, lg, gg);
        close(lg ? "log_softmax_backward" : "softmax_backward", dt, gg, gc, 2e-6, 1e-14);
      }
}

TEST_CASE("cuda backend: layernorm forward and backward (affine or not, gw/gb accumulate, gx optional)") {
  if (!gpu()) return;
  const std::pair<int64_t, int64_t> cases[] = {{50, 48}, {300, 768}, {3, 5}};
  for (DType dt : kFloats)
    for (auto [rows, n] : cases)
      for (bool affine : {true, false}) {
        INFO(rows, "x", n, affine ? " affine" : " plain");
        Tensor x = R({rows, n}, dt, 900 + n, -3, 3), w = affine ? R({n}, dt, 901) : Tensor(),
               b = affine ? R({n}, dt, 902) : Tensor(), gy = R({rows, n}, dt, 903);
        Tensor yc = Tensor::empty({rows, n}, dt), mc = Tensor::empty({rows}, dt), rc = Tensor::empty({rows}, dt);
        Tensor yg = Tensor::empty({rows, n}, dt, Device::CUDA), mg = Tensor::empty({rows}, dt, Device::CUDA),
               rg = Tensor::empty({rows}, dt, Device::CUDA);
        Tensor wg = affine ? D(w) : Tensor(), bg = affine ? D(b) : Tensor();
        C().layernorm(x, w, b, rows, n, 1e-5, yc, mc, rc);
        G().layernorm(D(x), wg, bg, rows, n, 1e-5, yg, mg, rg);
        close("layernorm y", dt, yg, yc, 1e-5, 1e-13);
        close("layernorm mean", dt, mg, mc, 1e-5, 1e-13);
        close("layernorm rstd", dt, rg, rc, 1e-5, 1e-13);
        // gw, gb start non-zero: the kernels must add to them
        Tensor gxc = Tensor::empty({rows, n}, dt), gxg = Tensor::empty({rows, n}, dt, Device::CUDA);
        Tensor gwc = affine ? R({n}, dt, 904) : Tensor(), gbc = affine ? R({n}, dt, 905) : Tensor();
        Tensor gwg = affine ? D(gwc) : Tensor(), gbg = affine ? D(gbc) : Tensor();
        C().layernorm_backward(x, w, mc, rc, gy, rows, n, gxc, gwc, gbc);
        G().layernorm_backward(D(x), wg, D(mc), D(rc), D(gy), rows, n, gxg, gwg, gbg);
        close("layernorm_backward gx", dt, gxg, gxc, 1e-5, 1e-12);
        if (affine) {
          close("layernorm_backward gw", dt, gwg, gwc, 1e-5, 1e-12);
          close("layernorm_backward gb", dt, gbg, gbc, 1e-5, 1e-12);
          // gx undefined (a frozen input): only gw, gb
          Tensor gw2 = Tensor::zeros({n}, dt, Device::CUDA), gw2c = Tensor::zeros({n}, dt);
          C().layernorm_backward(x, w, mc, rc, gy, rows, n, Tensor(), gw2c, Tensor());
          G().layernorm_backward(D(x), wg, D(mc), D(rc), D(gy), rows, n, Tensor(), gw2, Tensor());
          close("layernorm_backward gw", dt, gw2, gw2c, 1e-5, 1e-12);
        }
      }
}

TEST_CASE("cuda backend: fused cross-entropy with label smoothing and ignored rows; bad labels refused") {
  if (!gpu()) return;
  for (DType dt : kFloats)
    for (int64_t Cn : {10, 1000})
      for (double eps : {0.0, 0.1}) {
        const int64_t rows = 33;
        std::vector<int64_t> lab(static_cast<size_t>(rows), 0);
        for (int64_t r = 0; r < rows; ++r) lab[size_t(r)] = r % 7 == 3 ? -1 : (r * 37 + 5) % Cn;
        Tensor labels = Tensor::from_vector(lab, {rows});
        Tensor x = R({rows, Cn}, dt, 1000 + Cn, -5, 5), gl = R({rows}, dt, 1001);
        Tensor lc = Tensor::empty({rows}, dt), sc = Tensor::empty({rows}, dt);
        Tensor lg = Tensor::empty({rows}, dt, Device::CUDA), sg = Tensor::empty({rows}, dt, Device::CUDA);
        C().cross_entropy(x, labels, eps, lc, sc);
        G().cross_entropy(D(x), D(labels), eps, lg, sg);
        close("cross_entropy loss", dt, lg, lc, 2e-6, 1e-14);
        close("cross_entropy lse", dt, sg, sc, 2e-6, 1e-14);
        Tensor gc = Tensor::empty({rows, Cn}, dt), gg = Tensor::empty({rows, Cn}, dt, Device::CUDA);
        C().cross_entropy_backward(x, labels, sc, gl, eps, gc);
        G().cross_entropy_backward(D(x), D(labels), D(sc), D(gl), eps, gg);
        close("cross_entropy_backward", dt, gg, gc, 2e-6, 1e-14);
      }
  Tensor x = Tensor::zeros({2, 4}, DType::F32, Device::CUDA);
  Tensor bad = Tensor::from_vector(std::vector<int64_t>{1, 4}, {2}).to(Device::CUDA);
  Tensor l = Tensor::empty({2}, DType::F32, Device::CUDA), s = Tensor::empty({2}, DType::F32, Device::CUDA);
  CHECK_THROWS_WITH_AS(G().cross_entropy(x, bad, 0.0, l, s), doctest::Contains("out of range"), Error);
}

TEST_CASE("cuda backend: Philox random streams are the CPU's, element for element") {
  if (!gpu()) return;
  for (DType dt : kFloats) {
    INFO(dtype_name(dt));
    const int64_t n = 100003;  // not a multiple of 4, and an offset that is not either
    Tensor c = Tensor::empty({n}, dt), g = Tensor::empty({n}, dt, Device::CUDA);
    C().random_uniform(c, 12345, 7, -2, 3);
    G().random_uniform(g, 12345, 7, -2, 3);
    same("random_uniform", dt, g, c);  // bit for bit
    C().random_normal(c, 999, 13, 0.5, 2);
    G().random_normal(g, 999, 13, 0.5, 2);
    // Box-Muller goes through logf/cosf, whose last bit may differ between glibc and CUDA
    std::vector<double> a = g.to(Device::CPU).to_vector(), b = c.to_vector();
    size_t equal = 0;
    for (size_t i = 0; i < a.size(); ++i) equal += a[i] == b[i];
    MESSAGE("random_normal ", std::string(dtype_name(dt)), ": ", equal, " of ", a.size(), " elements bit-identical to the CPU");
    close("random_normal", dt, g, c, 1e-6, 1e-6);
    CHECK(test::max_rel_err(g.to(Device::CPU), c, 1.0) < 5e-7);  // a few f32 ulps, element by element
  }
}

TEST_CASE("cuda backend: im2col / col2im, index_select / index_add, AdamW with masks, sum_squares") {
  if (!gpu()) return;
  for (DType dt : kFloats) {
    Tensor x = R({2, 3, 8, 12}, dt, 1100), cols = Tensor::empty({2, 6, 48}, dt), colsg = Tensor::empty({2, 6, 48}, dt, Device::CUDA);
    C().im2col(x, 4, cols);
    G().im2col(D(x), 4, colsg);
    same("im2col", dt, colsg, cols);
    Tensor gcols = R({2, 6, 48}, dt, 1101), xi = R({2, 3, 8, 12}, dt, 1102);  // col2im adds into xi
    Tensor xig = D(xi);
    C().col2im(gcols, 4, xi);
    G().col2im(D(gcols), 4, xig);
    same("col2im", dt, xig, xi);

    Tensor tab = R({10, 7}, dt, 1103), idx = Tensor::from_vector(std::vector<int64_t>{9, 0, 3, 3, 9, 1}, {6});
    Tensor oc = Tensor::empty({6, 7}, dt), og = Tensor::empty({6, 7}, dt, Device::CUDA);
    C().index_select(tab, idx, oc);
    G().index_select(D(tab), D(idx), og);
    same("index_select", dt, og, oc);
    Tensor gout = R({6, 7}, dt, 1104), gx = R({10, 7}, dt, 1105);
    Tensor gxg = D(gx);
    C().index_add(gout, idx, gx);
    G().index_add(D(gout), D(idx), gxg);
    close("index_add", dt, gxg, gx, 1e-6, 1e-15);  // repeated rows: atomics add in any order
    Tensor badi = Tensor::from_vector(std::vector<int64_t>{0, 10}, {2}).to(Device::CUDA);
    CHECK_THROWS_WITH_AS(G().index_select(D(tab), badi, Tensor::empty({2, 7}, dt, Device::CUDA)),
                         doctest::Contains("out of range"), Error);

    for (bool masked : {false, true}) {
      const int64_t n = 1000;
      Tensor p = R({n}, dt, 1200), gr = R({n}, dt, 1201), m = Tensor::zeros({n}, dt), v = Tensor::zeros({n}, dt);
      Tensor mask;
      if (masked) {
        std::vector<double> mv = R({n}, DType::F64, 1202, 0, 1).to_vector();
        for (double& e : mv) e = e < 0.5 ? 0 : 1;
        mask = Tensor::from_vector(mv, {n}).to(dt);
      }
      Tensor p0 = p.clone(), pg = D(p), mg = D(m), vg = D(v), maskg = masked ? D(mask) : Tensor();
      for (int64_t s = 1; s <= 3; ++s) {
        Backend::AdamW h{1e-2, 0.9, 0.999, 1e-8, 0.1, s};
        C().adamw(h, p, gr, m, v, mask);
        G().adamw(h, pg, D(gr), mg, vg, maskg);
      }
      close("adamw param", dt, pg, p, 1e-6, 1e-14);
      close("adamw m", dt, mg, m, 1e-6, 1e-14);
      close("adamw v", dt, vg, v, 1e-6, 1e-14);
      if (masked) {  // masked-out entries are bit-identical to where they started
        std::vector<double> after = pg.to(Device::CPU).to_vector(), before = p0.to_vector(), mk = mask.to_vector();
        size_t frozen_changed = 0, moved = 0;
        for (size_t i = 0; i < mk.size(); ++i) {
          if (mk[i] == 0) frozen_changed += after[i] != before[i];
          else moved += after[i] != before[i];
        }
        CHECK(frozen_changed == 0);
        CHECK(moved > mk.size() / 4);
      }
    }
    Tensor big = R({1000, 1000}, dt, 1300), small = R({300, 200}, dt, 1301);
    const std::pair<Tensor, Tensor> sq[] = {{big, D(big)}, {view::transpose(small, 0, 1), view::transpose(D(small), 0, 1)}};
    for (const auto& [t, tg] : sq) {
      const double want = C().sum_squares(t), got = G().sum_squares(tg);
      double& e = g_max_err[std::string("sum_squares ") + dtype_name(dt)];
      e = std::max(e, std::abs(got - want) / want);
      CHECK(got == doctest::Approx(want).epsilon(1e-10));
    }
  }
}

TEST_CASE("cuda backend: the caching allocator reuses blocks; CUDA errors name the call") {
  if (!gpu()) return;
  G().synchronize();
  auto step = [] {
    Tensor a = Tensor::empty({1000, 300}, DType::F32, Device::CUDA), b = Tensor::empty({3 << 20}, DType::F32, Device::CUDA);
    G().fill(a, 1);
    G().fill(b, 2);
    Tensor c = Tensor::empty({1000, 300}, DType::F32, Device::CUDA);
    G().binary(BinaryOp::Add, a, a, c);
    return G().sum_squares(c);
  };
  CHECK(step() == doctest::Approx(4.0 * 300000));
  const size_t in_use = cuda::bytes_in_use(), cached = cuda::bytes_cached();
  cuda::reset_peak();
  for (int i = 0; i < 5; ++i) step();
  // steady state: the same blocks come back from the cache; nothing new is taken from the driver
  CHECK(cuda::bytes_in_use() == in_use);
  CHECK(cuda::bytes_cached() == cached);
  CHECK(cuda::peak_bytes() >= in_use + size_t(1000 * 300 * 4 * 2 + (3 << 20) * 4));
  CHECK(cuda::peak_bytes() <= in_use + cached);
  MESSAGE("allocator: ", in_use, " bytes in use, ", cached, " cached, peak ", cuda::peak_bytes());
  // an impossible allocation: a dg::Error naming cudaMalloc and the CUDA error string
  CHECK_THROWS_WITH_AS(G().alloc(size_t(1) << 50), doctest::Contains("cudaMalloc"), Error);
  CHECK(step() == doctest::Approx(4.0 * 300000));  // the device still works afterwards
}

TEST_CASE("cuda backend: largest errors against the CPU, per method and dtype") {
  if (!gpu()) return;
  REQUIRE(!g_max_err.empty());
  std::printf("%-32s %s\n", "method dtype", "max |gpu-cpu| / max |cpu|");
  for (auto& [k, v] : g_max_err) std::printf("%-32s %.3g\n", k.c_str(), v);
}

TEST_CASE("cuda backend: throughput of a few kernels at ViT-B sizes (results checked, timings printed)") {
  if (!gpu()) return;
  auto time_ms = [](auto&& f) {
    f();
    G().synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) f();
    G().synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / 10;
  };
  const int64_t tok = 128 * 197, d = 768;  // a batch of 128 images, 197 tokens, width 768
  Tensor x = Tensor::empty({tok, d}, DType::F32, Device::CUDA), y = Tensor::empty({tok, d}, DType::F32, Device::CUDA);
  G().random_uniform(x, 1, 0, 0, 1);
  const double gb = double(tok * d) * 4 / 1e9;
  double ms = time_ms([&] { G().binary(BinaryOp::Add, x, x, y); });
  std::printf("binary add [%lld,%lld] f32: %.3f ms, %.0f GB/s\n", (long long)tok, (long long)d, ms, 3 * gb / ms * 1e3);
  Tensor bias = Tensor::empty({1, d}, DType::F32, Device::CUDA);
  ms = time_ms([&] { G().reduce(ReduceOp::Sum, x, 1, tok, d, bias); });
  std::printf("reduce sum over tokens (bias grad) [%lld,%lld] -> [%lld]: %.3f ms, %.0f GB/s\n", (long long)tok,
              (long long)d, (long long)d, ms, gb / ms * 1e3);
  CHECK(test::max_rel_err(bias.to(Device::CPU), Tensor::full({1, d}, double(tok) / 2), 1) < 0.02);  // uniform mean 1/2
  Tensor one = Tensor::empty({1}, DType::F32, Device::CUDA);
  ms = time_ms([&] { G().reduce(ReduceOp::Sum, x, 1, tok * d, 1, one); });
  std::printf("reduce sum of all %lld elements: %.3f ms, %.0f GB/s\n", (long long)(tok * d), ms, gb / ms * 1e3);
  CHECK(one.item() == doctest::Approx(double(tok * d) / 2).epsilon(1e-3));
  Tensor mean = Tensor::empty({tok}, DType::F32, Device::CUDA), rstd = Tensor::empty({tok}, DType::F32, Device::CUDA);
  ms = time_ms([&] { G().layernorm(x, Tensor(), Tensor(), tok, d, 1e-6, y, mean, rstd); });
  std::printf("layernorm [%lld,%lld]: %.3f ms, %.0f GB/s\n", (long long)tok, (long long)d, ms, 2 * gb / ms * 1e3);
  const int64_t rows = 128 * 12 * 197, n = 197;
  Tensor a = Tensor::empty({rows, n}, DType::F32, Device::CUDA), s = Tensor::empty({rows, n}, DType::F32, Device::CUDA);
  G().random_uniform(a, 2, 0, -3, 3);
  ms = time_ms([&] { G().softmax(a, rows, n, false, s); });
  std::printf("softmax [%lld,%lld]: %.3f ms, %.0f GB/s\n", (long long)rows, (long long)n, ms,
              2 * double(rows * n) * 4 / 1e9 / ms * 1e3);
  Tensor t = Tensor::empty({d, tok}, DType::F32, Device::CUDA);
  ms = time_ms([&] { G().copy(view::transpose(x, 0, 1), t); });
  std::printf("copy transposed [%lld,%lld]: %.3f ms, %.0f GB/s\n", (long long)tok, (long long)d, ms, 2 * gb / ms * 1e3);
  for (bool tf32 : {false, true}) {
    const int64_t m = 4096;
    Tensor A = Tensor::empty({m, m}, DType::F32, Device::CUDA), Cm = Tensor::empty({m, m}, DType::F32, Device::CUDA);
    G().random_uniform(A, 3, 0, -1, 1);
    Backend::Gemm g;
    g.M = g.N = g.K = m, g.lda = g.ldb = g.ldc = m;
    cuda::set_tf32(tf32);
    ms = time_ms([&] { G().gemm(g, A, A, Cm); });
    cuda::set_tf32(false);
    std::printf("gemm %lld^3 f32%s: %.3f ms, %.1f TFLOP/s\n", (long long)m, tf32 ? " (TF32)" : "", ms,
                2.0 * double(m) * m * m / ms / 1e9);
  }
  CHECK(std::isfinite(ms));
}
