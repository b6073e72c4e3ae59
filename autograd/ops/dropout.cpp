// Inverted dropout: y = x * keep / (1 - p), keep_i = uniform(key, i) >= p.
// The mask is not saved: backward regenerates it from the key (counter-based RNG), so a
// dropout costs no activation memory beyond what its neighbours save anyway.
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kDropout("dropout");

// mask * 1/(1-p) as a tensor of x's shape, dtype and device
static Tensor dropout_mask(const Shape& s, DType dt, Device dev, double p, uint64_t key) {
  Tensor u = Tensor::empty(s, dt, dev);
  backend(dev).random_uniform(u, key, 0, 0.0, 1.0);
  // keep = (u >= p) / (1 - p), from backend primitives: relu(p - u) is non-zero exactly
  // where u < p (dropped), and where() selects its first operand on non-zero.
  Tensor m = Tensor::empty(s, dt, dev);
  backend(dev).unary(UnaryOp::MulScalar, u, m, -1.0);
  backend(dev).unary(UnaryOp::AddScalar, m, u, p);  // u <- p - u
  Tensor z = Tensor::zeros(s, dt, dev), keep = Tensor::full(s, 1.0 / (1.0 - p), dt, dev);
  backend(dev).unary(UnaryOp::Relu, u, m, 0);  // m <- relu(p - u)
  Tensor out = Tensor::empty(s, dt, dev);
  backend(dev).where(m, z, keep, out);
  return out;
}

Tensor dropout(const Tensor& x, double p, bool training, uint64_t key) {
  DG_CHECK(p >= 0 && p < 1, "dropout: p = ", p, " must be in [0, 1)");
  if (!training || p == 0) return x;
  Tensor mask = dropout_mask(x.shape(), x.dtype(), x.device(), p, key);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  backend_of(x).binary(BinaryOp::Mul, x, mask, y);
  if (Record* r = tape().record(kDropout, {x}, y, str("p=", p))) {
    r->backward = [p, key](Record& r, const Tensor& gy) {
      Tensor mask = dropout_mask(gy.shape(), gy.dtype(), gy.device(), p, key);
      Tensor gx = Tensor::empty(gy.shape(), gy.dtype(), gy.device());
      backend_of(gy).binary(BinaryOp::Mul, gy, mask, gx);
      return std::vector<Tensor>{gx};
    };
  }
  return y;
}

DG_GRADCHECK(dropout) {
  return {{"p=0.3 fixed key", [] { return std::vector<Tensor>{randn64({4, 6}, 1)}; },
           [](const std::vector<Tensor>& x) { return dropout(x[0], 0.3, true, 77); }}};
}

}  // namespace dg
