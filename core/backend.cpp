#include "core/backend.h"

#include "core/op_profile.h"

namespace dg {

static Backend* g_backends[2] = {nullptr, nullptr};
Backend* make_cpu_backend();  // core/cpu/cpu_elementwise.cpp

void register_backend(Device d, Backend* b) { g_backends[int(d)] = b; }

bool backend_available(Device d) {
  if (d == Device::CPU) return true;
  return g_backends[int(d)] != nullptr;
}

Backend& backend(Device d) {
  if (d == Device::CPU) {
    static Backend* cpu = make_cpu_backend();
    return profile::maybe_wrap(d, *cpu);
  }
  DG_CHECK(g_backends[int(d)], "device ", device_name(d),
           ": this build of deltagrad has no CUDA backend (configure with -Dcuda=enabled on a machine with nvcc)");
  return profile::maybe_wrap(d, *g_backends[int(d)]);
}

Backend& backend_of(const Tensor& t) { return backend(t.device()); }

const char* unary_name(UnaryOp op) {
  static const char* n[] = {"neg", "exp", "log", "tanh", "sqrt", "erf", "gelu", "relu", "abs", "sigmoid",
                            "add_scalar", "mul_scalar", "pow_scalar"};
  return n[int(op)];
}
const char* binary_name(BinaryOp op) {
  static const char* n[] = {"add", "sub", "mul", "div", "max", "min"};
  return n[int(op)];
}

}  // namespace dg

namespace dg {
void Backend::attention(const Tensor&, int64_t, double, const Tensor&, const Tensor&, AttnRows) {
  throw Error(str("attention: the ", name(), " backend has no fused attention kernel"));
}
void Backend::layernorm_backward_from_output(const Tensor& y, const Tensor& w, const Tensor& b, const Tensor& rstd,
                                             const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx,
                                             const Tensor& gw, const Tensor& gb) {
  const Shape rn{rows, n};
  Tensor x = Tensor::empty(rn, y.dtype(), y.device());
  copy(view::reshape(y, rn), x);
  if (b.defined()) binary(BinaryOp::Sub, x, view::expand(b, rn), x);
  if (w.defined()) binary(BinaryOp::Div, x, view::expand(w, rn), x);
  binary(BinaryOp::Div, x, view::expand(view::reshape(rstd, {rows, 1}), rn), x);  // x' = h / rstd
  Tensor mean = Tensor::empty({rows}, y.dtype(), y.device());
  fill(mean, 0.0);
  layernorm_backward(x, gx.defined() ? w : Tensor(), mean, rstd, gy, rows, n, gx, gw, gb);
}
void Backend::attention_backward(const Tensor&, const Tensor&, const Tensor&, int64_t, double, const Tensor&,
                                 AttnRows) {
  throw Error(str("attention backward: the ", name(), " backend has no fused attention kernel"));
}
}  // namespace dg
