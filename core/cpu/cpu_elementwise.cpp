// CPU: copies, fills, binary elementwise ops with broadcasting, reductions.
// (Memory: cpu_memory.cpp; unary ops and their derivatives: cpu_unary.cpp.)
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/strided.h"
#include "core/elementwise_math.h"

namespace dg::cpu {

Backend* make_cpu_backend_impl() { return new CpuBackend(); }

// ---- copy / fill ----
// cvt(s) turns one source element into a destination element (a cast, or a bf16 rounding).
template <class S, class D, class Cvt>
static void copy_typed(const Tensor& src, const Tensor& dst, Cvt cvt) {
  const S* s = static_cast<const S*>(src.raw());
  D* d = static_cast<D*>(dst.raw());
  parallel_for_each_strided<2>(dst.shape(), {&dst.strides(), &src.strides()},
                               [&](int64_t n, const std::array<int64_t, 2>& o, const std::array<int64_t, 2>& st) {
                                 if (st[0] == 1 && st[1] == 1) {
                                   for (int64_t i = 0; i < n; ++i) d[o[0] + i] = cvt(s[o[1] + i]);
                                 } else {
                                   for (int64_t i = 0; i < n; ++i) d[o[0] + i * st[0]] = cvt(s[o[1] + i * st[1]]);
                                 }
                               });
}
template <class S, class D>
static void copy_typed(const Tensor& src, const Tensor& dst) {
  copy_typed<S, D>(src, dst, [](S v) { return D(v); });
}

// Load any dtype as double / store double as any dtype (the slow, general path).
static double load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::I64: return double(static_cast<const int64_t*>(p)[i]);
    case DType::I32: return static_cast<const int32_t*>(p)[i];
  }
  return 0;
}
static void store(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(p)[i] = float(v); break;
    case DType::F64: static_cast<double*>(p)[i] = v; break;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(float(v)); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(float(v)); break;
    case DType::I64: static_cast<int64_t*>(p)[i] = int64_t(v); break;
    case DType::I32: static_cast<int32_t*>(p)[i] = int32_t(v); break;
  }
}

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  DG_CHECK(src.device() == Device::CPU && dst.device() == Device::CPU, "cpu copy: ", src.desc(), " -> ",
           dst.desc());
  DG_CHECK(src.shape() == dst.shape(), "copy: shapes ", shape_str(src.shape()), " vs ", shape_str(dst.shape()));
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    const char* s = static_cast<const char*>(src.raw());
    char* d = static_cast<char*>(dst.raw());
    const int64_t nb = int64_t(src.nbytes());
    if (nb < (1 << 20) || (s < d + nb && d < s + nb)) {  // small, or overlapping views of one storage
      std::memmove(d, s, size_t(nb));
      return;
    }
    const int64_t chunk = 1 << 18;
#pragma omp parallel for
    for (int64_t i = 0; i < nb; i += chunk) std::memcpy(d + i, s + i, size_t(std::min(chunk, nb - i)));
    return;
  }
  if (src.dtype() == DType::F32 && dst.dtype() == DType::F32) return copy_typed<float, float>(src, dst);
  if (src.dtype() == DType::F64 && dst.dtype() == DType::F64) return copy_typed<double, double>(src, dst);
  if (src.dtype() == DType::F32 && dst.dtype() == DType::F64) return copy_typed<float, double>(src, dst);
  if (src.dtype() == DType::F64 && dst.dtype() == DType::F32) return copy_typed<double, float>(src, dst);
  // mixed precision: f32 <-> bf16 (round to nearest even), bf16 views made contiguous
  if (src.dtype() == DType::F32 && dst.dtype() == DType::BF16)
    return copy_typed<float, uint16_t>(src, dst, [](float v) { return f32_to_bf16(v); });
  if (src.dtype() == DType::BF16 && dst.dtype() == DType::F32)
    return copy_typed<uint16_t, float>(src, dst, [](uint16_t v) { return bf16_to_f32(v); });
  if (src.dtype() == DType::BF16 && dst.dtype() == DType::BF16) return copy_typed<uint16_t, uint16_t>(src, dst);
  const void* s = src.raw();
  void* d = dst.raw();
  for_each_strided<2>(dst.shape(), {&dst.strides(), &src.strides()},
                      [&](int64_t n, const std::array<int64_t, 2>& o, const std::array<int64_t, 2>& st) {
                        for (int64_t i = 0; i < n; ++i)
                          store(d, dst.dtype(), o[0] + i * st[0], load(s, src.dtype(), o[1] + i * st[1]));
                      });
}

template <class T>
static void fill_contiguous(T* d, int64_t n, T v) {
#pragma omp parallel for if (n > 65536)
  for (int64_t i = 0; i < n; ++i) d[i] = v;
}

void CpuBackend::fill(const Tensor& dst, double v) {
  void* d = dst.raw();
  if (dst.is_contiguous() && dst.dtype() == DType::F32) return fill_contiguous(static_cast<float*>(d), dst.numel(), float(v));
  if (dst.is_contiguous() && dst.dtype() == DType::F64) return fill_contiguous(static_cast<double*>(d), dst.numel(), v);
  parallel_for_each_strided<1>(dst.shape(), {&dst.strides()},
                      [&](int64_t n, const std::array<int64_t, 1>& o, const std::array<int64_t, 1>& st) {
                        for (int64_t i = 0; i < n; ++i) store(d, dst.dtype(), o[0] + i * st[0], v);
                      });
}

// ---- binary ----
void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  float_dispatch(out.dtype(), binary_name(op), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* y = out.data<T>();
    const T* ap = static_cast<const T*>(a.raw());
    const T* bp = static_cast<const T*>(b.raw());
    // run(f) with f the op as its own function, so the op switch stays out of every loop and
    // each loop vectorises
    auto with_op = [op](auto run) {
      switch (op) {
        case BinaryOp::Add: return run([](T u, T v) { return u + v; });
        case BinaryOp::Sub: return run([](T u, T v) { return u - v; });
        case BinaryOp::Mul: return run([](T u, T v) { return u * v; });
        case BinaryOp::Div: return run([](T u, T v) { return u / v; });
        default: return run([op](T u, T v) { return binary_value(op, u, v); });
      }
    };
    if (a.is_contiguous() && b.is_contiguous() && a.shape() == out.shape() && b.shape() == out.shape()) {
      const int64_t n = out.numel();
      return with_op([&](auto f) {
#pragma omp parallel for if (n > 32768)
        for (int64_t i = 0; i < n; ++i) y[i] = f(ap[i], bp[i]);
      });
    }
    // Broadcasting / strided: row by row, and the common row shapes (both dense, or one side a broadcast scalar: a bias, a per-channel scale, a per-row
    // statistic) in loops that vectorise.
    Shape cs = contiguous_strides(out.shape());
    with_op([&](auto f) {
      parallel_for_each_strided<3>(out.shape(), {&cs, &a.strides(), &b.strides()},
                                   [&](int64_t n, const std::array<int64_t, 3>& o, const std::array<int64_t, 3>& st) {
                                     T* yo = y + o[0];
                                     const T *ao = ap + o[1], *bo = bp + o[2];
                                     if (st[1] == 1 && st[2] == 1) {
                                       for (int64_t i = 0; i < n; ++i) yo[i] = f(ao[i], bo[i]);
                                     } else if (st[1] == 1 && st[2] == 0) {
                                       const T v = *bo;
                                       for (int64_t i = 0; i < n; ++i) yo[i] = f(ao[i], v);
                                     } else if (st[1] == 0 && st[2] == 1) {
                                       const T u = *ao;
                                       for (int64_t i = 0; i < n; ++i) yo[i] = f(u, bo[i]);
                                     } else {
                                       for (int64_t i = 0; i < n; ++i) yo[i] = f(ao[i * st[1]], bo[i * st[2]]);
                                     }
                                   });
    });
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  float_dispatch(out.dtype(), "where", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T *c = cond.data<T>(), *ap = a.data<T>(), *bp = b.data<T>();
    T* y = out.data<T>();
    const int64_t n = out.numel();
#pragma omp parallel for if (n > 65536)
    for (int64_t i = 0; i < n; ++i) y[i] = c[i] != T(0) ? ap[i] : bp[i];
  });
}

// ---- reductions ----
void CpuBackend::reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t n, int64_t inner,
                        const Tensor& out) {
  float_dispatch(x.dtype(), "reduce", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = x.data<T>();
    T* y = out.data<T>();
#ifdef _OPENMP
    const int64_t nt = omp_get_max_threads();
#else
    const int64_t nt = 1;
#endif
    // Few outer slices (a bias gradient: outer 1, n rows, inner features) split their
    // columns over the threads; each output element still sums in the same order.
    const int64_t jb = outer >= nt ? inner : std::max<int64_t>(16, (inner + nt - 1) / nt);
    const int64_t nb = (inner + jb - 1) / jb;
#pragma omp parallel for collapse(2) if (outer * n * inner > 65536)
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t j0 = b * jb, j1 = std::min(inner, j0 + jb);
        T* yo = y + o * inner;
        const T* xo = xp + o * n * inner;
        for (int64_t j = j0; j < j1; ++j) yo[j] = op == ReduceOp::Sum ? T(0) : -std::numeric_limits<T>::infinity();
        for (int64_t k = 0; k < n; ++k) {
          const T* row = xo + k * inner;
          if (op == ReduceOp::Sum)
            for (int64_t j = j0; j < j1; ++j) yo[j] += row[j];
          else
            for (int64_t j = j0; j < j1; ++j) yo[j] = row[j] > yo[j] ? row[j] : yo[j];
        }
      }
  });
}

void CpuBackend::argmax(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& out) {
  float_dispatch(x.dtype(), "argmax", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = x.data<T>();
    int64_t* y = out.data<int64_t>();
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < inner; ++j) {
        int64_t best = 0;
        for (int64_t k = 1; k < n; ++k)
          if (xp[(o * n + k) * inner + j] > xp[(o * n + best) * inner + j]) best = k;
        y[o * inner + j] = best;
      }
  });
}

double CpuBackend::sum_squares(const Tensor& x) {
  double s = 0;
  float_dispatch(x.dtype(), "sum_squares", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    Tensor c = x.contiguous();
    const T* p = c.data<T>();
    const int64_t n = c.numel();
#pragma omp parallel for reduction(+ : s) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) s += double(p[i]) * double(p[i]);
  });
  return s;
}

}  // namespace dg::cpu

namespace dg {
Backend* make_cpu_backend() { return cpu::make_cpu_backend_impl(); }
}  // namespace dg
