// One row-major matrix product on the calling thread, C = alpha op(A) op(B) + beta C,
// done by OpenBLAS (cblas, one thread) where the build found it, else by Eigen.
// The CPU backend's gemm() and the fused attention kernel both call it; neither spawns
// threads inside it (they split the work across cores themselves).
//
// Why two libraries: chosen by measurement (bench/gemm_bench, bench/RESULTS.md). On an AMD
// Zen 3 core (AVX2) OpenBLAS's sgemm runs at ~86 GFLOP/s against Eigen's ~62 on the ViT
// shapes; Eigen stays as the fallback and for comparison. DG_CPU_GEMM=eigen|openblas
// overrides the choice at start-up; set_gemm_library() does it in code (tests, benches).
#pragma once
#include <cstdint>
#include <string>

namespace dg::cpu {

// A stored [M,K] (or [K,M] if ta) with leading dimension lda; B [K,N] (or [N,K] if tb);
// C [M,N] with ldc. beta == 0 overwrites C (NaN in C is not propagated).
template <class T>
void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc);

// "openblas" or "eigen": the library gemm_serial uses now.
const char* gemm_library();
// Select by name; throws dg::Error naming the choices for an unknown or unbuilt one.
void set_gemm_library(const std::string& name);
// Whether this build links OpenBLAS.
bool have_openblas();
// Maps OpenBLAS's work buffers for `threads` concurrent products, or throws dg::OutOfMemory
// (core/cpu/blas_buffers.cpp: OpenBLAS itself would spin forever on a failed mapping).
void reserve_openblas_buffers(int threads);
// Call outside a parallel region before gemm_serial runs on up to omp_get_max_threads()
// threads at once: reserves OpenBLAS's buffers for them when OpenBLAS is the library in use.
void prepare_gemm_threads();

}  // namespace dg::cpu
