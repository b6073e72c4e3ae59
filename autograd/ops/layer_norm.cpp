// layer_norm over the last dim: y = (x - mean) * rstd * w + b.
// Saves x, mean, rstd (and w when x needs a gradient). Backward (per row, h = (x-mean)*rstd):
//   dx = rstd * (dh - mean(dh) - h * mean(dh * h)),  dh = gy * w
//   dw = sum_rows(gy * h),  db = sum_rows(gy)
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kLayerNorm("layer_norm");

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  DG_CHECK(!w.defined() || w.shape() == Shape{n}, "layer_norm: weight ", w.desc(), " for input ", x.desc(),
           ": expected [", n, "]");
  DG_CHECK(!b.defined() || b.shape() == Shape{n}, "layer_norm: bias ", b.desc(), " for input ", x.desc(),
           ": expected [", n, "]");
  Tensor xc = x.contiguous();
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mean = Tensor::empty({rows}, x.dtype(), x.device()), rstd = Tensor::empty({rows}, x.dtype(), x.device());
  Tensor wc = w.defined() ? w.contiguous() : Tensor(), bc = b.defined() ? b.contiguous() : Tensor();
  backend_of(x).layernorm(xc, wc, bc, rows, n, eps, y, mean, rstd);
  if (Record* r = tape().record(kLayerNorm, {x, w, b}, y, str("eps=", eps))) {
    r->save("x", xc);
    r->save("mean", mean);
    r->save("rstd", rstd);
    if (r->needs_grad(0) && w.defined()) r->save("w", wc);
    r->backward = [rows, n](Record& r, const Tensor& gy) {
      const Tensor& x = r.saved_tensor("x");
      Tensor w = r.needs_grad(0) && !r.in_shapes[1].empty() ? r.saved_tensor("w") : Tensor();
      std::vector<Tensor> g(3);
      if (r.needs_grad(0)) g[0] = Tensor::empty(x.shape(), x.dtype(), x.device());
      if (r.needs_grad(1)) g[1] = Tensor::zeros({n}, x.dtype(), x.device());
      if (r.needs_grad(2)) g[2] = Tensor::zeros({n}, x.dtype(), x.device());
      backend_of(x).layernorm_backward(x, w, r.saved_tensor("mean"), r.saved_tensor("rstd"), gy, rows, n, g[0],
                                       g[1], g[2]);
      return g;
    };
  }
  return y;
}

DG_GRADCHECK(layer_norm) {
  auto f = [](const std::vector<Tensor>& x) { return layer_norm(x[0], x[1], x[2], 1e-5); };
  return {
      {"affine", [] { return std::vector<Tensor>{randn64({2, 3, 6}, 1), randn64({6}, 2), randn64({6}, 3)}; }, f},
      {"no affine", [] { return std::vector<Tensor>{randn64({4, 5}, 4), Tensor(), Tensor()}; }, f},
      {"frozen w, b", [] { return std::vector<Tensor>{randn64({3, 6}, 5), randn64({6}, 6, false), randn64({6}, 7, false)}; }, f},
      {"frozen x", [] { return std::vector<Tensor>{randn64({3, 6}, 8, false), randn64({6}, 9), randn64({6}, 10)}; }, f},
  };
}

}  // namespace dg
