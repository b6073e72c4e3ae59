// patchify: non-overlapping p x p patches of an image batch, flattened in the order of a
// conv weight [D, C, p, p], so a stride = kernel conv is linear(patchify(x, p), W.reshape(D, -1), b).
//   x [B, C, H, W] -> [B, (H/p)*(W/p), C*p*p];  backward is the adjoint (col2im). Saves nothing.
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kPatchify("patchify");

Tensor patchify(const Tensor& x, int64_t p) {
  DG_CHECK(x.dim() == 4, "patchify: input ", x.desc(), " must be [B, C, H, W]");
  DG_CHECK(p >= 1 && x.size(2) % p == 0 && x.size(3) % p == 0, "patchify: image ", x.size(2), "x", x.size(3),
           " is not divisible by patch size ", p);
  const int64_t B = x.size(0), C = x.size(1), n = (x.size(2) / p) * (x.size(3) / p);
  Tensor y = Tensor::empty({B, n, C * p * p}, x.dtype(), x.device());
  backend_of(x).im2col(x.contiguous(), p, y);
  if (Record* r = tape().record(kPatchify, {x}, y, str("p=", p))) {
    r->backward = [p](Record& r, const Tensor& gy) {
      Tensor gx = Tensor::zeros(r.in_shapes[0], gy.dtype(), gy.device());
      backend_of(gy).col2im(gy, p, gx);
      return std::vector<Tensor>{gx};
    };
  }
  return y;
}

DG_GRADCHECK(patchify) {
  return {{"2x3x4x6 p2", [] { return std::vector<Tensor>{randn64({2, 3, 4, 6}, 1)}; },
           [](const std::vector<Tensor>& x) { return patchify(x[0], 2); }}};
}

}  // namespace dg
