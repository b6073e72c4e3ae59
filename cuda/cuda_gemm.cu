// CUDA GEMM through cuBLAS. Our matrices are row-major; cuBLAS is column-major, so
// C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: the operands swap places and
// every matrix is read as its own transpose, with no copies.
#include "cuda/cuda_backend.h"

namespace dg::cuda {

void CudaBackend::gemm(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& C) {
  const bool mixed = A.dtype() == DType::BF16 && B.dtype() == DType::BF16 && C.dtype() == DType::F32;
  DG_CHECK(mixed || (A.dtype() == B.dtype() && A.dtype() == C.dtype()), "gemm (cuda): dtypes ", A.desc(), ", ",
           B.desc(), ", ", C.desc(), ": expected all f32, all f64, or bf16 operands with an f32 result");
  if (g.M == 0 || g.N == 0 || g.batch == 0) return;
  const cublasOperation_t opa = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLAS's A is our B
  const cublasOperation_t opb = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = int(g.N), n = int(g.M), k = int(g.K);
  if (C.dtype() == DType::F32) {
    // f32 operands (TF32 tensor cores if enabled), or bf16 operands on bf16 tensor cores
    // (mixed precision, autograd/autocast.h); f32 accumulation and result either way
    const float alpha = float(g.alpha), beta = float(g.beta);
    const cudaDataType_t in = mixed ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t compute =
        !mixed && tf32_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    DG_CUBLAS(cublasGemmStridedBatchedEx(cublas(), opa, opb, m, n, k, &alpha, B.raw(), in, int(g.ldb), g.stride_b,
                                         A.raw(), in, int(g.lda), g.stride_a, &beta, C.raw(), CUDA_R_32F,
                                         int(g.ldc), g.stride_c, int(g.batch), compute, CUBLAS_GEMM_DEFAULT));
  } else if (C.dtype() == DType::F64) {
    const double alpha = g.alpha, beta = g.beta;
    DG_CUBLAS(cublasDgemmStridedBatched(cublas(), opa, opb, m, n, k, &alpha, static_cast<const double*>(B.raw()),
                                        int(g.ldb), g.stride_b, static_cast<const double*>(A.raw()), int(g.lda),
                                        g.stride_a, &beta, static_cast<double*>(C.raw()), int(g.ldc), g.stride_c,
                                        int(g.batch)));
  } else {
    throw Error(str("gemm (cuda): expected f32 or f64, got ", C.desc()));
  }
}

}  // namespace dg::cuda
