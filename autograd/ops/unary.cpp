// Elementwise unary ops and scalar ops. Each saves only what its derivative reads:
// x for log/erf/gelu/relu/abs/pow, the output y for exp/tanh/sqrt/sigmoid, nothing for
// neg/add_scalar/mul_scalar. The derivatives themselves are shared by the backends
// (unary_derivative in core/elementwise_math.h; the CPU loop is in core/cpu/cpu_unary.cpp).
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kNeg("neg"), kExp("exp"), kLog("log"), kTanh("tanh"), kSqrt("sqrt"), kErf("erf"),
    kGelu("gelu"), kRelu("relu"), kSigmoid("sigmoid"), kAbs("abs"), kAddScalar("add_scalar"),
    kMulScalar("mul_scalar"), kPowScalar("pow_scalar");

enum class Reads { Nothing, X, Y };

static Tensor unary_op(const OpDef& def, UnaryOp op, Reads reads, const Tensor& x, double alpha) {
  DG_CHECK(x.dtype() == DType::F32 || x.dtype() == DType::F64, def.name, ": expected a float tensor, got ",
           x.desc());
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(x).unary(op, x, y, alpha);
  if (Record* r = tape().record(def, {x}, y, alpha != 0 ? str(alpha) : std::string())) {
    if (reads == Reads::X) r->save_activation("x", x);  // bf16 under autocast
    if (reads == Reads::Y) r->save_activation("y", y);
    r->backward = [op, reads, alpha](Record& r, const Tensor& gy) {
      Tensor x = reads == Reads::X ? r.saved_tensor("x").contiguous() : Tensor();
      Tensor y = reads == Reads::Y ? r.saved_tensor("y") : Tensor();
      Tensor gx = Tensor::empty(gy.shape(), gy.dtype(), gy.device());
      backend_of(gy).unary_backward(op, x, y, gy, gx, alpha);
      return std::vector<Tensor>{gx};
    };
  }
  return y;
}

Tensor neg(const Tensor& x) { return unary_op(kNeg, UnaryOp::Neg, Reads::Nothing, x, 0); }
Tensor exp(const Tensor& x) { return unary_op(kExp, UnaryOp::Exp, Reads::Y, x, 0); }
Tensor log(const Tensor& x) { return unary_op(kLog, UnaryOp::Log, Reads::X, x, 0); }
Tensor tanh(const Tensor& x) { return unary_op(kTanh, UnaryOp::Tanh, Reads::Y, x, 0); }
Tensor sqrt(const Tensor& x) { return unary_op(kSqrt, UnaryOp::Sqrt, Reads::Y, x, 0); }
Tensor erf(const Tensor& x) { return unary_op(kErf, UnaryOp::Erf, Reads::X, x, 0); }
Tensor gelu(const Tensor& x) { return unary_op(kGelu, UnaryOp::Gelu, Reads::X, x, 0); }
Tensor relu(const Tensor& x) { return unary_op(kRelu, UnaryOp::Relu, Reads::X, x, 0); }
Tensor sigmoid(const Tensor& x) { return unary_op(kSigmoid, UnaryOp::Sigmoid, Reads::Y, x, 0); }
Tensor abs(const Tensor& x) { return unary_op(kAbs, UnaryOp::Abs, Reads::X, x, 0); }
Tensor add_scalar(const Tensor& x, double s) { return unary_op(kAddScalar, UnaryOp::AddScalar, Reads::Nothing, x, s); }
Tensor mul_scalar(const Tensor& x, double s) { return unary_op(kMulScalar, UnaryOp::MulScalar, Reads::Nothing, x, s); }
Tensor pow_scalar(const Tensor& x, double p) { return unary_op(kPowScalar, UnaryOp::PowScalar, Reads::X, x, p); }

// Inputs: normal for smooth ops; kept away from 0 for relu/abs (kinks); positive for log/sqrt/pow.
static std::vector<GradCheckCase> unary_case(std::function<Tensor(const Tensor&)> f, int domain) {
  auto make = [domain] {
    if (domain == 1) return std::vector<Tensor>{rand64({3, 5}, 21, 0.3, 2.0)};
    if (domain == 2) {  // |x| in [0.2, 1.5] with both signs
      Tensor t = rand64({3, 5}, 22, 0.2, 1.5, false);
      double* p = t.data<double>();
      for (int64_t i = 0; i < t.numel(); i += 2) p[i] = -p[i];
      return std::vector<Tensor>{t.set_requires_grad(true)};
    }
    return std::vector<Tensor>{randn64({3, 5}, 23)};
  };
  return {{"3x5", make, [f](const std::vector<Tensor>& x) { return f(x[0]); }}};
}
DG_GRADCHECK(neg) { return unary_case([](const Tensor& x) { return neg(x); }, 0); }
DG_GRADCHECK(exp) { return unary_case([](const Tensor& x) { return exp(x); }, 0); }
DG_GRADCHECK(log) { return unary_case([](const Tensor& x) { return log(x); }, 1); }
DG_GRADCHECK(tanh) { return unary_case([](const Tensor& x) { return tanh(x); }, 0); }
DG_GRADCHECK(sqrt) { return unary_case([](const Tensor& x) { return sqrt(x); }, 1); }
DG_GRADCHECK(erf) { return unary_case([](const Tensor& x) { return erf(x); }, 0); }
DG_GRADCHECK(gelu) { return unary_case([](const Tensor& x) { return gelu(x); }, 0); }
DG_GRADCHECK(relu) { return unary_case([](const Tensor& x) { return relu(x); }, 2); }
DG_GRADCHECK(sigmoid) { return unary_case([](const Tensor& x) { return sigmoid(x); }, 0); }
DG_GRADCHECK(abs) { return unary_case([](const Tensor& x) { return abs(x); }, 2); }
DG_GRADCHECK(add_scalar) { return unary_case([](const Tensor& x) { return add_scalar(x, 1.5); }, 0); }
DG_GRADCHECK(mul_scalar) { return unary_case([](const Tensor& x) { return mul_scalar(x, -0.7); }, 0); }
DG_GRADCHECK(pow_scalar) { return unary_case([](const Tensor& x) { return pow_scalar(x, 2.5); }, 1); }

}  // namespace dg
