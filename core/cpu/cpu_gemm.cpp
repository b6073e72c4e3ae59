// CPU GEMM. gemm_serial() is one product on the calling thread (OpenBLAS with one thread
// where the build has it, else Eigen over row-major maps of the caller's buffers; no copies).
// CpuBackend::gemm() decides how to use the cores: small products on one core, batches one
// matrix per thread, large products split by rows of C. The libraries' own threading stays
// off: Eigen's OpenMP made a small ViT step 40x slower on 2 cores (spin-waiting on tiny
// products), and one split for both libraries keeps results independent of the library's
// thread heuristics.
#define EIGEN_DONT_PARALLELIZE
#include <Eigen/Core>
#include <atomic>
#include <climits>
#include <cstdlib>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/gemm_kernel.h"

#ifdef DG_HAVE_OPENBLAS
#include <cblas.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace dg::cpu {

namespace {
template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Map = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using CMap = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;

enum class Lib { Eigen, OpenBLAS };

Lib initial_library() {
#ifdef DG_HAVE_OPENBLAS
  // OpenBLAS runs on the thread that calls it (also when chosen later by set_gemm_library):
  // its own pool would fight our OpenMP threads.
  openblas_set_num_threads(1);
#endif
  const char* env = std::getenv("DG_CPU_GEMM");
  if (env && std::string(env) == "eigen") return Lib::Eigen;
  return have_openblas() ? Lib::OpenBLAS : Lib::Eigen;
}

std::atomic<Lib>& library() {
  static std::atomic<Lib> lib{initial_library()};
  return lib;
}

template <class T>
void gemm_eigen(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda, const T* b,
                int64_t ldb, T beta, T* c, int64_t ldc) {
  CMap<T> A(a, ta ? K : M, ta ? M : K, Eigen::OuterStride<>(lda));
  CMap<T> B(b, tb ? N : K, tb ? K : N, Eigen::OuterStride<>(ldb));
  Map<T> C(c, M, N, Eigen::OuterStride<>(ldc));
  if (beta == 0) C.setZero();
  else if (beta != 1) C *= beta;
  if (K == 0) return;
  if (!ta && !tb) C.noalias() += alpha * A * B;
  else if (ta && !tb) C.noalias() += alpha * A.transpose() * B;
  else if (!ta && tb) C.noalias() += alpha * A * B.transpose();
  else C.noalias() += alpha * A.transpose() * B.transpose();
}

#ifdef DG_HAVE_OPENBLAS
void blas(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, double alpha, const double* a, int lda,
          const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}
#endif
}  // namespace

template <class T>
void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc) {
  if (M == 0 || N == 0) return;
#ifdef DG_HAVE_OPENBLAS
  // cblas takes int sizes; it also wants ld >= the stored row length even for an empty K.
  const bool fits = std::max({M, N, K, lda, ldb, ldc}) <= INT_MAX && K > 0;
  if (fits && library().load(std::memory_order_relaxed) == Lib::OpenBLAS) {
    blas(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M), int(N), int(K), alpha, a, int(lda),
         b, int(ldb), beta, c, int(ldc));
    return;
  }
#endif
  gemm_eigen<T>(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}
template void gemm_serial<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t);
template void gemm_serial<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t);

void prepare_gemm_threads() {
  if (library().load(std::memory_order_relaxed) != Lib::OpenBLAS) return;
#ifdef _OPENMP
  reserve_openblas_buffers(omp_get_max_threads());
#else
  reserve_openblas_buffers(1);
#endif
}

const char* gemm_library() { return library().load() == Lib::OpenBLAS ? "openblas" : "eigen"; }

bool have_openblas() {
#ifdef DG_HAVE_OPENBLAS
  return true;
#else
  return false;
#endif
}

void set_gemm_library(const std::string& name) {
  library();  // settle the start-up choice (and OpenBLAS's thread count) first
  if (name == "eigen") return library().store(Lib::Eigen);
  DG_CHECK(name == "openblas", "CPU GEMM library '", name, "': expected 'eigen' or 'openblas'");
  DG_CHECK(have_openblas(), "CPU GEMM library 'openblas': this build does not link OpenBLAS (libopenblas-dev)");
  library().store(Lib::OpenBLAS);
}

// Elements of a stored operand that a GEMM reads: batches of rows x cols with leading dim ld.
static int64_t footprint(int64_t batch, int64_t stride, int64_t rows, int64_t cols, int64_t ld) {
  if (rows == 0 || cols == 0) return 0;
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

// bf16 operand -> f32 copy of the span the GEMM reads (same layout, so g's strides still apply).
// bf16 -> f32 is exact and a product of two bf16 values is exact in f32: the f32 GEMM on the
// widened operands is the bf16 GEMM with f32 accumulation. No CPU here multiplies bf16 natively.
static Tensor widen_operand(const Tensor& t, int64_t n) {
  Tensor w = Tensor::empty({n}, DType::F32, Device::CPU);
  const uint16_t* s = static_cast<const uint16_t*>(t.raw());
  float* d = w.data<float>();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  return w;
}

void CpuBackend::gemm(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& C) {
  if (A.dtype() == DType::BF16 && B.dtype() == DType::BF16 && C.dtype() == DType::F32) {
    if (g.M == 0 || g.N == 0 || g.batch == 0) return;
    const int64_t na = footprint(g.batch, g.stride_a, g.ta ? g.K : g.M, g.ta ? g.M : g.K, g.lda);
    const int64_t nb = footprint(g.batch, g.stride_b, g.tb ? g.N : g.K, g.tb ? g.K : g.N, g.ldb);
    return gemm(g, widen_operand(A, na), widen_operand(B, nb), C);
  }
  DG_CHECK(A.dtype() == B.dtype() && A.dtype() == C.dtype(), "gemm: dtypes ", A.desc(), ", ", B.desc(), ", ",
           C.desc(), ": expected all f32, all f64, or bf16 operands with an f32 result");
  prepare_gemm_threads();
  float_dispatch(C.dtype(), "gemm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* a = static_cast<const T*>(A.raw());
    const T* b = static_cast<const T*>(B.raw());
    T* c = static_cast<T*>(C.raw());
    const T alpha = T(g.alpha), beta = T(g.beta);
    auto one = [&](const Gemm& p, const T* ap, const T* bp, T* cp) {
      gemm_serial<T>(p.ta, p.tb, p.M, p.N, p.K, alpha, ap, p.lda, bp, p.ldb, beta, cp, p.ldc);
    };
    const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
#ifdef _OPENMP
    const int nt = omp_get_max_threads();
#else
    const int nt = 1;
#endif
    // Small products run on one core: waking a thread costs more than they take.
    if (nt == 1 || flops * double(g.batch) < 2e6) {
      for (int64_t i = 0; i < g.batch; ++i) one(g, a + i * g.stride_a, b + i * g.stride_b, c + i * g.stride_c);
      return;
    }
    if (g.batch >= nt) {  // many matrices (attention heads): one per thread
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < g.batch; ++i) one(g, a + i * g.stride_a, b + i * g.stride_b, c + i * g.stride_c);
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
          one(part, g.ta ? ai + r0 : ai + r0 * g.lda, bi, ci + r0 * g.ldc);
        }
      }
    }
  });
}

}  // namespace dg::cpu
