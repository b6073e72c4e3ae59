// One row-major matrix product on the calling thread, C = alpha op(A) op(B) + beta C, by the
// GEMM library chosen for this machine. The CPU backend's gemm() and the fused attention
// kernel both call it; neither lets the library spawn threads inside it (they split the work
// across cores themselves), except the "onednn-mt" choice, where gemm() hands whole large
// products to oneDNN's own threads.
//
// Which library: measured on the machine it runs on (core/cpu/gemm_select.h). The same
// library is 2-5x apart across CPUs (Debian's OpenBLAS 0.3.21 runs SSE3 kernels on an Intel
// Emerald Rapids it does not know; on an AMD Zen 3 it beat Eigen by 1.4x), so no fixed
// choice is fast everywhere. DG_CPU_GEMM=onednn|onednn-mt|openblas|eigen forces one,
// DG_CPU_GEMM=calibrate re-measures; set_gemm_library() does it in code (tests, benches).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dg::cpu {

// A stored [M,K] (or [K,M] if ta) with leading dimension lda; B [K,N] (or [N,K] if tb);
// C [M,N] with ldc. beta == 0 overwrites C (NaN in C is not propagated).
template <class T>
void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc);

// The library gemm_serial uses now ("onednn", "onednn-mt", "openblas", "eigen"); the first
// call settles the choice (DG_CPU_GEMM, else the cache, else a calibration).
const char* gemm_library();
// Why: "forced by DG_CPU_GEMM", "calibrated: <timings>", "cached in <file>", "set in code".
std::string gemm_choice_reason();
// Select by name; throws dg::Error naming the choices for an unknown or unbuilt one.
void set_gemm_library(const std::string& name);
// The libraries this build can use, in preference order.
std::vector<std::string> gemm_libraries();
bool have_openblas();
// Maps OpenBLAS's work buffers for `threads` concurrent products, or throws dg::OutOfMemory
// (core/cpu/blas_buffers.cpp: OpenBLAS itself would spin forever on a failed mapping).
void reserve_openblas_buffers(int threads);
// Call outside a parallel region before gemm_serial runs on up to omp_get_max_threads()
// threads at once: reserves OpenBLAS's buffers for them when OpenBLAS will run the products
// (the chosen f32 library, or `f64` products where OpenBLAS is built).
void prepare_gemm_threads(bool f64);
bool have_onednn();
// OpenBLAS, opened on first use (core/cpu/openblas_loader.cpp says why it is not linked).
// openblas_loaded() opens it; the others throw dg::Error where it cannot be opened.
bool openblas_loaded();
std::string openblas_load_error();  // why it is not loaded ("" when it is)
void openblas_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* a, int lda, const float* b,
                   int ldb, float beta, float* c, int ldc);  // cblas_sgemm, row major
void openblas_gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* a, int lda, const double* b,
                   int ldb, double beta, double* c, int ldc);
void openblas_set_threads(int n);  // its own pool (gemm_bench's "openblas-own" row); 1 otherwise
void* openblas_buffer_alloc();     // blas_memory_alloc(0): a work buffer, as cblas_sgemm takes one
void openblas_buffer_free(void* p);
// OpenBLAS's kernel set (openblas_get_corename(): "Haswell", "SkylakeX", "Prescott", ...); "" without it.
std::string openblas_corename();
std::string openblas_config();  // openblas_get_config(); "" without it
// "OpenBLAS file libopenblasp-r0.3.21.so (N bytes)": the library the loader would open, read
// from the file system without loading it; "" where it is not found in the usual directories.
std::string openblas_file_identity();
// Whether OpenBLAS is built in and there to open, loading it only where its file is not found.
bool openblas_present();
// Whether the chosen GEMM runs any f32 product in OpenBLAS (settles the choice).
bool gemm_uses_openblas();
// "Eigen 3.4.0; OpenBLAS file libopenblasp-r0.3.21.so (...); oneDNN 2.6.3 (...)": what this build
// links (OpenBLAS as openblas_file_identity(), its loaded config where the file is not found).
std::string gemm_library_versions();

// Wall time spent inside the backend's gemm() and its fused attention kernel (called from
// the main thread) since the last reset: the benchmark's "share of the step in GEMM".
// One clock read per call (a ViT step makes a few hundred), so it is always on.
struct KernelTime {
  double gemm_s = 0, attention_s = 0;
};
KernelTime kernel_time();
void reset_kernel_time();

// bf16 x bf16 -> f32 products (autocast): oneDNN's native bf16 kernels where the CPU has
// avx512_bf16 or AMX and the build has oneDNN, else operands widened to f32 for the f32 GEMM.
// DG_CPU_BF16_GEMM=f32 forces widening; set_bf16_gemm("onednn"|"f32") in code.
bool bf16_gemm_native();
void set_bf16_gemm(const std::string& how);
std::string bf16_gemm_kind();  // one line for --version

}  // namespace dg::cpu
