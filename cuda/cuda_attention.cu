// CUDA: fused multi-head attention over packed qkv, forward and backward, in the
// FlashAttention manner: scores are computed tile by tile in registers and never stored;
// backward recomputes them from q, k and the saved log-sum-exp.
//   qkv [B, N, 3D] (q | k | v, head-major, D = H * HD), out [B, N, D], lse [B, H, N].
// One thread owns one row (a query row in the forward and dq pass, a key row in the dk/dv
// pass) with its HD-vectors in registers; the block stages TILE rows of the other side in
// shared memory, which every thread then reads at the same address (a broadcast).
// Plain FP32/FP64 FMA code (no tensor cores): the point is the memory it does not use.
// The kernels are in cuda/attention_kernels.cuh. Status: compiled in CI and run on the host under
// a CUDA thread-model emulation against the CPU kernel (tests/test_cuda_attention_host.cpp);
// enabled only with DG_CUDA_FUSED_ATTENTION=1 until it has run on a GPU (tests/test_cuda.cpp
// compares it with the CPU kernel when a GPU is present).
#include <cstdlib>
#include <cstring>

#include "cuda/attention_kernels.cuh"
#include "cuda/cuda_backend.h"

namespace dg::cuda {

using namespace attn;

bool CudaBackend::fused_attention_supported(const Tensor& qkv, int64_t heads) const {
  const char* on = std::getenv("DG_CUDA_FUSED_ATTENTION");
  if (!on || std::strcmp(on, "1") != 0) return false;
  const int64_t hd = qkv.dim() == 3 && heads > 0 ? qkv.size(2) / (3 * heads) : 0;
  return hd == 32 || hd == 64;
}

template <class F>
static void hd_dispatch(int64_t hd, F&& f) {
  if (hd == 32) return f(std::integral_constant<int, 32>());
  if (hd == 64) return f(std::integral_constant<int, 64>());
  throw Error(str("cuda attention: head_dim ", hd, " (the fused kernel has 32 and 64)"));
}

void CudaBackend::attention(const Tensor& qkv, int64_t heads, double scale, const Tensor& out, const Tensor& lse,
                            AttnRows rows) {
  const int B = int(qkv.size(0)), N = int(qkv.size(1)), sb = int(rows.skip_begin), sn = int(rows.skipped());
  const dim3 grid(unsigned((N - sn + TILE - 1) / TILE), unsigned(B * heads));  // one thread per kept query
  float_dispatch(qkv.dtype(), "attention", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    hd_dispatch(qkv.size(2) / (3 * heads), [&](auto hd) {
      attn_fwd_kernel<T, decltype(hd)::value><<<grid, TILE, 0, stream()>>>(qkv.data<T>(), out.data<T>(), lse.data<T>(), N,
                                                             int(heads), T(scale), sb, sn);
    });
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::attention_backward(const Tensor& qkv, const Tensor& lse, const Tensor& gout, int64_t heads,
                                     double scale, const Tensor& gqkv, AttnRows rows) {
  const int B = int(qkv.size(0)), N = int(qkv.size(1)), sb = int(rows.skip_begin), sn = int(rows.skipped());
  const dim3 grid(unsigned((N + TILE - 1) / TILE), unsigned(B * heads));
  Tensor Drow = Tensor::empty(lse.shape(), lse.dtype(), Device::CUDA);  // [B, H, Nq]
  float_dispatch(qkv.dtype(), "attention backward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    hd_dispatch(qkv.size(2) / (3 * heads), [&](auto hd) {
      attn_bwd_dq_kernel<T, decltype(hd)::value><<<grid, TILE, 0, stream()>>>(qkv.data<T>(), lse.data<T>(), gout.data<T>(),
                                                                gqkv.data<T>(), Drow.data<T>(), N, int(heads), T(scale), sb, sn);
      attn_bwd_dkv_kernel<T, decltype(hd)::value><<<grid, TILE, 0, stream()>>>(qkv.data<T>(), lse.data<T>(), gout.data<T>(),
                                                                 Drow.data<T>(), gqkv.data<T>(), N, int(heads), T(scale), sb, sn);
    });
  });
  DG_LAUNCH_CHECK();
}

}  // namespace dg::cuda
