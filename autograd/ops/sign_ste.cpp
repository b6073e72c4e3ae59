// The 1-bit quantiser's sign with a straight-through gradient (Jie, Wang, Deng, ICCV 2023,
// JieShibo/PETL-ViT binary_adapter/utils.py QLinear): forward c where x > 0, else -c; backward
// the identity, unclipped, as the authors' `q(w).data + w - w.data`. Zero goes to -c, as their
// dump's argmin does (the tie picks the first code), so what a packed file stores is exactly
// what the forward used; torch.sign would give 0 there, which one bit cannot hold.
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kSignSte("sign_ste");

Tensor sign_ste(const Tensor& x, double c) {
  DG_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64, "sign_ste: expected a float tensor, got ", x.desc());
  DG_CHECK(c > 0, "sign_ste: the code value c must be > 0, got ", c);
  Tensor xc = x.contiguous();
  // where() takes its first operand where the condition is non-zero: relu(x) is non-zero
  // exactly where x > 0
  Tensor pos = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(xc).unary(UnaryOp::Relu, xc, pos, 0);
  Tensor plus = Tensor::full(x.shape(), c, x.dtype(), x.device());
  Tensor minus = Tensor::full(x.shape(), -c, x.dtype(), x.device());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(xc).where(pos, plus, minus, y);
  if (Record* r = tape().record(kSignSte, {x}, y, str("c=", c)))
    r->backward = [](Record&, const Tensor& gy) { return std::vector<Tensor>{gy}; };  // straight through
  return y;
}

// A step function has a zero derivative almost everywhere, so finite differences of
// sign_ste itself cannot check a straight-through backward. The surrogate the STE claims is
// the identity: sign_ste(x) - sign_ste(x, untracked) + x(untracked) has exactly the values of x
// (the two signs cancel bit for bit, whichever side of 0 a perturbed element lands on), so
// its finite differences are 1, and the tape's gradient reaches x only through sign_ste's
// backward. A clipped, zero or scaled backward fails it. Inputs straddle 0.
DG_GRADCHECK(sign_ste) {
  auto make = [] {
    Tensor t = rand64({3, 5}, 41, 0.0, 1.5, false);
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); i += 2) p[i] = -p[i];
    return std::vector<Tensor>{t.set_requires_grad(true)};
  };
  return {{"identity surrogate, 3x5", make, [](const std::vector<Tensor>& x) {
             Tensor frozen = x[0].detach();
             Tensor q;
             {
               NoGradGuard ng;
               q = sign_ste(frozen, 0.6744897501960817);
             }
             return add(sub(sign_ste(x[0], 0.6744897501960817), q), frozen);
           }}};
}

}  // namespace dg
