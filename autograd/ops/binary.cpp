// add, sub, mul, div with NumPy broadcasting. Each gradient is reduced back to its
// input's shape with sum_to (the adjoint of broadcasting).
//   add: ga = gy,      gb = gy
//   sub: ga = gy,      gb = -gy
//   mul: ga = gy * b,  gb = gy * a       (saves only the other operand)
//   div: ga = gy / b,  gb = -gy * a / b^2
#include "autograd/gradcheck.h"
#include "autograd/op_registry.h"
#include "autograd/ops.h"
#include "core/backend.h"

namespace dg {

static const OpDef kAdd("add"), kSub("sub"), kMul("mul"), kDiv("div");

static Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b) {
  DG_CHECK(a.dtype() == b.dtype() && a.device() == b.device(), binary_name(op), ": ", a.desc(), " and ",
           b.desc(), " differ in dtype or device");
  Shape s = broadcast_shapes(a.shape(), b.shape(), binary_name(op));
  Tensor out = Tensor::empty(s, a.dtype(), a.device());
  backend_of(a).binary(op, view::expand(a, s), view::expand(b, s), out);
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Add, a, b);
  if (Record* r = tape().record(kAdd, {a, b}, y)) {
    r->backward = [](Record& r, const Tensor& gy) {
      return std::vector<Tensor>{r.needs_grad(0) ? sum_to(gy, r.in_shapes[0]) : Tensor(),
                                 r.needs_grad(1) ? sum_to(gy, r.in_shapes[1]) : Tensor()};
    };
  }
  return y;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Sub, a, b);
  if (Record* r = tape().record(kSub, {a, b}, y)) {
    r->backward = [](Record& r, const Tensor& gy) {
      return std::vector<Tensor>{r.needs_grad(0) ? sum_to(gy, r.in_shapes[0]) : Tensor(),
                                 r.needs_grad(1) ? sum_to(neg(gy), r.in_shapes[1]) : Tensor()};
    };
  }
  return y;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Mul, a, b);
  if (Record* r = tape().record(kMul, {a, b}, y)) {
    if (r->needs_grad(0)) r->save_activation("b", b);  // bf16 under autocast, unless a parameter
    if (r->needs_grad(1)) r->save_activation("a", a);
    r->backward = [](Record& r, const Tensor& gy) {
      std::vector<Tensor> g(2);
      if (r.needs_grad(0)) g[0] = sum_to(binary_raw(BinaryOp::Mul, gy, r.saved_tensor("b")), r.in_shapes[0]);
      if (r.needs_grad(1)) g[1] = sum_to(binary_raw(BinaryOp::Mul, gy, r.saved_tensor("a")), r.in_shapes[1]);
      return g;
    };
  }
  return y;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = binary_raw(BinaryOp::Div, a, b);
  if (Record* r = tape().record(kDiv, {a, b}, y)) {
    r->save("b", b);
    if (r->needs_grad(1)) r->save("a", a);
    r->backward = [](Record& r, const Tensor& gy) {
      std::vector<Tensor> g(2);
      const Tensor& b = r.saved_tensor("b");
      Tensor ga = binary_raw(BinaryOp::Div, gy, b);
      if (r.needs_grad(0)) g[0] = sum_to(ga, r.in_shapes[0]);
      if (r.needs_grad(1)) {  // -gy * a / b^2 = -(gy / b) * a / b
        Tensor t = binary_raw(BinaryOp::Div, binary_raw(BinaryOp::Mul, ga, r.saved_tensor("a")), b);
        g[1] = sum_to(neg(t), r.in_shapes[1]);
      }
      return g;
    };
  }
  return y;
}

static std::vector<GradCheckCase> binary_cases(Tensor (*f)(const Tensor&, const Tensor&), bool positive_b) {
  auto fn = [f](const std::vector<Tensor>& x) { return f(x[0], x[1]); };
  auto b = [positive_b](const Shape& s, uint64_t seed, bool rg = true) {
    return positive_b ? rand64(s, seed, 0.5, 2.0, rg) : randn64(s, seed, rg);
  };
  return {
      {"same shape", [=] { return std::vector<Tensor>{randn64({3, 4}, 1), b({3, 4}, 2)}; }, fn},
      {"broadcast row", [=] { return std::vector<Tensor>{randn64({2, 3, 4}, 3), b({4}, 4)}; }, fn},
      {"broadcast both", [=] { return std::vector<Tensor>{randn64({2, 1, 4}, 5), b({3, 1}, 6)}; }, fn},
      {"frozen a", [=] { return std::vector<Tensor>{randn64({3, 4}, 7, false), b({1, 4}, 8)}; }, fn},
  };
}
DG_GRADCHECK(add) { return binary_cases(add, false); }
DG_GRADCHECK(sub) { return binary_cases(sub, false); }
DG_GRADCHECK(mul) { return binary_cases(mul, false); }
DG_GRADCHECK(div) { return binary_cases(div, true); }

}  // namespace dg
