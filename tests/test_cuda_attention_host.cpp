// The fused CUDA attention kernels (cuda/attention_kernels.cuh) run on the host under the CUDA
// thread-model emulation (tests/cuda_host_emulation.h) against the CPU backend's fused attention,
// forward (out, lse) and backward (gqkv), f32 and f64, both head sizes, sequence lengths that do
// and do not fill the last tile. This checks the kernels' indexing, tiling, online softmax and
// masking, and the map of skipped query rows (AttnRows), wherever no GPU is present; tests/test_cuda.cpp runs them on a GPU when one is.
#include "tests/cuda_host_emulation.h"
// the emulation first: it defines the CUDA keywords the kernels use
#include "cuda/attention_kernels.cuh"

#include "core/backend.h"
#include "core/random.h"
#include "tests/test_util.h"

using namespace dg;

namespace {
// rows: the skipped query rows (VPT-deep's), none by default.
template <class T, int HD>
void check(int B, int H, int N, uint64_t seed, AttnRows rows = {}) {
  INFO("dtype ", std::string(dtype_name(dtype_of<T>())), " head_dim ", HD, " B ", B, " H ", H, " N ", N, " skip ",
       rows.skip_begin, ":", rows.skip_end);
  const int D = H * HD, Nq = N - int(rows.skipped()), sb = int(rows.skip_begin), sn = int(rows.skipped());
  const double scale = 1.0 / std::sqrt(double(HD));
  Tensor qkv = Tensor::empty({B, N, 3 * D}, dtype_of<T>()), gout = Tensor::empty({B, Nq, D}, dtype_of<T>());
  Generator(seed).normal_(qkv);
  Generator(seed + 1).normal_(gout);
  Backend& cpu = backend(Device::CPU);
  Tensor out_c = Tensor::empty({B, Nq, D}, dtype_of<T>()), lse_c = Tensor::empty({B, H, Nq}, dtype_of<T>());
  Tensor g_c = Tensor::empty({B, N, 3 * D}, dtype_of<T>());
  cpu.attention(qkv, H, scale, out_c, lse_c, rows);
  cpu.attention_backward(qkv, lse_c, gout, H, scale, g_c, rows);

  using namespace dg::cuda::attn;
  Tensor out_e = Tensor::full({B, Nq, D}, NAN, dtype_of<T>()), lse_e = Tensor::full({B, H, Nq}, NAN, dtype_of<T>());
  Tensor g_e = Tensor::full({B, N, 3 * D}, NAN, dtype_of<T>()), drow = Tensor::empty({B, H, Nq}, dtype_of<T>());
  const dim3 grid(unsigned((N + TILE - 1) / TILE), unsigned(B * H));
  cuda_emu::launch(dim3(unsigned((Nq + TILE - 1) / TILE), unsigned(B * H)), dim3(TILE), attn_fwd_kernel<T, HD>,
                   qkv.data<T>(), out_e.data<T>(), lse_e.data<T>(), N, H, T(scale), sb, sn);
  // backward from the emulated forward's lse, as the backend does
  cuda_emu::launch(grid, dim3(TILE), attn_bwd_dq_kernel<T, HD>, static_cast<const T*>(qkv.data<T>()),
                   static_cast<const T*>(lse_e.data<T>()), static_cast<const T*>(gout.data<T>()), g_e.data<T>(),
                   drow.data<T>(), N, H, T(scale), sb, sn);
  cuda_emu::launch(grid, dim3(TILE), attn_bwd_dkv_kernel<T, HD>, static_cast<const T*>(qkv.data<T>()),
                   static_cast<const T*>(lse_e.data<T>()), static_cast<const T*>(gout.data<T>()),
                   static_cast<const T*>(drow.data<T>()), g_e.data<T>(), N, H, T(scale), sb, sn);
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  const double eo = test::rel_err(out_e, out_c), el = test::rel_err(lse_e, lse_c), eg = test::rel_err(g_e, g_c);
  MESSAGE(std::string(dtype_name(dtype_of<T>())), " hd ", HD, " N ", N, " skip ", sb, "+", sn, ": out ", eo, ", lse ",
          el, ", gqkv ", eg);
  CHECK(eo < tol);  // NaN (an element never written) fails these too
  CHECK(el < tol);
  CHECK(eg < tol);
  if (sn > 0) {  // the skipped rows' dq is exactly zero on both (not merely small), and their dk/dv are not
    Tensor gq_skipped = view::slice(view::slice(g_e, 1, sb, sb + sn), 2, 0, D).contiguous();
    Tensor gkv_skipped = view::slice(view::slice(g_e, 1, sb, sb + sn), 2, D, 3 * D).contiguous();
    for (double v : gq_skipped.to_vector()) CHECK(v == 0.0);
    double kv = 0;
    for (double v : gkv_skipped.to_vector()) kv += std::abs(v);
    CHECK(kv > 0);
  }
}
}  // namespace

TEST_CASE("cuda attention kernels on the host emulation: forward and backward match the CPU kernel") {
  check<float, 32>(2, 2, 50, 1);   // last tile partly filled
  check<float, 64>(1, 2, 64, 2);   // exactly two tiles
  check<double, 32>(1, 3, 17, 3);  // fewer rows than one tile
  check<double, 64>(2, 1, 33, 4);  // one row in the last tile
}

TEST_CASE("cuda attention kernels on the host emulation: skipped query rows (VPT-deep) match the CPU kernel") {
  check<float, 32>(2, 2, 50, 5, {1, 11});   // cls, then 10 prompt rows that are keys and values only
  check<float, 64>(1, 2, 45, 6, {1, 14});   // 32 kept queries: exactly one tile of them
  check<double, 32>(1, 3, 40, 7, {1, 9});   // kept queries span two tiles, the skipped rows in the first
  check<double, 64>(2, 1, 37, 8, {30, 37}); // the last rows skipped
}
