// index_select: rows of x (dim 0) picked by an i64 index; backward scatters-adds the
// gradient rows back (repeated indices accumulate). Saves the index only.
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kIndexSelect("index_select");

Tensor index_select(const Tensor& x, const Tensor& idx_in) {
  DG_CHECK(x.dim() >= 1, "index_select: input ", x.desc(), " must have at least one dim");
  DG_CHECK(idx_in.dim() == 1 && (idx_in.dtype() == DType::I64 || idx_in.dtype() == DType::I32),
           "index_select: index ", idx_in.desc(), " must be a 1-d i64/i32 tensor");
  // Check the range here, on the host, so every backend reports the same error.
  const std::vector<double> iv = idx_in.to_vector();
  for (size_t i = 0; i < iv.size(); ++i)
    DG_CHECK(iv[i] >= 0 && iv[i] < double(x.size(0)), "index_select: index ", int64_t(iv[i]), " at position ", i,
             " is out of range for input ", x.desc(), " with ", x.size(0), " rows");
  Tensor idx = idx_in.to(DType::I64).to(x.device()).contiguous();
  Shape s = x.shape();
  s[0] = idx.size(0);
  Tensor y = Tensor::empty(s, x.dtype(), x.device());
  backend_of(x).index_select(x.contiguous(), idx, y);
  if (Record* r = tape().record(kIndexSelect, {x}, y)) {
    r->save("idx", idx);
    r->backward = [](Record& r, const Tensor& gy) {
      Tensor gx = Tensor::zeros(r.in_shapes[0], gy.dtype(), gy.device());
      backend_of(gy).index_add(gy, r.saved_tensor("idx"), gx);
      return std::vector<Tensor>{gx};
    };
  }
  return y;
}

DG_GRADCHECK(index_select) {
  return {{"repeated rows", [] { return std::vector<Tensor>{randn64({5, 3}, 1)}; },
           [](const std::vector<Tensor>& x) {
             return index_select(x[0], Tensor::from_vector(std::vector<int64_t>{4, 0, 4, 2}, {4}));
           }}};
}

}  // namespace dg
