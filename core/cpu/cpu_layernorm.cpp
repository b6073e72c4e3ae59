// CPU LayerNorm over rows of length n, forward and backward.
//   forward:  h = (x - mean) * rstd,  y = h * w + b
//   backward: dx = rstd * (dh - mean(dh) - h * mean(dh * h)),  dh = gy * w
//             dw = sum_rows(gy * h),  db = sum_rows(gy)
// h is rebuilt in backward either from the input and its row statistics (the plain path) or
// from the output, h = (y - b) / w (the memory variant of autograd/ops/layer_norm.cpp), inside
// the same pass: the variant costs no extra pass over [rows, n].
// Row sums run in kLanes partial sums, which the compiler turns into vector adds (a single
// running sum is a dependency chain it may not reorder: a ViT-Ti LoRA step spent 3.4% of its
// time here with it). The order depends on n only, so results are deterministic.
#include <cmath>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/cpu/cpu_backend.h"

namespace dg::cpu {

namespace {
constexpr int kLanes = 8;

template <class T, class F>
T lane_sum(int64_t n, F term) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += term(i + j);
  T s = 0;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  for (; i < n; ++i) s += term(i);
  return s;
}

// w and b as arrays even without an affine (ones, zeros), so the row loops have no branches.
template <class T>
struct Affine {
  std::vector<T> ones, zeros;
  const T *w, *b;
  Affine(const Tensor& wt, const Tensor& bt, int64_t n) {
    if (!wt.defined()) ones.assign(size_t(n), T(1));
    if (!bt.defined()) zeros.assign(size_t(n), T(0));
    w = wt.defined() ? wt.data<T>() : ones.data();
    b = bt.defined() ? bt.data<T>() : zeros.data();
  }
};

// h of row r, columns [c0, c1), into h[0, c1 - c0): from the input ...
template <class T>
struct HFromInput {
  const T *x, *mean, *rstd;
  int64_t n;
  void operator()(int64_t r, int64_t c0, int64_t c1, T* h) const {
    const T* xr = x + r * n;
    const T m = mean[r], rs = rstd[r];
    for (int64_t c = c0; c < c1; ++c) h[c - c0] = (xr[c] - m) * rs;
  }
};
// ... or from the output: h = (y - b) / w
template <class T>
struct HFromOutput {
  const T *y, *w, *b;
  int64_t n;
  void operator()(int64_t r, int64_t c0, int64_t c1, T* h) const {
    const T* yr = y + r * n;
    for (int64_t c = c0; c < c1; ++c) h[c - c0] = (yr[c] - b[c]) / w[c];
  }
};

template <class T, class H>
void backward_rows(const H& h_of, const T* gy, const T* w, const T* rstd, int64_t rows, int64_t n, T* gx, T* gw,
                   T* gb) {
  if (gx) {
#pragma omp parallel if (rows * n > 32768)
    {
      std::vector<T> hbuf(size_t(n), T(0)), dhbuf(size_t(n), T(0));
      T *h = hbuf.data(), *dh = dhbuf.data();
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        h_of(r, 0, n, h);
        const T* gr = gy + r * n;
        for (int64_t i = 0; i < n; ++i) dh[i] = gr[i] * w[i];
        const T s1 = lane_sum<T>(n, [&](int64_t i) { return dh[i]; }) / T(n);
        const T s2 = lane_sum<T>(n, [&](int64_t i) { return dh[i] * h[i]; }) / T(n);
        const T rs = rstd[r];
        T* o = gx + r * n;
        for (int64_t i = 0; i < n; ++i) o[i] = rs * (dh[i] - s1 - h[i] * s2);
      }
    }
  }
  // gw += sum_r gy * h, gb += sum_r gy: the threads split the columns, and each column sums its
  // rows in order, so the result is the serial one whatever the thread count.
  if (gw || gb) {
#pragma omp parallel if (rows * n > 32768)
    {
      std::vector<T> hbuf(size_t(n), T(0));
#ifdef _OPENMP
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
      const int64_t t = 0, nt = 1;
#endif
      const int64_t c0 = n * t / nt, c1 = n * (t + 1) / nt;
      for (int64_t r = 0; r < rows && c1 > c0; ++r) {
        const T* gr = gy + r * n;
        if (gw) {
          h_of(r, c0, c1, hbuf.data());
          for (int64_t c = c0; c < c1; ++c) gw[c] += gr[c] * hbuf[size_t(c - c0)];
        }
        if (gb)
          for (int64_t c = c0; c < c1; ++c) gb[c] += gr[c];
      }
    }
  }
}

template <class T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
}  // namespace

void CpuBackend::layernorm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t rows, int64_t n,
                           double eps, const Tensor& y, const Tensor& mean, const Tensor& rstd) {
  DG_FLOAT_T(x.dtype(), "layernorm")
    const Affine<T> aff(w, b, n);
    const T* xp = x.data<T>();
    T *yp = y.data<T>(), *mp = mean.data<T>(), *rp = rstd.data<T>();
#pragma omp parallel for if (rows * n > 32768)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = xp + r * n;
      T* yr = yp + r * n;
      const T m = lane_sum<T>(n, [&](int64_t i) { return xr[i]; }) / T(n);
      const T var = lane_sum<T>(n, [&](int64_t i) { return (xr[i] - m) * (xr[i] - m); }) / T(n);
      const T rs = T(1) / std::sqrt(var + T(eps));
      mp[r] = m;
      rp[r] = rs;
      for (int64_t i = 0; i < n; ++i) yr[i] = (xr[i] - m) * rs * aff.w[i] + aff.b[i];
    }
  });
}

void CpuBackend::layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                                    const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx,
                                    const Tensor& gw, const Tensor& gb) {
  DG_FLOAT_T(x.dtype(), "layernorm_backward")
    const Affine<T> aff(w, Tensor(), n);
    const HFromInput<T> h_of{x.data<T>(), mean.data<T>(), rstd.data<T>(), n};
    backward_rows<T>(h_of, gy.data<T>(), aff.w, rstd.data<T>(), rows, n, data_or_null<T>(gx), data_or_null<T>(gw),
                     data_or_null<T>(gb));
  });
}

void CpuBackend::layernorm_backward_from_output(const Tensor& y, const Tensor& w, const Tensor& b, const Tensor& rstd,
                                                const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx,
                                                const Tensor& gw, const Tensor& gb) {
  DG_FLOAT_T(y.dtype(), "layernorm_backward_from_output")
    const Affine<T> aff(w, b, n);
    const HFromOutput<T> h_of{y.data<T>(), aff.w, aff.b, n};
    backward_rows<T>(h_of, gy.data<T>(), aff.w, rstd.data<T>(), rows, n, data_or_null<T>(gx), data_or_null<T>(gw),
                     data_or_null<T>(gb));
  });
}

}  // namespace dg::cpu
