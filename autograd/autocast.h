// Mixed precision: deltagrad's autocast. Inside AutocastGuard(DType::BF16), f32 work runs as:
//   * GEMMs (linear, linear_gelu, matmul, and so attention's products): both operands rounded to
//     bf16, products accumulated in f32 into an f32 result. On the GPU that is cuBLAS's bf16
//     tensor-core GEMM; the CPU widens the rounded operands back and runs its f32 GEMM, which
//     gives the same products (a bf16 x bf16 product is exact in f32).
//   * Activations that ops save for backward (Record::save_activation) are kept in bf16: half
//     the bytes. Parameters and small statistics (LayerNorm mean/rstd, log-sum-exp) stay f32.
//   * Everything else stays f32: elementwise ops, LayerNorm, softmax, the loss, every gradient,
//     the master weights, delta parameters and optimizer state.
// One bf16 copy is made per data and version (to_lowp caches it while anyone holds it or, for
// all but parameters, while its source lives), so a LayerNorm output saved for backward and the
// GEMM operand it feeds are one buffer, and a gradient that several backward GEMMs read is
// converted once.
// f64 tensors are left alone (the gradient checks run in f64 with or without a guard).
#pragma once
#include "core/tensor.h"

namespace dg {

// The low-precision dtype in effect: BF16 inside a guard, F32 (meaning off) outside.
DType autocast_dtype();
inline bool autocast_on() { return autocast_dtype() != DType::F32; }

// Scoped and nestable: AutocastGuard g(DType::F32) turns it off inside an autocast region.
class AutocastGuard {
 public:
  explicit AutocastGuard(DType lowp = DType::BF16);  // BF16 or F32; others are refused
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DType prev_;
};

// "f32" / "bf16" (run configs, the CLI) -> the guard's dtype; `what` names the option in errors.
DType parse_precision(const std::string& s, const std::string& what);

// A contiguous bf16 copy of an f32 tensor (t itself if already bf16). Cached by the data it reads
// (storage, first element, layout; any contiguous view of the same elements alike) and the
// storage's version. The copy lives while anyone holds it (a saved tensor, a caller) and, unless t
// is a parameter, while t's storage lives (so the separate backward ops that read one gradient
// convert it once).
Tensor to_lowp(const Tensor& t);

// GEMM operands: true if they are to be multiplied in bf16 (autocast is on and they are f32,
// or one of them already is bf16: a tensor autocast saved, read again in backward).
bool lowp_gemm(const Tensor& a, const Tensor& b);

}  // namespace dg
