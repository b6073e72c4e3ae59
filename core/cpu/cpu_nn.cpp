// CPU: softmax and fused cross-entropy, forward and backward (LayerNorm: cpu_layernorm.cpp).
// Row statistics accumulate in double-free fashion in T; f64 runs use double throughout.
#include <cmath>
#include <limits>

#include "core/cpu/cpu_backend.h"

namespace dg::cpu {

void CpuBackend::softmax(const Tensor& x, int64_t rows, int64_t n, bool log, const Tensor& out) {
  DG_FLOAT_T(x.dtype(), "softmax")
    const T* xp = x.data<T>();
    T* y = out.data<T>();
#pragma omp parallel for if (rows * n > 32768)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * n;
      T* yr = y + r * n;
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t i = 0; i < n; ++i) mx = xr[i] > mx ? xr[i] : mx;
      T sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        T e = std::exp(xr[i] - mx);
        sum += e;
        if (!log) yr[i] = e;
      }
      if (log) {
        T lse = mx + std::log(sum);
        for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] - lse;
      } else {
        T inv = T(1) / sum;
        for (int64_t i = 0; i < n; ++i) yr[i] *= inv;
      }
    }
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& gy, int64_t rows, int64_t n, bool log,
                                  const Tensor& gx) {
  DG_FLOAT_T(y.dtype(), "softmax_backward")
    const T *yp = y.data<T>(), *g = gy.data<T>();
    T* o = gx.data<T>();
#pragma omp parallel for if (rows * n > 32768)
    for (int64_t r = 0; r < rows; ++r) {
      const T *yr = yp + r * n, *gr = g + r * n;
      T* orow = o + r * n;
      if (log) {  // gx = gy - softmax * sum(gy)
        T s = 0;
        for (int64_t i = 0; i < n; ++i) s += gr[i];
        for (int64_t i = 0; i < n; ++i) orow[i] = gr[i] - std::exp(yr[i]) * s;
      } else {  // gx = y * (gy - sum(gy * y))
        T s = 0;
        for (int64_t i = 0; i < n; ++i) s += gr[i] * yr[i];
        for (int64_t i = 0; i < n; ++i) orow[i] = yr[i] * (gr[i] - s);
      }
    }
  });
}

void CpuBackend::cross_entropy(const Tensor& logits, const Tensor& labels, double smoothing,
                               const Tensor& loss, const Tensor& lse) {
  const int64_t rows = logits.size(0), C = logits.size(1);
  const int64_t* lab = labels.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    DG_CHECK(lab[r] < C, "cross_entropy: label ", lab[r], " at row ", r, " is out of range for ", C, " classes");
  DG_FLOAT_T(logits.dtype(), "cross_entropy")
    const T* xp = logits.data<T>();
    T *lp = loss.data<T>(), *sp = lse.data<T>();
    const T eps = T(smoothing);
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * C;
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t i = 0; i < C; ++i) mx = xr[i] > mx ? xr[i] : mx;
      T sum = 0, tot = 0;
      for (int64_t i = 0; i < C; ++i) {
        sum += std::exp(xr[i] - mx);
        tot += xr[i];
      }
      T l = mx + std::log(sum);
      sp[r] = l;
      if (lab[r] < 0) { lp[r] = 0; continue; }
      // target = (1 - eps) * onehot + eps / C  ->  loss = lse - (1-eps) x_y - eps/C sum x
      lp[r] = l - (T(1) - eps) * xr[lab[r]] - eps / T(C) * tot;
    }
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse,
                                        const Tensor& gloss, double smoothing, const Tensor& glogits) {
  const int64_t rows = logits.size(0), C = logits.size(1);
  const int64_t* lab = labels.data<int64_t>();
  DG_FLOAT_T(logits.dtype(), "cross_entropy_backward")
    const T *xp = logits.data<T>(), *sp = lse.data<T>(), *gl = gloss.data<T>();
    T* o = glogits.data<T>();
    const T eps = T(smoothing);
    for (int64_t r = 0; r < rows; ++r) {
      T* orow = o + r * C;
      if (lab[r] < 0) {
        for (int64_t i = 0; i < C; ++i) orow[i] = 0;
        continue;
      }
      for (int64_t i = 0; i < C; ++i) {
        T target = eps / T(C) + (i == lab[r] ? T(1) - eps : T(0));
        orow[i] = (std::exp(xp[r * C + i] - sp[r]) - target) * gl[r];
      }
    }
  });
}

}  // namespace dg::cpu
