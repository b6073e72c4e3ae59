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
// With skipped query rows (AttnRows) S and P have only the kept rows: the skipped rows still
// enter every product as keys and values, and their dq is zero.
#define EIGEN_DONT_PARALLELIZE
#include <Eigen/Core>
#include <algorithm>
#include <array>
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

// The query rows as (at most) two contiguous runs: output rows [out0, out0 + len) are the
// queries of input rows [in0, in0 + len). A run of length 0 is skipped.
struct QueryRun {
  int64_t out0, in0, len;
};
std::array<QueryRun, 2> query_runs(int64_t N, AttnRows r) {
  return {QueryRun{0, 0, r.skip_begin}, QueryRun{r.skip_begin, r.skip_end, N - r.skip_end}};
}
}  // namespace

template <class T>
static void attention_fwd(const Dims& d, AttnRows rows, double scale, const T* qkv, T* out, T* lse) {
  const int64_t pairs = d.B * d.H, Nq = d.N - rows.skipped();
  const auto runs = query_runs(d.N, rows);
#pragma omp parallel
  {
    Mat<T> S(Nq, d.N);  // per-thread scratch
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = p / d.H, h = p % d.H;
      const T* base = qkv + b * d.N * 3 * d.D + h * d.hd;
      const T *q = base, *k = base + d.D, *v = base + 2 * d.D;  // [N, hd] each, row stride 3D
      T* o = out + b * Nq * d.D + h * d.hd;                           // [Nq, hd], row stride D
      for (const QueryRun& r : runs)
        if (r.len > 0)
          gemm_serial<T>(false, true, r.len, d.N, d.hd, T(scale), q + r.in0 * 3 * d.D, 3 * d.D, k, 3 * d.D, T(0),
                         S.data() + r.out0 * d.N, d.N);
      softmax_rows(S, lse + p * Nq);
      gemm_serial<T>(false, false, Nq, d.hd, d.N, T(1), S.data(), d.N, v, 3 * d.D, T(0), o, d.D);
    }
  }
}

template <class T>
static void attention_bwd(const Dims& d, AttnRows rows, double scale, const T* qkv, const T* lse, const T* gout,
                          T* gqkv) {
  const int64_t pairs = d.B * d.H, Nq = d.N - rows.skipped();
  const auto runs = query_runs(d.N, rows);
#pragma omp parallel
  {
    Mat<T> P(Nq, d.N), dP(Nq, d.N);  // per-thread scratch
#pragma omp for schedule(static)
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t b = p / d.H, h = p % d.H;
      const T* base = qkv + b * d.N * 3 * d.D + h * d.hd;
      T* gbase = gqkv + b * d.N * 3 * d.D + h * d.hd;
      const int64_t s3 = 3 * d.D;  // row stride of q, k, v and their gradients
      const T *q = base, *k = base + d.D, *v = base + 2 * d.D;
      T *gq = gbase, *gk = gbase + d.D, *gv = gbase + 2 * d.D;
      const T* go = gout + b * Nq * d.D + h * d.hd;  // [Nq, hd], row stride D
      const T* l = lse + p * Nq;
      for (const QueryRun& r : runs)
        if (r.len > 0)
          gemm_serial<T>(false, true, r.len, d.N, d.hd, T(scale), q + r.in0 * s3, s3, k, s3, T(0),
                         P.data() + r.out0 * d.N, d.N);
      for (int64_t i = 0; i < Nq; ++i) P.row(i).array() = (P.row(i).array() - l[i]).exp();
      gemm_serial<T>(true, false, d.N, d.hd, Nq, T(1), P.data(), d.N, go, d.D, T(0), gv, s3);   // dv = P^T do
      gemm_serial<T>(false, true, Nq, d.N, d.hd, T(1), go, d.D, v, s3, T(0), dP.data(), d.N);  // dP = do v^T
      for (int64_t i = 0; i < Nq; ++i) {
        const T di = (P.row(i).array() * dP.row(i).array()).sum();
        dP.row(i).array() = P.row(i).array() * (dP.row(i).array() - di);  // dS
      }
      T beta = T(0);  // dk sums over both runs of queries
      for (const QueryRun& r : runs) {
        if (r.len == 0) continue;
        const T* dS = dP.data() + r.out0 * d.N;
        gemm_serial<T>(false, false, r.len, d.hd, d.N, T(scale), dS, d.N, k, s3, T(0), gq + r.in0 * s3, s3);  // dq = s dS k
        gemm_serial<T>(true, false, d.N, d.hd, r.len, T(scale), dS, d.N, q + r.in0 * s3, s3, beta, gk, s3);  // dk = s dS^T q
        beta = T(1);
      }
      for (int64_t i = rows.skip_begin; i < rows.skip_end; ++i) std::fill(gq + i * s3, gq + i * s3 + d.hd, T(0));
    }
  }
}

void CpuBackend::attention(const Tensor& qkv, int64_t heads, double scale, const Tensor& out, const Tensor& lse,
                           AttnRows rows) {
  const Dims d = dims_of(qkv, heads);
  current_gemm_lib();  // settle the GEMM choice here, not inside the parallel region
  prepare_gemm_threads(qkv.dtype() == DType::F64);  // the pairs below run gemm_serial on every thread at once
  KernelTimer timer(true);
  float_dispatch(qkv.dtype(), "attention", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    attention_fwd<T>(d, rows, scale, qkv.data<T>(), out.data<T>(), lse.data<T>());
  });
}

void CpuBackend::attention_backward(const Tensor& qkv, const Tensor& lse, const Tensor& gout, int64_t heads,
                                    double scale, const Tensor& gqkv, AttnRows rows) {
  const Dims d = dims_of(qkv, heads);
  current_gemm_lib();
  prepare_gemm_threads(qkv.dtype() == DType::F64);  // the pairs below run gemm_serial on every thread at once
  KernelTimer timer(true);
  float_dispatch(qkv.dtype(), "attention backward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    attention_bwd<T>(d, rows, scale, qkv.data<T>(), lse.data<T>(), gout.data<T>(), gqkv.data<T>());
  });
}

}  // namespace dg::cpu
