// The CPU backend: OpenMP loops over the machine's cores; GEMMs by oneDNN, OpenBLAS or Eigen,
// whichever gemm_select.h chooses for this machine. Each method's contract is in
// core/backend.h; the definitions are split by theme:
//   cpu_elementwise.cpp  copies, fills, binary ops with broadcasting, reductions
//   cpu_unary.cpp        unary ops and their derivatives
//   cpu_memory.cpp       the caching allocator
//   cpu_gemm.cpp         the GEMM's split over the cores (gemm_kernel.h: one product)
//   gemm_libs.cpp/.h     the candidate libraries as one-thread products
//   gemm_select.cpp/.h   which library: forced, cached or calibrated
//   openblas_loader.cpp  OpenBLAS, opened with dlopen on first use
//   blas_buffers.cpp     OpenBLAS's work buffers, mapped up front
//   onednn_bf16.cpp      bf16 x bf16 -> f32 products through oneDNN's matmul
//   cpu_attention.cpp    fused multi-head attention
//   cpu_nn.cpp           softmax, LayerNorm, fused cross-entropy
//   cpu_misc.cpp         random fills, patch extraction, row gather/scatter, fused AdamW
//   cpu_info.cpp/.h      cpuid: what the CPU is and which instruction sets it enables
//   strided.h            walking strided N-d operands
#pragma once
#include <type_traits>

#include "core/backend.h"

namespace dg::cpu {

struct CpuBackend final : Backend {
  const char* name() const override { return "cpu"; }
  std::string kernel_choice() override;  // "gemm <overall>;<forward>,<input grad>,<weight grad>,<heads>"
  bool set_kernel_choice(const std::string& choice) override;
  void* alloc(size_t nbytes) override;
  void free(void* p, size_t nbytes) override;
  void copy(const Tensor& src, const Tensor& dst) override;
  void fill(const Tensor& dst, double v) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) override;
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& gx,
                      double alpha) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out) override;
  void argmax(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out) override;
  void gemm(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& C) override;
  // oneDNN's matmul with the epilogue where oneDNN runs this kind of product (onednn_matmul.h)
  bool gemm_bias(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) override;
  bool gemm_bias_gelu(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) override;
  void softmax(const Tensor& x, int64_t rows, int64_t n, bool log, const Tensor& out) override;
  void softmax_backward(const Tensor& y, const Tensor& gy, int64_t rows, int64_t n, bool log,
                        const Tensor& gx) override;
  void layernorm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t rows, int64_t n, double eps,
                 const Tensor& y, const Tensor& mean, const Tensor& rstd) override;
  void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                          const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx, const Tensor& gw,
                          const Tensor& gb) override;
  void layernorm_backward_from_output(const Tensor& y, const Tensor& w, const Tensor& b, const Tensor& rstd,
                                      const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx, const Tensor& gw,
                                      const Tensor& gb) override;
  void cross_entropy(const Tensor& logits, const Tensor& labels, double smoothing, const Tensor& loss,
                     const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                              const Tensor& gloss, double smoothing, const Tensor& glogits) override;
  void random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi) override;
  void random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double std) override;
  void im2col(const Tensor& x, int64_t p, const Tensor& cols) override;
  void col2im(const Tensor& cols, int64_t p, const Tensor& x) override;
  void index_select(const Tensor& x, const Tensor& idx, const Tensor& out) override;
  void index_add(const Tensor& gout, const Tensor& idx, const Tensor& gx) override;
  void adamw(const AdamW& h, const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
             const Tensor& mask) override;
  double sum_squares(const Tensor& x) override;
  bool fused_attention_supported(const Tensor&, int64_t) const override { return true; }
  void attention(const Tensor& qkv, int64_t heads, double scale, const Tensor& out, const Tensor& lse,
                 AttnRows rows = {}) override;
  void attention_backward(const Tensor& qkv, const Tensor& lse, const Tensor& gout, int64_t heads, double scale,
                          const Tensor& gqkv, AttnRows rows = {}) override;
  // The caching allocator (cpu_memory.cpp): bytes held in free lists, and giving them back.
  static size_t cached_bytes();
  static void release_cached_memory();
  // Tensor bytes handed out now (as requested, before rounding), and the most at any time since
  // reset_peak(): what `deltagrad cost` measures a step's peak memory with.
  static size_t bytes_in_use();
  static size_t peak_bytes();
  static void reset_peak();
};

// Call f with a null pointer of the tensor's float type: dispatch<float> or <double>.
template <class F>
void float_dispatch(DType t, const char* op, F&& f) {
  if (t == DType::F32) return f(static_cast<float*>(nullptr));
  if (t == DType::F64) return f(static_cast<double*>(nullptr));
  throw Error(str(op, ": expected f32 or f64, got ", dtype_name(t)));
}

// `DG_FLOAT_T(dtype, "op") body });` runs body with T = float or double: float_dispatch with
// the lambda's opening written once, for the kernels whose whole body is one dispatch.
#define DG_FLOAT_T(t, op)                  \
  float_dispatch(t, op, [&](auto* tag) { \
    using T = std::remove_pointer_t<decltype(tag)>;

}  // namespace dg::cpu
