// linear: y = x @ W^T + b (timm/PyTorch weight layout W [out, in]).
//   dx = dy @ W          (only if x needs grad; reads W)
//   dW = dy^T @ x        (only if W is trainable; reads x)  <- the GEMM a frozen weight skips
//   db = sum_rows(dy)    (only if b is trainable)
// Under autocast (autograd/autocast.h) x and W enter the GEMMs as bf16 copies, and those copies
// are what is saved; y and every gradient are f32.
#include "autograd/autocast.h"
#include "autograd/cost_meter.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kLinear("linear");

// dx = dy @ W. Where x's gradient already holds another op's part (LoRA's A product and the
// base layer read the same x) and the tape offers that buffer, the GEMM adds into it (beta = 1).
static Tensor input_grad(Record& r, const Tensor& gy2, const Tensor& W, int64_t rows, int64_t in, int64_t out_f) {
  Tensor acc = W.dtype() == gy2.dtype() ? r.take_grad_so_far(0, gy2.dtype()) : Tensor();
  if (!acc.defined()) return view::reshape(matmul(gy2, W), r.in_shapes[0]);
  Backend::Gemm g;
  g.M = rows, g.N = in, g.K = out_f;
  g.lda = out_f, g.ldb = in, g.ldc = in;
  g.beta = 1;
  count_gemm_flops(g);
  backend_of(gy2).gemm(g, gy2, W.contiguous(), view::reshape(acc, {rows, in}));
  return acc;
}

Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b) {
  DG_CHECK(W.dim() == 2 && x.dim() >= 1 && x.size(-1) == W.size(1), "linear: input ", x.desc(), " and weight ",
           W.desc(), ": expected x [..., ", W.dim() == 2 ? W.size(1) : -1, "]");
  DG_CHECK(!b.defined() || (b.dim() == 1 && b.size(0) == W.size(0)), "linear: bias ", b.desc(), " for weight ",
           W.desc());
  const bool lowp = lowp_gemm(x, W);  // autocast: bf16 operands, f32 result (autograd/autocast.h)
  DG_CHECK((lowp || x.dtype() == W.dtype()) && x.device() == W.device(), "linear: input ", x.desc(),
           " and weight ", W.desc(), " differ in dtype or device");
  const int64_t in = W.size(1), out_f = W.size(0);
  Tensor xc = lowp ? to_lowp(x) : x.contiguous();
  Tensor Wc = lowp ? to_lowp(W) : W.contiguous();
  const int64_t rows = xc.numel() / in;
  Shape os = x.shape();
  os.back() = out_f;
  Tensor y = Tensor::empty(os, lowp ? DType::F32 : x.dtype(), x.device());
  Backend& be = backend_of(x);
  Backend::Gemm g;
  g.tb = true;
  g.M = rows;
  g.N = out_f;
  g.K = in;
  g.lda = in;
  g.ldb = in;
  g.ldc = out_f;
  // the bias in the GEMM's epilogue where the backend has one (cuBLASLt opt-in, CPU oneDNN), else
  // C = broadcast bias and the GEMM accumulates onto it
  count_gemm_flops(g);
  if (!b.defined() || !be.gemm_bias(g, xc, Wc, b.contiguous(), y)) {
    if (b.defined()) {
      be.copy(view::expand(b, {rows, out_f}), view::reshape(y, {rows, out_f}));
      g.beta = 1;
    }
    be.gemm(g, xc, Wc, y);
  }
  if (Record* r = tape().record(kLinear, {x, W, b}, y)) {
    // under autocast both are the bf16 operands the GEMM read (one buffer with any other save of them)
    if (r->needs_grad(1)) r->save("x", lowp ? xc : x);
    if (r->needs_grad(0)) r->save("W", lowp ? Wc : W);
    r->backward = [in, out_f](Record& r, const Tensor& gy) {
      std::vector<Tensor> g(3);
      const int64_t rows = gy.numel() / out_f;
      Tensor gy2 = view::reshape(gy, {rows, out_f});
      if (r.needs_grad(0)) g[0] = input_grad(r, gy2, r.saved_stored("W"), rows, in, out_f);
      if (r.needs_grad(1)) g[1] = matmul(gy2, view::reshape(r.saved_stored("x"), {rows, in}), true, false);
      if (r.needs_grad(2)) g[2] = sum(gy2, {0});
      return g;
    };
  }
  return y;
}

DG_GRADCHECK(linear) {
  auto f = [](const std::vector<Tensor>& x) { return linear(x[0], x[1], x[2]); };
  return {
      {"all trainable", [] { return std::vector<Tensor>{randn64({2, 3, 4}, 1), randn64({5, 4}, 2), randn64({5}, 3)}; }, f},
      {"frozen weight, trainable bias",
       [] { return std::vector<Tensor>{randn64({3, 4}, 4), randn64({5, 4}, 5, false), randn64({5}, 6)}; }, f},
      {"no bias", [] { return std::vector<Tensor>{randn64({3, 4}, 7), randn64({2, 4}, 8), Tensor()}; }, f},
      // h read by two linears and a tanh: the linears' dx GEMMs add into the gradient so far
      {"x shared by two linears (dx accumulated by the GEMM)",
       [] { return std::vector<Tensor>{randn64({2, 3, 4}, 9), randn64({5, 4}, 10), randn64({5}, 11), randn64({5, 4}, 12)}; },
       [](const std::vector<Tensor>& x) {
         Tensor h = tanh(x[0]);
         return add(add(linear(h, x[1], x[2]), linear(h, x[3], Tensor())), linear(tanh(h), x[3], Tensor()));
       }},
  };
}

}  // namespace dg
