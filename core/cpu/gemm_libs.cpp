// The candidate GEMM libraries as one-thread products. Each is called on the caller's
// buffers with the caller's strides (no copies); a library that refuses a call (oneDNN
// returns a status) falls back to Eigen for that product, so a result is always computed.
#define EIGEN_DONT_PARALLELIZE
#include <Eigen/Core>
#include <sys/mman.h>
#include <algorithm>
#include <climits>

#include "core/build_config.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_libs.h"

#ifdef DG_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
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

#ifdef DG_HAVE_ONEDNN
// dnnl_sgemm takes its thread count from OpenMP: one inside a parallel region, else
// omp_get_max_threads(). `own_threads` false pins a product called outside a region to the
// calling thread too, so "onednn" is one thread per product wherever it is called.
bool onednn_sgemm(bool own_threads, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#ifdef _OPENMP
  const int saved = omp_get_max_threads();
  const bool pin = !own_threads && !omp_in_parallel() && saved > 1;
  if (pin) omp_set_num_threads(1);
#endif
  const dnnl_status_t st =
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
#ifdef _OPENMP
  if (pin) omp_set_num_threads(saved);
#endif
  return st == dnnl_success;
}
#endif
}  // namespace

const char* lib_name(GemmLib l) {
  switch (l) {
    case GemmLib::OneDNN: return "onednn";
    case GemmLib::OneDNNThreads: return "onednn-mt";
    case GemmLib::OpenBLAS: return "openblas";
    case GemmLib::Eigen: return "eigen";
  }
  return "?";
}

std::optional<GemmLib> lib_from_name(const std::string& name) {
  for (GemmLib l : {GemmLib::OneDNN, GemmLib::OneDNNThreads, GemmLib::OpenBLAS, GemmLib::Eigen})
    if (name == lib_name(l)) return l;
  return std::nullopt;
}

bool lib_built(GemmLib l) {
  switch (l) {
    case GemmLib::OneDNN:
    case GemmLib::OneDNNThreads: return have_onednn();
    case GemmLib::OpenBLAS: return have_openblas();
    case GemmLib::Eigen: return true;
  }
  return false;
}

std::vector<GemmLib> built_libs() {
  std::vector<GemmLib> v;
  for (GemmLib l : {GemmLib::OneDNN, GemmLib::OneDNNThreads, GemmLib::OpenBLAS, GemmLib::Eigen})
    if (lib_built(l)) v.push_back(l);
  return v;
}

std::string lib_names_joined() {
  const std::vector<GemmLib> libs = built_libs();
  std::string s;
  for (size_t i = 0; i < libs.size(); ++i)
    s += (i == 0 ? "" : i + 1 == libs.size() ? " or " : ", ") + std::string("'") + lib_name(libs[i]) + "'";
  return s;
}

bool have_openblas() { return openblas_loaded(); }  // built in, and the library opens
bool openblas_present() { return !openblas_file_identity().empty() || openblas_loaded(); }

// oneDNN generates its GEMM kernels once, on first use, and does not check that allocation:
// under a memory limit (ulimit -v) with ~20 MiB of address space left, dnnl_sgemm crashed with
// SIGSEGV inside that one-time initialisation. So it is used only where 64 MiB are free when
// it is first asked for; else the products run in the other libraries.
bool have_onednn() {
#ifdef DG_HAVE_ONEDNN
  static const bool room = [] {
    constexpr size_t kNeed = size_t(64) << 20;
    void* probe = ::mmap(nullptr, kNeed, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (probe == MAP_FAILED) return false;
    ::munmap(probe, kNeed);
    return true;
  }();
  return room;
#else
  return false;
#endif
}

template <class T>
void gemm_one(GemmLib lib, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda,
              const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K > 0) {  // the libraries want ld >= the stored row length even for an empty K: Eigen does K == 0
#ifdef DG_HAVE_ONEDNN
    if constexpr (std::is_same_v<T, float>)
      if ((lib == GemmLib::OneDNN || lib == GemmLib::OneDNNThreads) && have_onednn() &&
          onednn_sgemm(lib == GemmLib::OneDNNThreads, ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc))
        return;
#endif
    // cblas takes int sizes. float64 under oneDNN comes here too (oneDNN has no dgemm).
    const bool fits = std::max({M, N, K, lda, ldb, ldc}) <= INT_MAX;
    const bool f64_of_onednn = std::is_same_v<T, double> && lib != GemmLib::Eigen;
    if (fits && (lib == GemmLib::OpenBLAS || f64_of_onednn) && have_openblas()) {
      openblas_gemm(ta, tb, int(M), int(N), int(K), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
      return;
    }
  }
  gemm_eigen<T>(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}
template void gemm_one<float>(GemmLib, bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                              const float*, int64_t, float, float*, int64_t);
template void gemm_one<double>(GemmLib, bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                               const double*, int64_t, double, double*, int64_t);

std::string gemm_library_versions() {
  std::string s = "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
                  std::to_string(EIGEN_MINOR_VERSION);
  if (const std::string file = openblas_file_identity(); !file.empty()) s += "; " + file;
  else if (have_openblas()) s += "; " + openblas_config();
#ifdef DG_HAVE_ONEDNN
  const dnnl_version_t* v = dnnl_version();
  s += "; oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
       " (" + (v->hash ? v->hash : "") + ")";
#endif
  return s;
}

}  // namespace dg::cpu
