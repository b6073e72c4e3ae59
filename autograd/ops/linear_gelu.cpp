// linear_gelu: y = gelu(x @ W^T + b), the first half of a ViT MLP, as one op so that it can
// trade FLOPs for memory. The backward needs u = x @ W^T + b (for gelu'(u)):
//   recompute = false: saves u [rows, out]              (what linear + gelu would save)
//   recompute = true:  saves x [rows, in] and recomputes u with one GEMM in backward;
//                      for a ViT MLP (out = 4 in) that keeps a quarter of the bytes.
// Then gu = gy * gelu'(u); dx = gu @ W; dW = gu^T @ x (trainable W only); db = sum_rows(gu).
#include "autograd/autocast.h"
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kLinearGelu("linear_gelu");

// u = x @ W^T + b without recording (x contiguous [rows, in]).
static Tensor affine(const Tensor& x2, const Tensor& W, const Tensor& b) {
  NoGradGuard ng;
  return linear(x2, W, b);
}

Tensor linear_gelu(const Tensor& x, const Tensor& W, const Tensor& b, bool recompute) {
  DG_CHECK(W.dim() == 2 && x.dim() >= 1 && x.size(-1) == W.size(1), "linear_gelu: input ", x.desc(), " and weight ",
           W.desc(), ": expected x [..., ", W.dim() == 2 ? W.size(1) : -1, "]");
  const int64_t in = W.size(1), out_f = W.size(0);
  const bool lowp = lowp_gemm(x, W);  // autocast: the GEMM reads (and we keep) bf16 copies
  Tensor x2 = view::reshape(lowp ? to_lowp(x) : x.contiguous(), {x.numel() / in, in});
  Tensor Wg = lowp ? to_lowp(W) : W;
  Tensor u = affine(x2, Wg, b);  // [rows, out], f32
  Tensor y = Tensor::empty(u.shape(), u.dtype(), u.device());
  backend_of(u).unary(UnaryOp::Gelu, u, y, 0);
  Shape os = x.shape();
  os.back() = out_f;
  y = view::reshape(y, os);
  if (Record* r = tape().record(kLinearGelu, {x, W, b}, y, recompute ? "recompute" : "")) {
    // under autocast x and W are the bf16 copies the GEMM read, and u is kept in bf16
    if (recompute || r->needs_grad(1)) r->save("x", x2);
    if (recompute) {
      r->save("W", Wg);
      if (b.defined()) r->save("b", b);
    } else {
      r->save_activation("u", u);
      if (r->needs_grad(0)) r->save("W", Wg);
    }
    r->backward = [recompute, has_b = b.defined()](Record& r, const Tensor& gy) {
      std::vector<Tensor> g(3);
      const Tensor u = recompute ? affine(r.saved_stored("x"), r.saved_stored("W"),
                                          has_b ? r.saved_tensor("b") : Tensor())
                                 : r.saved_tensor("u");
      Tensor gu = Tensor::empty(u.shape(), u.dtype(), u.device());
      backend_of(u).unary_backward(UnaryOp::Gelu, u, Tensor(), view::reshape(gy.contiguous(), u.shape()), gu, 0);
      if (r.needs_grad(0)) g[0] = view::reshape(matmul(gu, r.saved_stored("W")), r.in_shapes[0]);
      if (r.needs_grad(1)) g[1] = matmul(gu, r.saved_stored("x"), true, false);
      if (r.needs_grad(2)) g[2] = sum(gu, {0});
      return g;
    };
  }
  return y;
}

DG_GRADCHECK(linear_gelu) {
  auto f = [](bool rc) {
    return [rc](const std::vector<Tensor>& x) { return linear_gelu(x[0], x[1], x[2], rc); };
  };
  auto all = [] { return std::vector<Tensor>{randn64({2, 3, 4}, 1), randn64({5, 4}, 2), randn64({5}, 3)}; };
  auto frozen = [] { return std::vector<Tensor>{randn64({3, 4}, 4), randn64({6, 4}, 5, false), randn64({6}, 6, false)}; };
  return {
      {"all trainable", all, f(false)},
      {"all trainable, recompute", all, f(true)},
      {"frozen weight and bias, recompute", frozen, f(true)},
      {"no bias, recompute", [] { return std::vector<Tensor>{randn64({3, 4}, 7), randn64({2, 4}, 8), Tensor()}; }, f(true)},
  };
}

}  // namespace dg
