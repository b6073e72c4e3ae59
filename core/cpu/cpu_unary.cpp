// CPU unary elementwise ops and their derivatives. The scalar definitions (shared with
// CUDA, core/elementwise_math.h) are the reference; contiguous tensors go through Eigen's vectorised exp/erf/tanh in chunks of
// kChunk elements (for float: a few ulp from libm's, well inside the fp32 test tolerances;
// a ViT step spent ~13% in scalar erff/expf and the per-element op switch before this).
#include <algorithm>
#include <cmath>

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/strided.h"
#include "core/elementwise_math.h"

namespace dg::cpu {

namespace {
constexpr int64_t kChunk = 4096;
template <class T>
using Arr = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using CArr = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
constexpr double kSqrtHalf = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
}  // namespace

// y = op(x) over n contiguous elements with Eigen's packet math; false where the op has
// no vectorised form here (the caller then runs the scalar reference).
template <class T>
static bool unary_vectorized(UnaryOp op, const T* xp, T* yp, int64_t n, T a) {
  CArr<T> x(xp, n);
  Arr<T> y(yp, n);
  switch (op) {
    case UnaryOp::Gelu: y = T(0.5) * x * (T(1) + (x * T(kSqrtHalf)).erf()); return true;
    case UnaryOp::Erf: y = x.erf(); return true;
    case UnaryOp::Exp: y = x.exp(); return true;
    case UnaryOp::Tanh: y = x.tanh(); return true;
    case UnaryOp::Sigmoid: y = T(1) / (T(1) + (-x).exp()); return true;
    case UnaryOp::Relu: y = x.max(T(0)); return true;
    case UnaryOp::Neg: y = -x; return true;
    case UnaryOp::AddScalar: y = x + a; return true;
    case UnaryOp::MulScalar: y = x * a; return true;
    default: return false;
  }
}

// gx = gy * op'(x) over n contiguous elements; false where not vectorised here.
template <class T>
static bool unary_backward_vectorized(UnaryOp op, const T* xp, const T* yp, const T* gp, T* op_out, int64_t n, T a) {
  CArr<T> g(gp, n);
  Arr<T> o(op_out, n);
  switch (op) {
    case UnaryOp::Gelu: {
      CArr<T> x(xp, n);
      o = g * (T(0.5) * (T(1) + (x * T(kSqrtHalf)).erf()) + x * T(kInvSqrt2Pi) * (T(-0.5) * x.square()).exp());
      return true;
    }
    case UnaryOp::Exp: o = g * CArr<T>(yp, n); return true;
    case UnaryOp::Tanh: o = g * (T(1) - CArr<T>(yp, n).square()); return true;
    case UnaryOp::Sigmoid: {
      CArr<T> y(yp, n);
      o = g * y * (T(1) - y);
      return true;
    }
    case UnaryOp::MulScalar: o = g * a; return true;
    case UnaryOp::AddScalar: o = g; return true;
    default: return false;
  }
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
      for (int64_t c = 0; c < n; c += kChunk) {
        const int64_t m = std::min(kChunk, n - c);
        if (!unary_vectorized(op, xp + c, y + c, m, a))
          for (int64_t i = c; i < c + m; ++i) y[i] = unary_value(op, xp[i], a);
      }
      return;
    }
    Shape cs = contiguous_strides(out.shape());
    parallel_for_each_strided<2>(out.shape(), {&cs, &x.strides()},
                        [&](int64_t n, const std::array<int64_t, 2>& o, const std::array<int64_t, 2>& st) {
                          for (int64_t i = 0; i < n; ++i) y[o[0] + i] = unary_value(op, xp[o[1] + i * st[1]], a);
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
    for (int64_t c = 0; c < n; c += kChunk) {
      const int64_t m = std::min(kChunk, n - c);
      if (!unary_backward_vectorized(op, xp ? xp + c : nullptr, yp ? yp + c : nullptr, g + c, o + c, m, a))
        for (int64_t i = c; i < c + m; ++i) o[i] = g[i] * unary_derivative(op, xp ? xp[i] : T(0), yp ? yp[i] : T(0), a);
    }
  });
}


}  // namespace dg::cpu
