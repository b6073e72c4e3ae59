// Inside the CPU GEMM (not for use outside core/cpu): the candidate libraries, each as a
// one-thread row-major product, and the backend's split of one Backend::Gemm over the cores
// with a given library. gemm_select.cpp times the candidates through gemm_split to choose
// one (the same code path the step runs); cpu_gemm.cpp runs the chosen one.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/backend.h"

namespace dg::cpu {

// Preference order (a near tie in the calibration goes to the earlier one):
//   onednn     oneDNN's sgemm, one thread per product under our split (dnnl_sgemm inside an
//              OpenMP region runs on the calling thread);
//   onednn-mt  oneDNN's sgemm with its own OpenMP threads for each large product;
//   openblas   OpenBLAS's cblas_sgemm, one thread per product under our split;
//   eigen      Eigen's product over maps of the caller's buffers, under our split.
// float64 has no oneDNN GEMM: it goes to OpenBLAS where built, else Eigen.
enum class GemmLib { OneDNN, OneDNNThreads, OpenBLAS, Eigen };

const char* lib_name(GemmLib l);
std::optional<GemmLib> lib_from_name(const std::string& name);
bool lib_built(GemmLib l);
std::vector<GemmLib> built_libs();  // in preference order
std::string lib_names_joined();     // "'onednn', 'onednn-mt', 'openblas' or 'eigen'" (those built)

// C = alpha op(A) op(B) + beta C on the calling thread (see gemm_kernel.h for the layout).
template <class T>
void gemm_one(GemmLib lib, bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda,
              const T* b, int64_t ldb, T beta, T* c, int64_t ldc);

// One Backend::Gemm (batched, strided) over the OpenMP threads with `lib` as the product.
template <class T>
void gemm_split(GemmLib lib, const Backend::Gemm& g, const T* a, const T* b, T* c);

// Adds a call's wall time to kernel_time() (gemm_kernel.h).
void add_kernel_ns(bool attention, int64_t ns);
// Measures a scope for add_kernel_ns.
struct KernelTimer {
  explicit KernelTimer(bool attention);
  ~KernelTimer();
  bool attention;
  int64_t t0;
};

// bf16 operands, f32 C through oneDNN's bf16 kernels (onednn_bf16.cpp); false when not done
// (no oneDNN, no bf16 arithmetic on this CPU, switched off, or a layout oneDNN declines): the
// caller then widens the operands and runs the f32 GEMM. A failed call leaves C untouched.
bool onednn_gemm_bf16(const Backend::Gemm& g, const uint16_t* a, const uint16_t* b, float* c);

}  // namespace dg::cpu
