// CPU: random fills, patch extraction, row gather/scatter, fused AdamW.
#include <cmath>

#include "core/cpu/cpu_backend.h"
#include "core/philox.h"

namespace dg::cpu {

void CpuBackend::random_uniform(const Tensor& out, uint64_t seed, uint64_t offset, double lo, double hi) {
  DG_FLOAT_T(out.dtype(), "random_uniform")
    T* p = out.data<T>();
    const int64_t n = out.numel();
    for (int64_t i = 0; i < n; ++i) p[i] = T(lo + (hi - lo) * double(philox::uniform(seed, offset + uint64_t(i))));
  });
}

void CpuBackend::random_normal(const Tensor& out, uint64_t seed, uint64_t offset, double mean, double std) {
  DG_FLOAT_T(out.dtype(), "random_normal")
    T* p = out.data<T>();
    const int64_t n = out.numel();
    for (int64_t i = 0; i < n; ++i) p[i] = T(mean + std * double(philox::normal(seed, offset + uint64_t(i))));
  });
}

// x [B,C,H,W] -> cols [B, (H/p)*(W/p), C*p*p]; column index = (c*p + ky)*p + kx
void CpuBackend::im2col(const Tensor& x, int64_t p, const Tensor& cols) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), gh = H / p, gw = W / p;
  DG_FLOAT_T(x.dtype(), "im2col")
    const T* xp = x.data<T>();
    T* o = cols.data<T>();
#pragma omp parallel for collapse(2) if (B * C * H * W > 65536)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t py = 0; py < gh; ++py)
        for (int64_t px = 0; px < gw; ++px) {
          T* row = o + ((b * gh + py) * gw + px) * C * p * p;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t ky = 0; ky < p; ++ky) {
              const T* src = xp + ((b * C + c) * H + py * p + ky) * W + px * p;
              for (int64_t kx = 0; kx < p; ++kx) row[(c * p + ky) * p + kx] = src[kx];
            }
        }
  });
}

void CpuBackend::col2im(const Tensor& cols, int64_t p, const Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), gh = H / p, gw = W / p;
  DG_FLOAT_T(x.dtype(), "col2im")
    const T* ip = cols.data<T>();
    T* xp = x.data<T>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t py = 0; py < gh; ++py)
        for (int64_t px = 0; px < gw; ++px) {
          const T* row = ip + ((b * gh + py) * gw + px) * C * p * p;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t ky = 0; ky < p; ++ky) {
              T* dst = xp + ((b * C + c) * H + py * p + ky) * W + px * p;
              for (int64_t kx = 0; kx < p; ++kx) dst[kx] += row[(c * p + ky) * p + kx];
            }
        }
  });
}

void CpuBackend::index_select(const Tensor& x, const Tensor& idx, const Tensor& out) {
  const int64_t n = x.size(0), d = x.numel() / std::max<int64_t>(n, 1), m = idx.numel();
  const int64_t* ip = idx.data<int64_t>();
  for (int64_t i = 0; i < m; ++i)
    DG_CHECK(ip[i] >= 0 && ip[i] < n, "index_select: index ", ip[i], " out of range for ", n, " rows");
  DG_FLOAT_T(x.dtype(), "index_select")
    const T* xp = x.data<T>();
    T* o = out.data<T>();
    for (int64_t i = 0; i < m; ++i) std::copy(xp + ip[i] * d, xp + (ip[i] + 1) * d, o + i * d);
  });
}

void CpuBackend::index_add(const Tensor& gout, const Tensor& idx, const Tensor& gx) {
  const int64_t n = gx.size(0), d = gx.numel() / std::max<int64_t>(n, 1), m = idx.numel();
  const int64_t* ip = idx.data<int64_t>();
  DG_FLOAT_T(gx.dtype(), "index_add")
    const T* g = gout.data<T>();
    T* o = gx.data<T>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < d; ++j) o[ip[i] * d + j] += g[i * d + j];
  });
}

void CpuBackend::adamw(const AdamW& h, const Tensor& param, const Tensor& grad, const Tensor& m,
                       const Tensor& v, const Tensor& mask) {
  // torch.optim.AdamW (1.13, single-tensor path), op for op, so float32 results agree to
  // the last bits up to FMA contraction:
  //   p *= 1 - lr*wd;  m = m*b1 + (1-b1)*g;  v = v*b2 + (1-b2)*g*g;
  //   p += (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
  // Python computes the scalars (1-b1, lr/bc1, sqrt(bc2), ...) in double and the kernels
  // cast them to T, so they are formed in double here too: T(1 - b1) != 1 - T(b1) in float.
  DG_FLOAT_T(param.dtype(), "adamw")
    T *p = param.data<T>(), *mp = m.data<T>(), *vp = v.data<T>();
    const T* g = grad.data<T>();
    const T* mk = mask.defined() ? mask.data<T>() : nullptr;
    const int64_t n = param.numel();
    const double bc1 = 1.0 - std::pow(h.beta1, double(h.step)), bc2 = 1.0 - std::pow(h.beta2, double(h.step));
    const T b1 = T(h.beta1), b2 = T(h.beta2), a1 = T(1.0 - h.beta1), a2 = T(1.0 - h.beta2), eps = T(h.eps);
    const T decay = T(1.0 - h.lr * h.weight_decay), neg_step = T(-(h.lr / bc1)), sqrt_bc2 = T(std::sqrt(bc2));
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
      if (mk && mk[i] == T(0)) continue;  // masked out: no decay, no moments, no step
      p[i] *= decay;                      // decoupled weight decay comes first
      mp[i] = mp[i] * b1 + a1 * g[i];
      vp[i] = vp[i] * b2 + a2 * g[i] * g[i];
      const T denom = std::sqrt(vp[i]) / sqrt_bc2 + eps;
      p[i] = p[i] + neg_step * mp[i] / denom;  // addcdiv: self + value * t1 / t2
    }
  });
}

}  // namespace dg::cpu
