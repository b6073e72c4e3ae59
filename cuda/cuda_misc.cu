// CUDA: counter-based random fills (the same Philox streams as the CPU), patch
// extraction and its adjoint, row gather/scatter, and the fused AdamW step with masks.
#include "core/philox.h"
#include "cuda/cuda_backend.h"

namespace dg::cuda {

#define GRID_LOOP(i, n) \
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

template <class T>
__global__ void uniform_kernel(T* p, long long n, unsigned long long seed, unsigned long long off, double lo, double hi) {
  // an explicit fused multiply-add: what g++ -march=native emits for the CPU's lo + (hi-lo)*u,
  // so the bits match the CPU's (on a CPU without FMA they differ in the last bit at most)
  GRID_LOOP(i, n) p[i] = T(fma(hi - lo, double(philox::uniform(seed, off + (unsigned long long)i)), lo));
}
template <class T>
__global__ void normal_kernel(T* p, long long n, unsigned long long seed, unsigned long long off, double mean, double sd) {
  GRID_LOOP(i, n) p[i] = T(fma(sd, double(philox::normal(seed, off + (unsigned long long)i)), mean));
}

void CudaBackend::random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi) {
  if (!out.numel()) return;
  float_dispatch(out.dtype(), "random_uniform", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    uniform_kernel<T><<<blocks_for(out.numel()), 256, 0, stream()>>>(out.data<T>(), out.numel(), seed, offset, lo, hi);
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double sd) {
  if (!out.numel()) return;
  float_dispatch(out.dtype(), "random_normal", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    normal_kernel<T><<<blocks_for(out.numel()), 256, 0, stream()>>>(out.data<T>(), out.numel(), seed, offset, mean, sd);
  });
  DG_LAUNCH_CHECK();
}

// one thread per column element of [B, gh*gw, C*p*p]; x index follows (c, ky, kx)
template <class T>
__global__ void im2col_kernel(const T* x, T* cols, long long B, long long C, long long H, long long W, long long p, bool add) {
  const long long gh = H / p, gw = W / p, row = C * p * p, n = B * gh * gw * row;
  GRID_LOOP(i, n) {
    const long long col = i % row, patch = i / row, b = patch / (gh * gw), pp = patch % (gh * gw);
    const long long py = pp / gw, px = pp % gw, c = col / (p * p), ky = (col / p) % p, kx = col % p;
    const long long xi = ((b * C + c) * H + py * p + ky) * W + px * p + kx;
    if (add) cols[xi] += x[i];  // col2im: here `x` is the columns and `cols` the image (a bijection: no races)
    else cols[i] = x[xi];
  }
}

void CudaBackend::im2col(const Tensor& x, int64_t p, const Tensor& cols) {
  if (!cols.numel()) return;
  float_dispatch(x.dtype(), "im2col", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    im2col_kernel<T><<<blocks_for(cols.numel()), 256, 0, stream()>>>(x.data<T>(), cols.data<T>(), x.size(0), x.size(1),
                                                                     x.size(2), x.size(3), p, false);
  });
  DG_LAUNCH_CHECK();
}

void CudaBackend::col2im(const Tensor& cols, int64_t p, const Tensor& x) {
  if (!cols.numel()) return;
  float_dispatch(x.dtype(), "col2im", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    im2col_kernel<T><<<blocks_for(cols.numel()), 256, 0, stream()>>>(cols.data<T>(), x.data<T>(), x.size(0), x.size(1),
                                                                     x.size(2), x.size(3), p, true);
  });
  DG_LAUNCH_CHECK();
}

template <class T>
__global__ void index_select_kernel(const T* x, const long long* idx, T* out, long long m, long long d, long long rows,
                                    int* bad) {
  GRID_LOOP(i, m * d) {
    const long long r = idx[i / d];
    if (r < 0 || r >= rows) {
      *bad = 1;
      continue;
    }
    out[i] = x[r * d + i % d];
  }
}
template <class T>
__global__ void index_add_kernel(const T* g, const long long* idx, T* gx, long long m, long long d, long long rows) {
  GRID_LOOP(i, m * d) {
    const long long r = idx[i / d];
    if (r >= 0 && r < rows) atomicAdd(gx + r * d + i % d, g[i]);  // never write outside gx
  }
}

void CudaBackend::index_select(const Tensor& x, const Tensor& idx, const Tensor& out) {
  const long long rows = x.size(0), d = x.numel() / std::max<long long>(rows, 1), m = idx.numel();
  if (!m || !d) return;
  Tensor bad = Tensor::zeros({1}, DType::I32, Device::CUDA);
  float_dispatch(x.dtype(), "index_select", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    index_select_kernel<T><<<blocks_for(m * d), 256, 0, stream()>>>(
        x.data<T>(), reinterpret_cast<const long long*>(idx.data<int64_t>()), out.data<T>(), m, d, rows,
        static_cast<int*>(bad.raw()));
  });
  DG_LAUNCH_CHECK();
  DG_CHECK(bad.item() == 0, "index_select (cuda): an index is out of range for ", rows, " rows");
}

void CudaBackend::index_add(const Tensor& gout, const Tensor& idx, const Tensor& gx) {
  const long long rows = gx.size(0), d = gx.numel() / std::max<long long>(rows, 1), m = idx.numel();
  if (!m || !d) return;
  float_dispatch(gx.dtype(), "index_add", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    index_add_kernel<T><<<blocks_for(m * d), 256, 0, stream()>>>(
        gout.data<T>(), reinterpret_cast<const long long*>(idx.data<int64_t>()), gx.data<T>(), m, d, rows);
  });
  DG_LAUNCH_CHECK();
}

template <class T>
__global__ void adamw_kernel(T* p, const T* g, T* m, T* v, const T* mask, long long n, T b1, T b2, T a1, T a2,
                             T eps, T decay, T neg_step, T sqrt_bc2) {
  // Same op order and scalars as the CPU kernel (core/cpu/cpu_misc.cpp) and torch.optim.AdamW:
  // a1 = T(1 - b1) and a2 = T(1 - b2) are formed in double (1 - T(b2) is off by 1e-5 in float).
  GRID_LOOP(i, n) {
    if (mask && mask[i] == T(0)) continue;
    const T gi = g[i];
    m[i] = m[i] * b1 + a1 * gi;
    v[i] = v[i] * b2 + a2 * gi * gi;
    p[i] = p[i] * decay + neg_step * m[i] / (sqrt(v[i]) / sqrt_bc2 + eps);
  }
}

void CudaBackend::adamw(const AdamW& h, const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                        const Tensor& mask) {
  const long long n = param.numel();
  if (!n) return;
  const double bc1 = 1.0 - std::pow(h.beta1, double(h.step)), bc2 = 1.0 - std::pow(h.beta2, double(h.step));
  float_dispatch(param.dtype(), "adamw", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    adamw_kernel<T><<<blocks_for(n), 256, 0, stream()>>>(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(),
                                                         mask.defined() ? mask.data<T>() : nullptr, n, T(h.beta1),
                                                         T(h.beta2), T(1.0 - h.beta1), T(1.0 - h.beta2), T(h.eps),
                                                         T(1.0 - h.lr * h.weight_decay), T(-(h.lr / bc1)),
                                                         T(std::sqrt(bc2)));
  });
  DG_LAUNCH_CHECK();
}

}  // namespace dg::cuda
