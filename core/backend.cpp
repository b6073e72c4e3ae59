#include "core/backend.h"

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
    return *cpu;
  }
  DG_CHECK(g_backends[int(d)], "device ", device_name(d),
           ": this build of deltagrad has no CUDA backend (configure with -Dcuda=enabled on a machine with nvcc)");
  return *g_backends[int(d)];
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
void Backend::attention(const Tensor&, int64_t, double, const Tensor&, const Tensor&) {
  throw Error(str("attention: the ", name(), " backend has no fused attention kernel"));
}
void Backend::attention_backward(const Tensor&, const Tensor&, const Tensor&, int64_t, double, const Tensor&) {
  throw Error(str("attention backward: the ", name(), " backend has no fused attention kernel"));
}
}  // namespace dg
