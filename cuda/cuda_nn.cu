// CUDA: softmax, LayerNorm and fused cross-entropy, forward and backward. One warp per
// row (rows are short: tokens, channels, classes); statistics accumulate in T (f32 or f64).
#include "cuda/cuda_backend.h"

namespace dg::cuda {

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <class T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) {
    T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = w > v ? w : v;
  }
  return v;
}

#define WARP_ROW(rows)                                                             \
  const long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32; \
  const int lane = threadIdx.x % 32;                                               \
  if (row >= (rows)) return;

static int warp_blocks(long long rows) { return int((rows + 7) / 8); }  // 8 warps of 256 threads

template <class T>
__global__ void softmax_kernel(const T* x, T* y, long long rows, long long n, bool log) {
  WARP_ROW(rows)
  const T* xr = x + row * n;
  T* yr = y + row * n;
  T mx = T(-INFINITY);
  for (long long i = lane; i < n; i += 32) mx = xr[i] > mx ? xr[i] : mx;
  mx = warp_max(mx);
  T s = 0;
  for (long long i = lane; i < n; i += 32) s += exp(xr[i] - mx);
  s = warp_sum(s);
  const T lse = mx + ::log(s);
  for (long long i = lane; i < n; i += 32) yr[i] = log ? xr[i] - lse : exp(xr[i] - lse);
}

template <class T>
__global__ void softmax_bwd_kernel(const T* y, const T* gy, T* gx, long long rows, long long n, bool log) {
  WARP_ROW(rows)
  const T *yr = y + row * n, *gr = gy + row * n;
  T* o = gx + row * n;
  T s = 0;
  for (long long i = lane; i < n; i += 32) s += log ? gr[i] : gr[i] * yr[i];
  s = warp_sum(s);
  for (long long i = lane; i < n; i += 32) o[i] = log ? gr[i] - exp(yr[i]) * s : yr[i] * (gr[i] - s);
}

void CudaBackend::softmax(const Tensor& x, int64_t rows, int64_t n, bool log, const Tensor& out) {
  if (!rows) return;
  float_dispatch(x.dtype(), "softmax", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    softmax_kernel<T><<<warp_blocks(rows), 256, 0, stream()>>>(x.data<T>(), out.data<T>(), rows, n, log);
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& gy, int64_t rows, int64_t n, bool log, const Tensor& gx) {
  if (!rows) return;
  float_dispatch(y.dtype(), "softmax_backward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    softmax_bwd_kernel<T><<<warp_blocks(rows), 256, 0, stream()>>>(y.data<T>(), gy.data<T>(), gx.data<T>(), rows, n, log);
  });
  DG_LAUNCH_CHECK();
}

template <class T>
__global__ void layernorm_kernel(const T* x, const T* w, const T* b, T* y, T* mean, T* rstd, long long rows,
                                 long long n, T eps) {
  WARP_ROW(rows)
  const T* xr = x + row * n;
  T s = 0;
  for (long long i = lane; i < n; i += 32) s += xr[i];
  const T m = warp_sum(s) / T(n);
  T v = 0;
  for (long long i = lane; i < n; i += 32) v += (xr[i] - m) * (xr[i] - m);
  const T rs = T(1) / sqrt(warp_sum(v) / T(n) + eps);
  for (long long i = lane; i < n; i += 32) y[row * n + i] = (xr[i] - m) * rs * (w ? w[i] : T(1)) + (b ? b[i] : T(0));
  if (lane == 0) mean[row] = m, rstd[row] = rs;
}

template <class T>
__global__ void layernorm_dx_kernel(const T* x, const T* w, const T* mean, const T* rstd, const T* gy, T* gx,
                                    long long rows, long long n) {
  WARP_ROW(rows)
  const T *xr = x + row * n, *gr = gy + row * n;
  const T m = mean[row], rs = rstd[row];
  T s1 = 0, s2 = 0;
  for (long long i = lane; i < n; i += 32) {
    const T dh = gr[i] * (w ? w[i] : T(1));
    s1 += dh;
    s2 += dh * (xr[i] - m) * rs;
  }
  s1 = warp_sum(s1) / T(n);
  s2 = warp_sum(s2) / T(n);
  for (long long i = lane; i < n; i += 32) {
    const T dh = gr[i] * (w ? w[i] : T(1));
    gx[row * n + i] = rs * (dh - s1 - (xr[i] - m) * rs * s2);
  }
}

// gw[i] += sum_r gy * h, gb[i] += sum_r gy: a grid of (column tiles) x (row chunks), each
// thread sums its chunk for one column, then one atomicAdd per thread.
template <class T>
__global__ void layernorm_dwb_kernel(const T* x, const T* mean, const T* rstd, const T* gy, T* gw, T* gb,
                                     long long rows, long long n, long long chunk) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const long long r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
  T sw = 0, sb = 0;
  for (long long r = r0; r < r1; ++r) {
    const T g = gy[r * n + i];
    sw += g * (x[r * n + i] - mean[r]) * rstd[r];
    sb += g;
  }
  if (gw) atomicAdd(gw + i, sw);
  if (gb) atomicAdd(gb + i, sb);
}

void CudaBackend::layernorm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t rows, int64_t n, double eps,
                            const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  if (!rows) return;
  float_dispatch(x.dtype(), "layernorm", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    layernorm_kernel<T><<<warp_blocks(rows), 256, 0, stream()>>>(
        x.data<T>(), w.defined() ? w.data<T>() : nullptr, b.defined() ? b.data<T>() : nullptr, y.data<T>(),
        mean.data<T>(), rstd.data<T>(), rows, n, T(eps));
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                     const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx, const Tensor& gw,
                                     const Tensor& gb) {
  if (!rows) return;
  float_dispatch(x.dtype(), "layernorm_backward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (gx.defined())
      layernorm_dx_kernel<T><<<warp_blocks(rows), 256, 0, stream()>>>(
          x.data<T>(), w.defined() ? w.data<T>() : nullptr, mean.data<T>(), rstd.data<T>(), gy.data<T>(), gx.data<T>(),
          rows, n);
    if (gw.defined() || gb.defined()) {
      const long long chunk = 64;
      dim3 grid(unsigned((n + 127) / 128), unsigned((rows + chunk - 1) / chunk));
      layernorm_dwb_kernel<T><<<grid, 128, 0, stream()>>>(x.data<T>(), mean.data<T>(), rstd.data<T>(), gy.data<T>(),
                                                          gw.defined() ? gw.data<T>() : nullptr,
                                                          gb.defined() ? gb.data<T>() : nullptr, rows, n, chunk);
    }
  });
  DG_LAUNCH_CHECK();
}

template <class T>
__global__ void ce_kernel(const T* x, const long long* lab, T* loss, T* lse, long long rows, long long C, T eps,
                          int* bad) {
  WARP_ROW(rows)
  const T* xr = x + row * C;
  T mx = T(-INFINITY);
  for (long long i = lane; i < C; i += 32) mx = xr[i] > mx ? xr[i] : mx;
  mx = warp_max(mx);
  T s = 0, tot = 0;
  for (long long i = lane; i < C; i += 32) s += exp(xr[i] - mx), tot += xr[i];
  s = warp_sum(s);
  tot = warp_sum(tot);
  if (lane == 0) {
    const T l = mx + ::log(s);
    lse[row] = l;
    const long long y = lab[row];
    if (y >= C) {
      *bad = 1;  // reported by the host after the launch
      loss[row] = T(NAN);
    } else {
      loss[row] = y < 0 ? T(0) : l - (T(1) - eps) * xr[y] - eps / T(C) * tot;
    }
  }
}

template <class T>
__global__ void ce_bwd_kernel(const T* x, const long long* lab, const T* lse, const T* gl, T* gx, long long rows,
                              long long C, T eps) {
  const long long n = rows * C;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const long long r = i / C, c = i % C, y = lab[r];
    gx[i] = y < 0 ? T(0) : (exp(x[i] - lse[r]) - (eps / T(C) + (c == y ? T(1) - eps : T(0)))) * gl[r];
  }
}

void CudaBackend::cross_entropy(const Tensor& logits, const Tensor& labels, double smoothing, const Tensor& loss,
                                const Tensor& lse) {
  const int64_t rows = logits.size(0), C = logits.size(1);
  if (!rows) return;
  // Labels live on the device: an out-of-range one raises a flag read back here (one sync
  // per forward, which the caller's loss.item() would cost anyway).
  Tensor bad = Tensor::zeros({1}, DType::I32, Device::CUDA);
  float_dispatch(logits.dtype(), "cross_entropy", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ce_kernel<T><<<warp_blocks(rows), 256, 0, stream()>>>(logits.data<T>(),
                                                          reinterpret_cast<const long long*>(labels.data<int64_t>()),
                                                          loss.data<T>(), lse.data<T>(), rows, C, T(smoothing),
                                                          static_cast<int*>(bad.raw()));
  });
  DG_LAUNCH_CHECK();
  DG_CHECK(bad.item() == 0, "cross_entropy (cuda): a label is out of range for ", C, " classes (logits ", logits.desc(),
           ")");
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                                         const Tensor& gloss, double smoothing, const Tensor& glogits) {
  const int64_t rows = logits.size(0), C = logits.size(1);
  if (!rows) return;
  float_dispatch(logits.dtype(), "cross_entropy_backward", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ce_bwd_kernel<T><<<blocks_for(rows * C), 256, 0, stream()>>>(
        logits.data<T>(), reinterpret_cast<const long long*>(labels.data<int64_t>()), lse.data<T>(), gloss.data<T>(),
        glogits.data<T>(), rows, C, T(smoothing));
  });
  DG_LAUNCH_CHECK();
}

}  // namespace dg::cuda
