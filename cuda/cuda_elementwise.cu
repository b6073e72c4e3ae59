// CUDA: elementwise ops with broadcasting (strides passed by value), reductions, argmax.
// The scalar math is core/elementwise_math.h, shared with the CPU backend.
#include "core/elementwise_math.h"
#include "cuda/cuda_backend.h"

namespace dg::cuda {

__device__ __forceinline__ long long offset_of(long long i, const Strided& s) {
  long long o = 0;
  for (int d = s.nd - 1; d >= 0; --d) {
    o += (i % s.shape[d]) * s.stride[d];
    i /= s.shape[d];
  }
  return o;
}

#define GRID_LOOP(i, n) \
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

template <class T>
__global__ void unary_kernel(UnaryOp op, const T* x, Strided xs, bool dense, T* y, long long n, T a) {
  GRID_LOOP(i, n) y[i] = unary_value(op, x[dense ? i : offset_of(i, xs)], a);
}
template <class T>
__global__ void unary_bwd_kernel(UnaryOp op, const T* x, const T* y, const T* gy, T* gx, long long n, T a) {
  GRID_LOOP(i, n) gx[i] = gy[i] * unary_derivative(op, x ? x[i] : T(0), y ? y[i] : T(0), a);
}
template <class T>
__global__ void binary_kernel(BinaryOp op, const T* a, Strided as, const T* b, Strided bs, bool dense, T* y, long long n) {
  GRID_LOOP(i, n) y[i] = binary_value(op, a[dense ? i : offset_of(i, as)], b[dense ? i : offset_of(i, bs)]);
}
template <class T>
__global__ void where_kernel(const T* c, const T* a, const T* b, T* y, long long n) {
  GRID_LOOP(i, n) y[i] = c[i] != T(0) ? a[i] : b[i];
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
  const long long n = out.numel();
  if (!n) return;
  float_dispatch(out.dtype(), unary_name(op), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const bool dense = x.is_contiguous() && x.shape() == out.shape();
    unary_kernel<T><<<blocks_for(n), 256, 0, stream()>>>(op, static_cast<const T*>(x.raw()), strided_of(x, out.shape()),
                                                         dense, out.data<T>(), n, T(alpha));
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& gx,
                                 double alpha) {
  const long long n = gx.numel();
  if (!n) return;
  float_dispatch(gx.dtype(), unary_name(op), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    unary_bwd_kernel<T><<<blocks_for(n), 256, 0, stream()>>>(op, x.defined() ? x.data<T>() : nullptr,
                                                             y.defined() ? y.data<T>() : nullptr, gy.data<T>(),
                                                             gx.data<T>(), n, T(alpha));
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  const long long n = out.numel();
  if (!n) return;
  float_dispatch(out.dtype(), binary_name(op), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const bool dense = a.is_contiguous() && b.is_contiguous() && a.shape() == out.shape() && b.shape() == out.shape();
    Strided as, bs;
    strided_joint(out.shape(), {{&a, &as}, {&b, &bs}});
    binary_kernel<T><<<blocks_for(n), 256, 0, stream()>>>(op, static_cast<const T*>(a.raw()), as,
                                                          static_cast<const T*>(b.raw()), bs, dense,
                                                          static_cast<T*>(out.raw()), n);
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  const long long n = out.numel();
  if (!n) return;
  float_dispatch(out.dtype(), "where", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    where_kernel<T><<<blocks_for(n), 256, 0, stream()>>>(cond.data<T>(), a.data<T>(), b.data<T>(), out.data<T>(), n);
  });
  DG_LAUNCH_CHECK();
}

// ---- reductions over the middle dim of [outer, n, inner] ----
template <class T>
__device__ __forceinline__ T warp_reduce(T v, bool is_max) {
  for (int o = 16; o > 0; o >>= 1) {
    T w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? (w > v ? w : v) : v + w;
  }
  return v;
}

// Each output (o, j) sums the n values x[o, k, j]. When there are few outputs (a bias
// gradient: outer = 1, n = tokens, inner = channels; a loss mean: one output), n is cut
// into S segments summed in parallel into a [outer, S, inner] buffer, which is then
// reduced the same way: two passes, no atomics, so the result is deterministic.

// inner == 1: one warp per (o, segment s), lanes strided across the segment (coalesced)
template <class T>
__global__ void reduce_rows_kernel(const T* x, T* y, long long outer, long long n, long long S, long long seg,
                                   bool is_max) {
  const int lane = threadIdx.x % 32;
  const long long warps = (long long)gridDim.x * (blockDim.x / 32);
  // whole warps share r, so every lane reaches the shuffles together
  for (long long r = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32; r < outer * S; r += warps) {
    const long long o = r / S, k0 = (r % S) * seg, k1 = min(n, k0 + seg);
    T acc = is_max ? T(-INFINITY) : T(0);
    for (long long k = k0 + lane; k < k1; k += 32) {
      const T v = x[o * n + k];
      acc = is_max ? (v > acc ? v : acc) : acc + v;
    }
    acc = warp_reduce(acc, is_max);
    if (lane == 0) y[r] = acc;
  }
}
// inner > 1: one thread per (o, s, j), coalesced across j
template <class T>
__global__ void reduce_cols_kernel(const T* x, T* y, long long outer, long long n, long long inner, long long S,
                                   long long seg, bool is_max) {
  GRID_LOOP(i, outer * S * inner) {
    const long long j = i % inner, s = (i / inner) % S, o = i / (inner * S);
    const long long k1 = min(n, (s + 1) * seg);
    T acc = is_max ? T(-INFINITY) : T(0);
    for (long long k = s * seg; k < k1; ++k) {
      const T v = x[(o * n + k) * inner + j];
      acc = is_max ? (v > acc ? v : acc) : acc + v;
    }
    y[i] = acc;
  }
}
template <class T>
__global__ void argmax_kernel(const T* x, long long* y, long long outer, long long n, long long inner) {
  GRID_LOOP(i, outer * inner) {
    const long long o = i / inner, j = i % inner;
    long long best = 0;
    for (long long k = 1; k < n; ++k)
      if (x[(o * n + k) * inner + j] > x[(o * n + best) * inner + j]) best = k;
    y[i] = best;
  }
}

void CudaBackend::reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out) {
  if (!out.numel()) return;
  if (n == 0) return fill(out, op == ReduceOp::Sum ? 0.0 : -INFINITY);
  // Threads to keep the GPU busy (~132 SMs x 2048); a warp per unit when inner == 1.
  const long long target = 1LL << 18, units = inner == 1 ? outer * 32 : outer * inner;
  long long S = 1;
  if (units < target / 4 && n >= 2048) S = std::min<long long>((target + units - 1) / units, (n + 255) / 256);
  const long long seg = (n + S - 1) / S;
  S = (n + seg - 1) / seg;
  Tensor part = S > 1 ? Tensor::empty({outer, S, inner}, x.dtype(), Device::CUDA) : out;
  float_dispatch(x.dtype(), "reduce", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const bool mx = op == ReduceOp::Max;
    if (inner == 1)
      reduce_rows_kernel<T><<<blocks_for(outer * S * 32), 256, 0, stream()>>>(x.data<T>(), part.data<T>(), outer, n, S,
                                                                             seg, mx);
    else
      reduce_cols_kernel<T><<<blocks_for(outer * S * inner), 256, 0, stream()>>>(x.data<T>(), part.data<T>(), outer, n,
                                                                                 inner, S, seg, mx);
  });
  DG_LAUNCH_CHECK();
  if (S > 1) reduce(op, part, outer, S, inner, out);
}

void CudaBackend::argmax(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out) {
  if (!out.numel()) return;
  float_dispatch(x.dtype(), "argmax", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    argmax_kernel<T><<<blocks_for(outer * inner), 256, 0, stream()>>>(
        x.data<T>(), reinterpret_cast<long long*>(out.data<int64_t>()), outer, n, inner);
  });
  DG_LAUNCH_CHECK();
}

template <class T>
__global__ void sum_squares_kernel(const T* x, long long n, double* out) {
  double acc = 0;
  GRID_LOOP(i, n) acc += double(x[i]) * double(x[i]);
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (threadIdx.x % 32 == 0) atomicAdd(out, acc);
}

double CudaBackend::sum_squares(const Tensor& x) {
  Tensor c = x.contiguous();
  Tensor acc = Tensor::zeros({1}, DType::F64, Device::CUDA);
  if (c.numel())
    float_dispatch(c.dtype(), "sum_squares", [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      sum_squares_kernel<T><<<blocks_for(c.numel()) < 1024 ? blocks_for(c.numel()) : 1024, 256, 0, stream()>>>(c.data<T>(), c.numel(),
                                                                                         acc.data<double>());
    });
  DG_LAUNCH_CHECK();
  return acc.item();
}

}  // namespace dg::cuda
