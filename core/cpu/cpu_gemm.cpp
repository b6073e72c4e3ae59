// CPU GEMM through Eigen (row-major maps over the caller's buffers, no copies).
// Eigen runs single-threaded; gemm() decides how to use the cores: small products on
// one core, batches one matrix per thread, large products split by rows of C.
#define EIGEN_DONT_PARALLELIZE
#include <Eigen/Core>

#include "core/cpu/cpu_backend.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dg::cpu {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Map = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using CMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

template <class T>
static void gemm_one(const Backend::Gemm& g, const T* a, const T* b, T* c) {
  // Stored shapes: A is [M,K] or [K,M] (ta); B is [K,N] or [N,K] (tb).
  CMap<T> A(a, g.ta ? g.K : g.M, g.ta ? g.M : g.K, Eigen::OuterStride<>(g.lda));
  CMap<T> B(b, g.tb ? g.N : g.K, g.tb ? g.K : g.N, Eigen::OuterStride<>(g.ldb));
  Map<T> C(c, g.M, g.N, Eigen::OuterStride<>(g.ldc));
  const T alpha = T(g.alpha);
  if (g.beta == 0) C.setZero();
  else if (g.beta != 1) C *= T(g.beta);
  if (!g.ta && !g.tb) C.noalias() += alpha * A * B;
  else if (g.ta && !g.tb) C.noalias() += alpha * A.transpose() * B;
  else if (!g.ta && g.tb) C.noalias() += alpha * A * B.transpose();
  else C.noalias() += alpha * A.transpose() * B.transpose();
}

void CpuBackend::gemm(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& C) {
  DG_CHECK(A.dtype() == B.dtype() && A.dtype() == C.dtype(), "gemm: dtypes ", A.desc(), ", ", B.desc(), ", ",
           C.desc());
  float_dispatch(C.dtype(), "gemm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* a = static_cast<const T*>(A.raw());
    const T* b = static_cast<const T*>(B.raw());
    T* c = static_cast<T*>(C.raw());
    const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
#ifdef _OPENMP
    const int nt = omp_get_max_threads();
#else
    const int nt = 1;
#endif
    // Small products run on one core: waking a thread costs more than they take.
    if (nt == 1 || flops * double(g.batch) < 2e6) {
      for (int64_t i = 0; i < g.batch; ++i) gemm_one<T>(g, a + i * g.stride_a, b + i * g.stride_b, c + i * g.stride_c);
      return;
    }
    if (g.batch >= nt) {  // many matrices (attention heads): one per thread
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < g.batch; ++i) gemm_one<T>(g, a + i * g.stride_a, b + i * g.stride_b, c + i * g.stride_c);
      return;
    }
    // Few large matrices: split the rows of C into one contiguous block per thread.
    for (int64_t i = 0; i < g.batch; ++i) {
      const T *ai = a + i * g.stride_a, *bi = b + i * g.stride_b;
      T* ci = c + i * g.stride_c;
#pragma omp parallel num_threads(nt)
      {
#ifdef _OPENMP
        const int t = omp_get_thread_num();
#else
        const int t = 0;
#endif
        const int64_t step = (g.M + nt - 1) / nt, r0 = std::min<int64_t>(g.M, t * step),
                      r1 = std::min<int64_t>(g.M, r0 + step);
        if (r1 > r0) {
          Gemm part = g;
          part.M = r1 - r0;
          // rows of op(A): stored rows (no transpose) or stored columns (transposed)
          const T* ap = g.ta ? ai + r0 : ai + r0 * g.lda;
          gemm_one<T>(part, ap, bi, ci + r0 * g.ldc);
        }
      }
    }
  });
}

}  // namespace dg::cpu
