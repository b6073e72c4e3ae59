// CPU fused multi-head attention, forward and backward, one (batch, head) pair at a time.
// For each pair the N x N score tile lives in a per-thread scratch buffer (197 x 197 floats
// = 152 KiB for a 224/16 ViT: it stays in L2), so the probability matrix never goes to
// memory and is not kept for backward: backward recomputes it from q, k and the saved
// log-sum-exp. Compared with matmul + softmax + matmul this removes the [B, H, N, N]
// tensor (the largest saved activation of a ViT block), the q/k/v and output permute
// copies, and two passes over the scores.
//   forward:  S = scale q k^T,  P = softmax(S) (lse = rowwise log-sum-exp),  o = P v
//   backward: P = exp(scale q k^T - lse),  dv = P^T do,  dP = do v^T,
//             dS = P * (dP - rowsum(P * dP)),  dq = scale dS k,  dk = scale dS^T q
// (rowsum(P * dP) equals FlashAttention's rowsum(do * o), so o need not be saved either.)
#define EIGEN_DONT_PARALLELIZE
#include <Eigen/Core>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_select.h"

namespace dg::cpu {

namespace {
template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Dims {
  int64_t B, N, H, hd, D;  // D = H * hd
};
Dims dims_of(const Tensor& qkv, int64_t heads) {
  DG_CHECK(qkv.dim() == 3 && qkv.size(2) % (3 * heads) == 0, "attention: qkv ", qkv.desc(),
           " is not [B, N, 3 * heads * head_dim] for ", heads, " heads");
  const int64_t D = qkv.size(2) / 3;
  return {qkv.size(0), qkv.size(1), heads, D / heads, D};
}

// P <- softmax(S) row by row; lse[i] = log sum_j exp(S[i, j]).
template <class T>
void softmax_rows(Mat<T>& S, T* lse) {
  for (int64_t i = 0; i < S.rows(); ++i) {
    auto row = S.row(i).array();
    const T m = row.maxCoeff();
    row = (row - m).exp();
    const T l = row.sum();
    row /= l;
    lse[i] = m + std::log(l);
  }
}
}  // namespace

template <class T>
static void attention_fwd(const Dims& d, double scale, const T* qkv, T* out, T* lse) {
  const int64_t pairs = d.B * d.H;
#pragma omp parallel
  {
    Mat<T> S(d.N, d.N);  // per-thread scratch
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = p / d.H, h = p % d.H;
      const T* base = qkv + b * d.N * 3 * d.D + h * d.hd;
      const T *q = base, *k = base + d.D, *v = base + 2 * d.D;  // [N, hd] each, row stride 3D
      T* o = out + b * d.N * d.D + h * d.hd;                          // [N, hd], row stride D
      gemm_serial<T>(false, true, d.N, d.N, d.hd, T(scale), q, 3 * d.D, k, 3 * d.D, T(0), S.data(), d.N);
      softmax_rows(S, lse + p * d.N);
      gemm_serial<T>(false, false, d.N, d.hd, d.N, T(1), S.data(), d.N, v, 3 * d.D, T(0), o, d.D);
    }
  }
}

template <class T>
static void attention_bwd(const Dims& d, double scale, const T* qkv, const T* lse, const T* gout, T* gqkv) {
  const int64_t pairs = d.B * d.H;
#pragma omp parallel
  {
    Mat<T> P(d.N, d.N), dP(d.N, d.N);  // per-thread scratch
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = p / d.H, h = p % d.H;
      const T* base = qkv + b * d.N * 3 * d.D + h * d.hd;
      T* gbase = gqkv + b * d.N * 3 * d.D + h * d.hd;
      const int64_t s3 = 3 * d.D;  // row stride of q, k, v and their gradients
      const T *q = base, *k = base + d.D, *v = base + 2 * d.D;
      T *gq = gbase, *gk = gbase + d.D, *gv = gbase + 2 * d.D;
      const T* go = gout + b * d.N * d.D + h * d.hd;  // [N, hd], row stride D
      const T* l = lse + p * d.N;
      gemm_serial<T>(false, true, d.N, d.N, d.hd, T(scale), q, s3, k, s3, T(0), P.data(), d.N);
      for (int64_t i = 0; i < d.N; ++i) P.row(i).array() = (P.row(i).array() - l[i]).exp();
      gemm_serial<T>(true, false, d.N, d.hd, d.N, T(1), P.data(), d.N, go, d.D, T(0), gv, s3);   // dv = P^T do
      gemm_serial<T>(false, true, d.N, d.N, d.hd, T(1), go, d.D, v, s3, T(0), dP.data(), d.N);  // dP = do v^T
      for (int64_t i = 0; i < d.N; ++i) {
        const T di = (P.row(i).array() * dP.row(i).array()).sum();
        dP.row(i).array() = P.row(i).array() * (dP.row(i).array() - di);  // dS
      }
      gemm_serial<T>(false, false, d.N, d.hd, d.N, T(scale), dP.data(), d.N, k, s3, T(0), gq, s3);  // dq = s dS k
      gemm_serial<T>(true, false, d.N, d.hd, d.N, T(scale), dP.data(), d.N, q, s3, T(0), gk, s3);   // dk = s dS^T q
    }
  }
}

void CpuBackend::attention(const Tensor& qkv, int64_t heads, double scale, const Tensor& out, const Tensor& lse) {
  const Dims d = dims_of(qkv, heads);
  current_gemm_lib();  // settle the GEMM choice here, not inside the parallel region
  prepare_gemm_threads(qkv.dtype() == DType::F64);  // the pairs below run gemm_serial on every thread at once
  KernelTimer timer(true);
  float_dispatch(qkv.dtype(), "attention", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    attention_fwd<T>(d, scale, qkv.data<T>(), out.data<T>(), lse.data<T>());
  });
}

void CpuBackend::attention_backward(const Tensor& qkv, const Tensor& lse, const Tensor& gout, int64_t heads,
                                    double scale, const Tensor& gqkv) {
  const Dims d = dims_of(qkv, heads);
  current_gemm_lib();
  prepare_gemm_threads(qkv.dtype() == DType::F64);  // the pairs below run gemm_serial on every thread at once
  KernelTimer timer(true);
  float_dispatch(qkv.dtype(), "attention backward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    attention_bwd<T>(d, scale, qkv.data<T>(), lse.data<T>(), gout.data<T>(), gqkv.data<T>());
  });
}

}  // namespace dg::cpu
