// concat along a dim: one output buffer, each input copied into its slice; the
// backward hands each input its slice of the gradient. Saves nothing.
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kConcat("concat");

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  DG_CHECK(!xs.empty(), "concat: no inputs");
  const Tensor& x0 = xs[0];
  dim = wrap_dim(dim, x0.dim(), "concat");
  Shape s = x0.shape();
  int64_t total = 0;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    DG_CHECK(x.dim() == x0.dim() && x.dtype() == x0.dtype() && x.device() == x0.device(), "concat: input ", i, " ",
             x.desc(), " does not match input 0 ", x0.desc());
    for (int64_t d = 0; d < x0.dim(); ++d)
      DG_CHECK(d == dim || x.size(d) == x0.size(d), "concat: input ", i, " ", x.desc(), " differs from input 0 ",
               x0.desc(), " outside dim ", dim);
    sizes.push_back(x.size(dim));
    total += x.size(dim);
  }
  s[size_t(dim)] = total;
  Tensor y = Tensor::empty(s, x0.dtype(), x0.device());
  Backend& be = backend_of(x0);
  int64_t at = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    be.copy(xs[i], view::slice(y, dim, at, at + sizes[i]));
    at += sizes[i];
  }
  if (Record* r = tape().record(kConcat, xs, y, str("dim=", dim))) {
    r->backward = [dim, sizes](Record& r, const Tensor& gy) {
      std::vector<Tensor> g(sizes.size());
      int64_t at = 0;
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (r.needs_grad(i)) g[i] = view::slice(gy, dim, at, at + sizes[i]).contiguous();
        at += sizes[i];
      }
      return g;
    };
  }
  return y;
}

DG_GRADCHECK(concat) {
  auto f = [](const std::vector<Tensor>& x) { return concat(x, 1); };
  return {{"three on dim 1",
           [] { return std::vector<Tensor>{randn64({2, 1, 3}, 1), randn64({2, 4, 3}, 2), randn64({2, 2, 3}, 3)}; }, f},
          {"frozen middle",
           [] { return std::vector<Tensor>{randn64({2, 1, 3}, 4), randn64({2, 2, 3}, 5, false), randn64({2, 1, 3}, 6)}; },
           f}};
}

}  // namespace dg
