// CUDA GEMM with the bias added in cuBLASLt's epilogue: C = alpha op(A) op(B) + bias, one kernel,
// where linear() otherwise writes the broadcast bias into C and runs the GEMM with beta = 1 (one
// extra write and one extra read of C). Only the bias epilogue: cuBLASLt's GELU epilogue is the
// tanh approximation, and timm's ViT uses the exact (erf) GELU.
// Opt-in (cuda::set_lt_epilogue or DG_CUDA_LT_EPILOGUE=1) until it has been measured on a GPU;
// tests/test_cuda.cpp compares it with the plain path and the CPU when a GPU is present.
// Row-major to column-major as in cuda_gemm.cu: cuBLASLt's A is our B, its B our A, m = N, n = M.
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include "cuda/cuda_api.h"
#include "cuda/cuda_backend.h"

namespace dg::cuda {

namespace {
bool& lt_flag() {
  static bool on = [] {
    const char* e = std::getenv("DG_CUDA_LT_EPILOGUE");
    return e && std::strcmp(e, "1") == 0;
  }();
  return on;
}

cublasLtHandle_t lt() {
  static cublasLtHandle_t h = [] {
    cublasLtHandle_t x;
    DG_CUBLAS(cublasLtCreate(&x));
    return x;
  }();
  return h;
}

constexpr size_t kWorkspace = size_t(32) << 20;  // what cuBLAS recommends for Hopper
void* workspace() {
  static void* w = backend(Device::CUDA).alloc(kWorkspace);
  return w;
}

// largest power of two (up to 256) that divides the address: the heuristic must not pick a
// kernel that assumes more alignment than a view's pointer has
unsigned alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  return unsigned(a ? std::min<uintptr_t>(a & (~a + 1), 256) : 256);
}

// One matmul description per shape, layout, dtype and alignment, with the algorithm the
// heuristic chose for it (the heuristic query costs more than the launch).
using Key = std::tuple<bool, bool, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, unsigned,
                       unsigned, unsigned, unsigned>;
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
};

template <class V>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& v) {
  DG_CUBLAS(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof v));
}

Plan make_plan(const Backend::Gemm& g, bool bf16, bool tf32, const unsigned align[4]) {
  Plan p;
  DG_CUBLAS(cublasLtMatmulDescCreate(&p.op, tf32 && !bf16 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F,
                                     CUDA_R_32F));
  set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSA, g.tb ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(p.op, CUBLASLT_MATMUL_DESC_TRANSB, g.ta ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
  set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_32F);
  const cudaDataType_t in = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const uint64_t m = uint64_t(g.N), n = uint64_t(g.M), k = uint64_t(g.K);
  // stored matrices, column-major: cuBLASLt's A (our B) is m x k, or k x m when transposed
  DG_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, in, g.tb ? k : m, g.tb ? m : k, g.ldb));
  DG_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, in, g.ta ? n : k, g.ta ? k : n, g.lda));
  DG_CUBLAS(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, m, n, g.ldc));
  cublasLtMatmulPreference_t pref;
  DG_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspace;
  DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i)
    DG_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &align[i], sizeof align[i]));
  cublasLtMatmulHeuristicResult_t r{};
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt(), p.op, p.a, p.b, p.c, p.c, pref, 1, &r, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p.ok = s == CUBLAS_STATUS_SUCCESS && found > 0;  // else: the caller's unfused path
  if (p.ok) p.algo = r.algo;
  return p;
}
}  // namespace

void set_lt_epilogue(bool on) { lt_flag() = on; }
bool lt_epilogue() { return lt_flag(); }

bool CudaBackend::gemm_bias(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) {
  if (!lt_flag() || g.batch != 1 || g.M == 0 || g.N == 0 || g.K == 0) return false;
  const bool bf16 = A.dtype() == DType::BF16 && B.dtype() == DType::BF16;
  const bool f32 = A.dtype() == DType::F32 && B.dtype() == DType::F32;
  if (!(bf16 || f32) || C.dtype() != DType::F32 || bias.dtype() != DType::F32 || !bias.is_contiguous() ||
      bias.numel() != g.N)
    return false;
  // cuBLASLt's A, B, C, D are our B, A, C, C
  const unsigned align[4] = {alignment(B.raw()), alignment(A.raw()), alignment(C.raw()), alignment(C.raw())};
  const Key key{g.ta, g.tb, bf16, tf32_enabled(), g.M, g.N, g.K, g.lda, g.ldb, g.ldc, align[0], align[1],
                align[2], align[3]};
  static std::map<Key, Plan> plans;
  auto it = plans.find(key);
  if (it == plans.end()) it = plans.emplace(key, make_plan(g, bf16, tf32_enabled(), align)).first;
  const Plan& p = it->second;
  if (!p.ok) return false;
  const void* bp = bias.raw();
  set_desc(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bp);
  const float alpha = float(g.alpha), beta = 0.0f;
  DG_CUBLAS(cublasLtMatmul(lt(), p.op, &alpha, B.raw(), p.a, A.raw(), p.b, &beta, C.raw(), p.c, C.raw(), p.c,
                           &p.algo, workspace(), kWorkspace, stream()));
  return true;
}

}  // namespace dg::cuda
