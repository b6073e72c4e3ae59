// softmax / log_softmax over one dim. Backward reads only the output y:
//   softmax:     gx = y * (gy - sum(gy * y))
//   log_softmax: gx = gy - exp(y) * sum(gy)
// A dim other than the last is moved last (one copy), computed, and moved back.
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kSoftmax("softmax"), kLogSoftmax("log_softmax");

static Tensor softmax_impl(const OpDef& def, const Tensor& x, int64_t dim, bool log) {
  dim = wrap_dim(dim, x.dim(), def.name);
  const bool last = dim == x.dim() - 1;
  Tensor xl = last ? x.contiguous() : view::transpose(x, dim, -1).contiguous();
  const int64_t n = xl.size(-1), rows = xl.numel() / std::max<int64_t>(n, 1);
  Tensor yl = Tensor::empty(xl.shape(), x.dtype(), x.device());
  backend_of(x).softmax(xl, rows, n, log, yl);
  Tensor y = last ? yl : view::transpose(yl, dim, -1).contiguous();
  if (Record* r = tape().record(def, {x}, y, str("dim=", dim))) {
    // softmax's y (probabilities) is kept in bf16 under autocast; log_softmax's y stays f32:
    // exp(y) would turn bf16's absolute error on large negative log-probabilities into percents
    if (log) r->save("y", y);
    else r->save_activation("y", y);
    r->backward = [dim, last, log](Record& r, const Tensor& gy) {
      const Tensor& y = r.saved_tensor("y");
      Tensor yl = last ? y : view::transpose(y, dim, -1).contiguous();
      Tensor gl = last ? gy : view::transpose(gy, dim, -1).contiguous();
      const int64_t n = yl.size(-1), rows = yl.numel() / std::max<int64_t>(n, 1);
      Tensor gx = Tensor::empty(yl.shape(), y.dtype(), y.device());
      backend_of(y).softmax_backward(yl, gl, rows, n, log, gx);
      return std::vector<Tensor>{last ? gx : view::transpose(gx, dim, -1).contiguous()};
    };
  }
  return y;
}

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_impl(kSoftmax, x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_impl(kLogSoftmax, x, dim, true); }

static std::vector<GradCheckCase> softmax_cases(bool log) {
  auto f = [log](int64_t dim) {
    return [log, dim](const std::vector<Tensor>& x) { return log ? log_softmax(x[0], dim) : softmax(x[0], dim); };
  };
  return {
      {"last dim", [] { return std::vector<Tensor>{randn64({3, 5}, 1)}; }, f(-1)},
      {"middle dim", [] { return std::vector<Tensor>{randn64({2, 4, 3}, 2)}; }, f(1)},
  };
}
DG_GRADCHECK(softmax) { return softmax_cases(false); }
DG_GRADCHECK(log_softmax) { return softmax_cases(true); }

}  // namespace dg
