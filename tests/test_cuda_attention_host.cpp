// The fused CUDA attention kernels (cuda/attention_kernels.cuh) run on the host under the CUDA
// thread-model emulation (tests/cuda_host_emulation.h) against the CPU backend's fused attention,
// forward (out, lse) and backward (gqkv), f32 and f64, both head sizes, sequence lengths that do
// and do not fill the last tile. This checks the kernels' indexing, tiling, online softmax and
// masking wherever no GPU is present; tests/test_cuda.cpp runs them on a GPU when one is.
#include "tests/cuda_host_emulation.h"
// the emulation first: it defines the CUDA keywords the kernels use
#include "cuda/attention_kernels.cuh"

#include "core/backend.h"
#include "core/random.h"
#include "tests/test_util.h"

using namespace dg;

namespace {
template <class T, int HD>
void check(int B, int H, int N, uint64_t seed) {
  INFO("dtype ", std::string(dtype_name(dtype_of<T>())), " head_dim ", HD, " B ", B, " H ", H, " N ", N);
  const int D = H * HD;
  const double scale = 1.0 / std::sqrt(double(HD));
  Tensor qkv = Tensor::empty({B, N, 3 * D}, dtype_of<T>()), gout = Tensor::empty({B, N, D}, dtype_of<T>());
  Generator(seed).normal_(qkv);
  Generator(seed + 1).normal_(gout);
  Backend& cpu = backend(Device::CPU);
  Tensor out_c = Tensor::empty({B, N, D}, dtype_of<T>()), lse_c = Tensor::empty({B, H, N}, dtype_of<T>());
  Tensor g_c = Tensor::empty({B, N, 3 * D}, dtype_of<T>());
  cpu.attention(qkv, H, scale, out_c, lse_c);
  cpu.attention_backward(qkv, lse_c, gout, H, scale, g_c);

  using namespace dg::cuda::attn;
  Tensor out_e = Tensor::full({B, N, D}, NAN, dtype_of<T>()), lse_e = Tensor::full({B, H, N}, NAN, dtype_of<T>());
  Tensor g_e = Tensor::full({B, N, 3 * D}, NAN, dtype_of<T>()), drow = Tensor::empty({B, H, N}, dtype_of<T>());
  const dim3 grid(unsigned((N + TILE - 1) / TILE), unsigned(B * H));
  cuda_emu::launch(grid, dim3(TILE), attn_fwd_kernel<T, HD>, qkv.data<T>(), out_e.data<T>(), lse_e.data<T>(), N, H,
                   T(scale));
  // backward from the emulated forward's lse, as the backend does
  cuda_emu::launch(grid, dim3(TILE), attn_bwd_dq_kernel<T, HD>, static_cast<const T*>(qkv.data<T>()),
                   static_cast<const T*>(lse_e.data<T>()), static_cast<const T*>(gout.data<T>()), g_e.data<T>(),
                   drow.data<T>(), N, H, T(scale));
  cuda_emu::launch(grid, dim3(TILE), attn_bwd_dkv_kernel<T, HD>, static_cast<const T*>(qkv.data<T>()),
                   static_cast<const T*>(lse_e.data<T>()), static_cast<const T*>(gout.data<T>()),
                   static_cast<const T*>(drow.data<T>()), g_e.data<T>(), N, H, T(scale));
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  const double eo = test::rel_err(out_e, out_c), el = test::rel_err(lse_e, lse_c), eg = test::rel_err(g_e, g_c);
  MESSAGE(std::string(dtype_name(dtype_of<T>())), " hd ", HD, " N ", N, ": out ", eo, ", lse ", el, ", gqkv ", eg);
  CHECK(eo < tol);  // NaN (an element never written) fails these too
  CHECK(el < tol);
  CHECK(eg < tol);
}
}  // namespace

TEST_CASE("cuda attention kernels on the host emulation: forward and backward match the CPU kernel") {
  check<float, 32>(2, 2, 50, 1);   // last tile partly filled
  check<float, 64>(1, 2, 64, 2);   // exactly two tiles
  check<double, 32>(1, 3, 17, 3);  // fewer rows than one tile
  check<double, 64>(2, 1, 33, 4);  // one row in the last tile
}
