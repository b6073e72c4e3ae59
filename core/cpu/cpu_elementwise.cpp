// CPU: memory, copies, elementwise ops with broadcasting, reductions.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/strided.h"

namespace dg::cpu {

Backend* make_cpu_backend_impl() { return new CpuBackend(); }

void* CpuBackend::alloc(size_t nbytes) {
  size_t n = (nbytes + 63) / 64 * 64;  // 64-byte aligned for AVX-512 loads
  void* p = std::aligned_alloc(64, n);
  DG_CHECK(p, "cpu alloc: out of memory allocating ", nbytes, " bytes");
  return p;
}
void CpuBackend::free(void* p, size_t) { std::free(p); }

// ---- copy / fill ----
template <class S, class D>
static void copy_typed(const Tensor& src, const Tensor& dst) {
  const S* s = static_cast<const S*>(src.raw());
  D* d = static_cast<D*>(dst.raw());
  for_each_strided<2>(dst.shape(), {&dst.strides(), &src.strides()},
                      [&](int64_t n, const std::array<int64_t, 2>& o, const std::array<int64_t, 2>& st) {
                        for (int64_t i = 0; i < n; ++i) d[o[0] + i * st[0]] = D(s[o[1] + i * st[1]]);
                      });
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
    std::memmove(dst.raw(), src.raw(), src.nbytes());
    return;
  }
  if (src.dtype() == DType::F32 && dst.dtype() == DType::F32) return copy_typed<float, float>(src, dst);
  if (src.dtype() == DType::F64 && dst.dtype() == DType::F64) return copy_typed<double, double>(src, dst);
  if (src.dtype() == DType::F32 && dst.dtype() == DType::F64) return copy_typed<float, double>(src, dst);
  if (src.dtype() == DType::F64 && dst.dtype() == DType::F32) return copy_typed<double, float>(src, dst);
  const void* s = src.raw();
  void* d = dst.raw();
  for_each_strided<2>(dst.shape(), {&dst.strides(), &src.strides()},
                      [&](int64_t n, const std::array<int64_t, 2>& o, const std::array<int64_t, 2>& st) {
                        for (int64_t i = 0; i < n; ++i)
                          store(d, dst.dtype(), o[0] + i * st[0], load(s, src.dtype(), o[1] + i * st[1]));
                      });
}

void CpuBackend::fill(const Tensor& dst, double v) {
  void* d = dst.raw();
  Shape zero(dst.shape().size(), 0);
  for_each_strided<1>(dst.shape(), {&dst.strides()},
                      [&](int64_t n, const std::array<int64_t, 1>& o, const std::array<int64_t, 1>& st) {
                        for (int64_t i = 0; i < n; ++i) store(d, dst.dtype(), o[0] + i * st[0], v);
                      });
}

// ---- unary ----
template <class T>
static inline T apply_unary(UnaryOp op, T x, T a) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Erf: return std::erf(x);
    case UnaryOp::Gelu: return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::Sigmoid: return T(1) / (T(1) + std::exp(-x));
    case UnaryOp::AddScalar: return x + a;
    case UnaryOp::MulScalar: return x * a;
    case UnaryOp::PowScalar: return std::pow(x, a);
  }
  return x;
}

// d op(x) / dx, given x and y = op(x)
template <class T>
static inline T unary_deriv(UnaryOp op, T x, T y, T a) {
  switch (op) {
    case UnaryOp::Neg: return T(-1);
    case UnaryOp::Exp: return y;
    case UnaryOp::Log: return T(1) / x;
    case UnaryOp::Tanh: return T(1) - y * y;
    case UnaryOp::Sqrt: return T(0.5) / y;
    case UnaryOp::Erf: return T(1.12837916709551257390) * std::exp(-x * x);
    case UnaryOp::Gelu: {
      T cdf = T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440)));
      T pdf = T(0.39894228040143267794) * std::exp(T(-0.5) * x * x);
      return cdf + x * pdf;
    }
    case UnaryOp::Relu: return x > T(0) ? T(1) : T(0);
    case UnaryOp::Abs: return x > T(0) ? T(1) : x < T(0) ? T(-1) : T(0);
    case UnaryOp::Sigmoid: return y * (T(1) - y);
    case UnaryOp::AddScalar: return T(1);
    case UnaryOp::MulScalar: return a;
    case UnaryOp::PowScalar: return a * std::pow(x, a - T(1));
  }
  return T(0);
}

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
  float_dispatch(out.dtype(), unary_name(op), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* y = out.data<T>();
    const T* xp = static_cast<const T*>(x.raw());
    const T a = T(alpha);
    if (x.is_contiguous() && x.shape() == out.shape()) {
      const int64_t n = out.numel();
#pragma omp parallel for if (n > 32768)
      for (int64_t i = 0; i < n; ++i) y[i] = apply_unary(op, xp[i], a);
      return;
    }
    Shape cs = contiguous_strides(out.shape());
    for_each_strided<2>(out.shape(), {&cs, &x.strides()},
                        [&](int64_t n, const std::array<int64_t, 2>& o, const std::array<int64_t, 2>& st) {
                          for (int64_t i = 0; i < n; ++i) y[o[0] + i] = apply_unary(op, xp[o[1] + i * st[1]], a);
                        });
  });
}

void CpuBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy,
                                const Tensor& gx, double alpha) {
  float_dispatch(gx.dtype(), unary_name(op), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const int64_t n = gx.numel();
    const T* xp = x.defined() ? x.data<T>() : nullptr;
    const T* yp = y.defined() ? y.data<T>() : nullptr;
    const T* g = gy.data<T>();
    T* o = gx.data<T>();
    const T a = T(alpha);
#pragma omp parallel for if (n > 32768)
    for (int64_t i = 0; i < n; ++i) o[i] = g[i] * unary_deriv(op, xp ? xp[i] : T(0), yp ? yp[i] : T(0), a);
  });
}

// ---- binary ----
template <class T>
static inline T apply_binary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Max: return a > b ? a : b;
    case BinaryOp::Min: return a < b ? a : b;
  }
  return a;
}

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  float_dispatch(out.dtype(), binary_name(op), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    T* y = out.data<T>();
    const T* ap = static_cast<const T*>(a.raw());
    const T* bp = static_cast<const T*>(b.raw());
    if (a.is_contiguous() && b.is_contiguous() && a.shape() == out.shape() && b.shape() == out.shape()) {
      const int64_t n = out.numel();
#pragma omp parallel for if (n > 32768)
      for (int64_t i = 0; i < n; ++i) y[i] = apply_binary(op, ap[i], bp[i]);
      return;
    }
    Shape cs = contiguous_strides(out.shape());
    for_each_strided<3>(out.shape(), {&cs, &a.strides(), &b.strides()},
                        [&](int64_t n, const std::array<int64_t, 3>& o, const std::array<int64_t, 3>& st) {
                          for (int64_t i = 0; i < n; ++i)
                            y[o[0] + i] = apply_binary(op, ap[o[1] + i * st[1]], bp[o[2] + i * st[2]]);
                        });
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  float_dispatch(out.dtype(), "where", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T *c = cond.data<T>(), *ap = a.data<T>(), *bp = b.data<T>();
    T* y = out.data<T>();
    const int64_t n = out.numel();
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
#pragma omp parallel for if (outer * n * inner > 65536)
    for (int64_t o = 0; o < outer; ++o) {
      T* yo = y + o * inner;
      const T* xo = xp + o * n * inner;
      for (int64_t j = 0; j < inner; ++j) yo[j] = op == ReduceOp::Sum ? T(0) : -std::numeric_limits<T>::infinity();
      for (int64_t k = 0; k < n; ++k) {
        const T* row = xo + k * inner;
        if (op == ReduceOp::Sum)
          for (int64_t j = 0; j < inner; ++j) yo[j] += row[j];
        else
          for (int64_t j = 0; j < inner; ++j) yo[j] = row[j] > yo[j] ? row[j] : yo[j];
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
