// The kernel contract: everything the ops need from a device. The CPU backend is in
// core/cpu/; cuda/ implements the same interface for the GPU and registers itself.
// Conventions: outputs are preallocated by the caller on the same device; unless a
// parameter says "any strides", tensors are contiguous; floating kernels take F32 or F64.
#pragma once
#include <string>
#include <cstdint>

#include "core/tensor.h"

namespace dg {

enum class UnaryOp : uint8_t {
  Neg, Exp, Log, Tanh, Sqrt, Erf, Gelu, Relu, Abs, Sigmoid,
  AddScalar,  // x + alpha
  MulScalar,  // x * alpha
  PowScalar,  // x ^ alpha
};
enum class BinaryOp : uint8_t { Add, Sub, Mul, Div, Max, Min };
enum class ReduceOp : uint8_t { Sum, Max };

// Attention's query rows: all N, or all but the rows [skip_begin, skip_end), whose queries no
// one reads (Backend::attention). Output row i is the query of input row query_row(i).
struct AttnRows {
  int64_t skip_begin = 0, skip_end = 0;
  int64_t skipped() const { return skip_end - skip_begin; }
  int64_t query_row(int64_t i) const { return i < skip_begin ? i : i + skipped(); }
};
const char* unary_name(UnaryOp);
const char* binary_name(BinaryOp);

struct Backend {
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Which of several equivalent kernels this backend chose where they round differently (the
  // CPU: its GEMM library per kind of product, measured on each machine and process unless
  // cached). A training checkpoint records it and a resume restores it, so the resumed run is
  // bit-identical to the uninterrupted one. "" = nothing chosen. set_kernel_choice is false
  // (and changes nothing) when this build cannot make that choice.
  virtual std::string kernel_choice() { return ""; }
  virtual bool set_kernel_choice(const std::string& choice) { return choice.empty(); }

  // memory
  virtual void* alloc(size_t nbytes) = 0;
  virtual void free(void* p, size_t nbytes) = 0;
  // dst <- src, same shape, any strides on both; dtypes may differ (converted);
  // one of the two may live on the CPU (host<->device copy).
  virtual void copy(const Tensor& src, const Tensor& dst) = 0;
  virtual void fill(const Tensor& dst, double v) = 0;  // dst any strides

  // elementwise; inputs any strides (broadcast = stride 0) with out's shape, out contiguous
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) = 0;
  // gx = gy * d op(x)/dx; y = op(x) is passed for ops whose derivative reads it (exp, tanh...)
  virtual void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy,
                              const Tensor& gx, double alpha) = 0;
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out[i] = cond[i] ? a[i] : b[i]  (for max/min backward and masks); all same shape, contiguous
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;

  // x contiguous seen as [outer, n, inner] -> out [outer, inner]
  virtual void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t n, int64_t inner,
                      const Tensor& out) = 0;
  // index of the max over n for each (outer, inner): I64 out [outer, inner]
  virtual void argmax(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out) = 0;

  // Fused multi-head attention over packed qkv [B, N, 3*H*hd] (timm's layout: q | k | v,
  // each head-major) -> out [B, N, H*hd], lse [B, H, N] = log-sum-exp of each score row.
  // Backward recomputes the scores from qkv and lse (no probability matrix is stored) and
  // writes gqkv [B, N, 3*H*hd]. Optional: where fused_attention_supported() is false (a
  // backend without the kernel, or a shape it does not cover) the op composes matmul + softmax.
  // `rows` skips the query rows [skip_begin, skip_end) (they serve as keys and values only):
  // out and lse then hold the N - skipped query rows in order, and gqkv's q columns of the
  // skipped rows are zero (VPT-deep: the prompt rows that the next block replaces).
  virtual bool fused_attention_supported(const Tensor& qkv, int64_t heads) const { return false; }
  virtual void attention(const Tensor& qkv, int64_t heads, double scale, const Tensor& out, const Tensor& lse,
                         AttnRows rows = {});
  virtual void attention_backward(const Tensor& qkv, const Tensor& lse, const Tensor& gout, int64_t heads,
                                  double scale, const Tensor& gqkv, AttnRows rows = {});

  // C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b] for b < batch, row-major.
  // op(A) is [M,K], op(B) is [K,N], C is [M,N] contiguous per batch.
  // A's stored matrix is [M,K] (or [K,M] if ta) with leading dimension lda;
  // batch strides in elements (0 broadcasts one matrix over the batch).
  // dtypes: A, B, C all F32 or all F64; or mixed precision: A and B BF16, C F32 (products of
  // bf16 values accumulated in f32, as a tensor-core bf16 GEMM does).
  struct Gemm {
    bool ta = false, tb = false;
    int64_t batch = 1, M = 0, N = 0, K = 0;
    int64_t lda = 0, ldb = 0, ldc = 0;
    int64_t stride_a = 0, stride_b = 0, stride_c = 0;
    double alpha = 1, beta = 0;
  };
  virtual void gemm(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& C) = 0;
  // Optional: C = alpha * op(A) @ op(B) + bias, bias [N] (f32, contiguous) added to every row, in
  // the GEMM's epilogue (batch 1; g.beta is not used; cuBLASLt opt-in, the CPU's oneDNN matmul
  // where oneDNN runs the forward products). Returns false where the backend has no such
  // path or not for these operands; the caller then writes the bias into C and runs gemm() with
  // beta = 1, which is what it costs without the epilogue.
  virtual bool gemm_bias(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) {
    return false;
  }
  // Optional: C = gelu(alpha * op(A) @ op(B) + bias) with the exact (erf) GELU in the epilogue,
  // bias as in gemm_bias or undefined (none). False where not done; the caller runs its own path.
  // No op calls it yet: only linear_gelu's recompute forward could (the other paths save u), its
  // result differs from GEMM + our GELU pass in the last bits (recompute would no longer give
  // the same gradients as without), and gemm_bench on a Zen 3 did not show it faster on fc1.
  virtual bool gemm_bias_gelu(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) {
    return false;
  }

  // rows of length n: out = softmax(x) or log_softmax(x)
  virtual void softmax(const Tensor& x, int64_t rows, int64_t n, bool log, const Tensor& out) = 0;
  virtual void softmax_backward(const Tensor& y, const Tensor& gy, int64_t rows, int64_t n, bool log,
                                const Tensor& gx) = 0;

  // LayerNorm over the last n of x [rows, n]; mean, rstd [rows] are saved for backward.
  // w, b may be undefined (no affine). gw, gb accumulate (+=) when defined; gx may be undefined.
  virtual void layernorm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t rows, int64_t n,
                         double eps, const Tensor& y, const Tensor& mean, const Tensor& rstd) = 0;
  virtual void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                  const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx,
                                  const Tensor& gw, const Tensor& gb) = 0;
  // The same backward where the op kept its output y = h * w + b instead of x (the memory
  // variant in autograd/ops/layer_norm.cpp): the normalised input is rebuilt as h = (y - b) / w
  // (w, b may be undefined). w is also dh's factor when gx is defined. The default rebuilds
  // x' = h / rstd with mean 0 through binary() and runs layernorm_backward (three extra passes
  // over [rows, n]); the CPU does it inside its one backward pass.
  virtual void layernorm_backward_from_output(const Tensor& y, const Tensor& w, const Tensor& b, const Tensor& rstd,
                                              const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx,
                                              const Tensor& gw, const Tensor& gb);

  // Fused log-softmax + NLL with label smoothing. logits [rows, C], labels I64 [rows].
  // loss [rows] per row; lse [rows] saved for backward. Label < 0 means "ignore" (loss 0).
  virtual void cross_entropy(const Tensor& logits, const Tensor& labels, double smoothing,
                             const Tensor& loss, const Tensor& lse) = 0;
  // glogits = (softmax - target) * gloss[row]
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                                      const Tensor& gloss, double smoothing, const Tensor& glogits) = 0;

  // Counter-based random numbers: element i of the stream (seed, offset) depends only on
  // (seed, offset + i), so CPU and GPU produce identical values.
  virtual void random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi) = 0;
  virtual void random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double std) = 0;

  // Patch extraction for a stride = kernel conv: x [B,C,H,W] -> cols [B, (H/p)*(W/p), C*p*p]
  // (column order c, ky, kx as PyTorch's conv weight flattens); col2im is its adjoint (+=).
  virtual void im2col(const Tensor& x, int64_t p, const Tensor& cols) = 0;
  virtual void col2im(const Tensor& cols, int64_t p, const Tensor& x) = 0;

  // out[i, :] = x[idx[i], :] for x [n, d]; index_add: gx[idx[i], :] += gout[i, :]
  virtual void index_select(const Tensor& x, const Tensor& idx, const Tensor& out) = 0;
  virtual void index_add(const Tensor& gout, const Tensor& idx, const Tensor& gx) = 0;

  // Fused AdamW on one tensor (all contiguous, same numel). mask (optional, same dtype) is 0/1:
  // where 0, nothing changes (no update, no moment update, no decay).
  struct AdamW {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step;  // 1-based, for bias correction
  };
  virtual void adamw(const AdamW& h, const Tensor& param, const Tensor& grad, const Tensor& m,
                     const Tensor& v, const Tensor& mask) = 0;
  // sum of squares of all elements, accumulated in double (for clipping by global norm)
  virtual double sum_squares(const Tensor& x) = 0;
  virtual void synchronize() {}
};

Backend& backend(Device d);  // throws if the device's backend is not built in
Backend& backend_of(const Tensor& t);
void register_backend(Device d, Backend* b);  // called by cuda/ at static init
bool backend_available(Device d);

}  // namespace dg
