// The CUDA backend: cuBLAS GEMMs and hand-written kernels for the rest of core/backend.h.
// One stream; a caching allocator; every CUDA and cuBLAS call checked and turned into a
// dg::Error naming the call. Kernels are split by theme like core/cpu/.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <initializer_list>
#include <utility>
#include <vector>

#include "core/backend.h"

namespace dg::cuda {

#define DG_CUDA(call)                                                                                   \
  do {                                                                                                  \
    cudaError_t e_ = (call);                                                                            \
    if (e_ != cudaSuccess) {                                                                            \
      (void)cudaGetLastError(); /* clear it, or the next launch check would report it again */          \
      throw ::dg::Error(::dg::str("CUDA error in ", #call, ": ", cudaGetErrorString(e_)));             \
    }                                                                                                   \
  } while (0)
#define DG_CUBLAS(call)                                                                              \
  do {                                                                                               \
    cublasStatus_t s_ = (call);                                                                      \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      throw ::dg::Error(::dg::str("cuBLAS error in ", #call, ": ", cublasGetStatusString(s_)));     \
  } while (0)
#define DG_LAUNCH_CHECK() DG_CUDA(cudaGetLastError())

cudaStream_t stream();
cublasHandle_t cublas();
bool tf32_enabled();

// Up to 8 dims of shape and element strides, passed by value to kernels.
struct Strided {
  int nd;
  long long shape[8], stride[8];
};
// t's strides broadcast to `shape`. strided_joint does it for several tensors at once, the dims
// coalesced jointly (adjacent dims merged where every tensor steps through them as one run, size-1
// dims dropped): fewer divisions per element, and contiguous tensors of any rank fit.
Strided strided_of(const Tensor& t, const Shape& shape);
void strided_joint(const Shape& shape, std::initializer_list<std::pair<const Tensor*, Strided*>> ts);

inline int blocks_for(long long n, int threads = 256) {
  long long b = (n + threads - 1) / threads;
  return int(b < 65535LL * 32 ? (b < 1 ? 1 : b) : 65535LL * 32);
}

struct CudaBackend final : Backend {
  const char* name() const override { return "cuda"; }
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
  // cuda_gemm_lt.cu: cuBLASLt's bias epilogue (opt-in, cuda::set_lt_epilogue)
  bool gemm_bias(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) override;
  // cuda_attention.cu (opt-in with DG_CUDA_FUSED_ATTENTION=1 until it has run on a GPU)
  bool fused_attention_supported(const Tensor& qkv, int64_t heads) const override;
  void attention(const Tensor& qkv, int64_t heads, double scale, const Tensor& out, const Tensor& lse,
                 AttnRows rows = {}) override;
  void attention_backward(const Tensor& qkv, const Tensor& lse, const Tensor& gout, int64_t heads, double scale,
                          const Tensor& gqkv, AttnRows rows = {}) override;
  void softmax(const Tensor& x, int64_t rows, int64_t n, bool log, const Tensor& out) override;
  void softmax_backward(const Tensor& y, const Tensor& gy, int64_t rows, int64_t n, bool log,
                        const Tensor& gx) override;
  void layernorm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t rows, int64_t n, double eps,
                 const Tensor& y, const Tensor& mean, const Tensor& rstd) override;
  void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
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
  void synchronize() override;
};

// f32 / f64 dispatch for device code
template <class F>
void float_dispatch(DType t, const char* op, F&& f) {
  if (t == DType::F32) return f(static_cast<float*>(nullptr));
  if (t == DType::F64) return f(static_cast<double*>(nullptr));
  throw Error(str(op, " (cuda): expected f32 or f64, got ", dtype_name(t)));
}

}  // namespace dg::cuda
