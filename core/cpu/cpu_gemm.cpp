// CPU GEMM. gemm_split() decides how to use the cores: small products on one core, batches
// one matrix per thread, large products split by rows of C; each piece is a one-thread
// product of the chosen library (gemm_libs.cpp). The libraries' own threading stays off
// (except "onednn-mt"): Eigen's OpenMP made a small ViT step 40x slower on 2 cores
// (spin-waiting on tiny products), and one split for all libraries keeps results independent
// of their thread heuristics.
#include <algorithm>
#include <atomic>
#include <chrono>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_libs.h"
#include "core/cpu/gemm_select.h"
#include "core/cpu/onednn_matmul.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dg::cpu {

template <class T>
void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T beta, T* c, int64_t ldc) {
  // the fused attention kernel's products, one head per thread
  gemm_one<T>(gemm_lib_for(GemmKind::Heads), ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}
template void gemm_serial<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t);
template void gemm_serial<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                                  const double*, int64_t, double, double*, int64_t);

namespace {
std::atomic<int64_t> g_gemm_ns{0}, g_attention_ns{0};
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

void prepare_gemm_threads(bool f64) {
  // OpenBLAS runs the f32 products when chosen, and the f64 ones wherever it is built
  bool openblas = f64;
  for (int k = 0; k < kGemmKinds; ++k) openblas = openblas || gemm_lib_for(GemmKind(k)) == GemmLib::OpenBLAS;
  if (!openblas || !have_openblas()) return;  // in this order: a process that never uses it never opens it
#ifdef _OPENMP
  reserve_openblas_buffers(omp_get_max_threads());
#else
  reserve_openblas_buffers(1);
#endif
}

void add_kernel_ns(bool attention, int64_t ns) { (attention ? g_attention_ns : g_gemm_ns).fetch_add(ns); }
// Only the outermost timer of a thread counts: a bf16 product without native kernels widens its
// operands and calls gemm() again, and its time must not count twice.
static thread_local int t_timer_depth = 0;
KernelTimer::KernelTimer(bool attn) : attention(attn), t0(t_timer_depth++ == 0 ? now_ns() : -1) {}
KernelTimer::~KernelTimer() {
  --t_timer_depth;
  if (t0 >= 0) add_kernel_ns(attention, now_ns() - t0);
}
KernelTime kernel_time() { return {double(g_gemm_ns.load()) * 1e-9, double(g_attention_ns.load()) * 1e-9}; }
void reset_kernel_time() { g_gemm_ns = 0, g_attention_ns = 0; }

template <class T>
void gemm_split(GemmLib lib, const Backend::Gemm& g, const T* a, const T* b, T* c) {
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  const T alpha = T(g.alpha), beta = T(g.beta);
  auto one = [&](const Backend::Gemm& p, const T* ap, const T* bp, T* cp) {
    gemm_one<T>(lib, p.ta, p.tb, p.M, p.N, p.K, alpha, ap, p.lda, bp, p.ldb, beta, cp, p.ldc);
  };
  const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
#ifdef _OPENMP
  const int nt = omp_get_max_threads();
#else
  const int nt = 1;
#endif
  // Small products run on one core: waking a thread costs more than they take. "onednn-mt"
  // gives few large matrices to oneDNN whole (it splits them over its own threads).
  const bool library_threads = lib == GemmLib::OneDNNThreads && g.batch < nt;
  if (nt == 1 || flops * double(g.batch) < 2e6 || library_threads) {
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
        Backend::Gemm part = g;
        part.M = r1 - r0;
        // rows of op(A): stored rows (no transpose) or stored columns (transposed)
        one(part, g.ta ? ai + r0 : ai + r0 * g.lda, bi, ci + r0 * g.ldc);
      }
    }
  }
}
template void gemm_split<float>(GemmLib, const Backend::Gemm&, const float*, const float*, float*);
template void gemm_split<double>(GemmLib, const Backend::Gemm&, const double*, const double*, double*);

// Elements of a stored operand that a GEMM reads: batches of rows x cols with leading dim ld.
static int64_t footprint(int64_t batch, int64_t stride, int64_t rows, int64_t cols, int64_t ld) {
  if (rows == 0 || cols == 0) return 0;
  return (batch - 1) * stride + (rows - 1) * ld + cols;
}

// bf16 operand -> f32 copy of the span the GEMM reads (same layout, so g's strides still apply).
// bf16 -> f32 is exact and a product of two bf16 values is exact in f32: the f32 GEMM on the
// widened operands is the bf16 GEMM with f32 accumulation. Where the CPU multiplies bf16
// natively (avx512_bf16, AMX) oneDNN's bf16 kernels run instead (onednn_bf16.cpp).
static Tensor widen_operand(const Tensor& t, int64_t n) {
  Tensor w = Tensor::empty({n}, DType::F32, Device::CPU);
  const uint16_t* s = static_cast<const uint16_t*>(t.raw());
  float* d = w.data<float>();
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_f32(s[i]);
  return w;
}

void CpuBackend::gemm(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& C) {
  KernelTimer timer(false);
  if (A.dtype() == DType::BF16 && B.dtype() == DType::BF16 && C.dtype() == DType::F32) {
    if (g.M == 0 || g.N == 0 || g.batch == 0) return;
    if (onednn_gemm_bf16(g, static_cast<const uint16_t*>(A.raw()), static_cast<const uint16_t*>(B.raw()), C.data<float>()))
      return;
    const int64_t na = footprint(g.batch, g.stride_a, g.ta ? g.K : g.M, g.ta ? g.M : g.K, g.lda);
    const int64_t nb = footprint(g.batch, g.stride_b, g.tb ? g.N : g.K, g.tb ? g.K : g.N, g.ldb);
    return gemm(g, widen_operand(A, na), widen_operand(B, nb), C);
  }
  DG_CHECK(A.dtype() == B.dtype() && A.dtype() == C.dtype(), "gemm: dtypes ", A.desc(), ", ", B.desc(), ", ",
           C.desc(), ": expected all f32, all f64, or bf16 operands with an f32 result");
  const GemmLib lib = gemm_lib_for(gemm_kind(g));  // settled here, outside any parallel region
  prepare_gemm_threads(C.dtype() == DType::F64);
  float_dispatch(C.dtype(), "gemm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gemm_split<T>(lib, g, static_cast<const T*>(A.raw()), static_cast<const T*>(B.raw()), static_cast<T*>(C.raw()));
  });
}

// The epilogues run where the calibration (or DG_CPU_GEMM) put this kind of product in oneDNN,
// under the same threading: "onednn" one block of rows per thread, "onednn-mt" oneDNN's own
// threads. f64, bf16 and the other libraries return false: the caller's fill + GEMM + pass.
static bool onednn_epilogue(const Backend::Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, bool gelu,
                            const Tensor& C) {
  if (g.batch != 1 || A.dtype() != DType::F32 || B.dtype() != DType::F32 || C.dtype() != DType::F32) return false;
  if (bias.defined() && (bias.dtype() != DType::F32 || !bias.is_contiguous() || bias.numel() != g.N)) return false;
  const GemmLib lib = gemm_lib_for(gemm_kind(g));
  if (lib != GemmLib::OneDNN && lib != GemmLib::OneDNNThreads) return false;
  KernelTimer timer(false);
  Backend::Gemm p = g;
  p.beta = 0;
  const MatmulEpilogue e{bias.defined() ? bias.data<float>() : nullptr, gelu};
  return onednn_matmul(p, /*bf16=*/false, A.raw(), B.raw(), C.data<float>(), e, lib == GemmLib::OneDNN);
}

bool CpuBackend::gemm_bias(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) {
  return onednn_epilogue(g, A, B, bias, false, C);
}
bool CpuBackend::gemm_bias_gelu(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) {
  return onednn_epilogue(g, A, B, bias, true, C);
}

}  // namespace dg::cpu
