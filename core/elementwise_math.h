// The scalar math of the elementwise ops, shared by the CPU backend (core/cpu/) and the
// CUDA kernels (cuda/): one definition of each formula for host and device.
#pragma once
#include <cmath>

#include "core/backend.h"

#include "core/hd.h"

namespace dg {

template <class T>
DG_HD T unary_value(UnaryOp op, T x, T a) {
  using std::erf, std::exp, std::log, std::pow, std::sqrt, std::tanh;
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return exp(x);
    case UnaryOp::Log: return log(x);
    case UnaryOp::Tanh: return tanh(x);
    case UnaryOp::Sqrt: return sqrt(x);
    case UnaryOp::Erf: return erf(x);
    case UnaryOp::Gelu: return T(0.5) * x * (T(1) + erf(x * T(0.70710678118654752440)));
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::Abs: return x < T(0) ? -x : x;
    case UnaryOp::Sigmoid: return T(1) / (T(1) + exp(-x));
    case UnaryOp::AddScalar: return x + a;
    case UnaryOp::MulScalar: return x * a;
    case UnaryOp::PowScalar: return pow(x, a);
  }
  return x;
}

// d op(x) / dx, given x and y = op(x)
template <class T>
DG_HD T unary_derivative(UnaryOp op, T x, T y, T a) {
  using std::erf, std::exp, std::pow;
  switch (op) {
    case UnaryOp::Neg: return T(-1);
    case UnaryOp::Exp: return y;
    case UnaryOp::Log: return T(1) / x;
    case UnaryOp::Tanh: return T(1) - y * y;
    case UnaryOp::Sqrt: return T(0.5) / y;
    case UnaryOp::Erf: return T(1.12837916709551257390) * exp(-x * x);
    case UnaryOp::Gelu:
      return T(0.5) * (T(1) + erf(x * T(0.70710678118654752440))) + x * T(0.39894228040143267794) * exp(T(-0.5) * x * x);
    case UnaryOp::Relu: return x > T(0) ? T(1) : T(0);
    case UnaryOp::Abs: return x > T(0) ? T(1) : x < T(0) ? T(-1) : T(0);
    case UnaryOp::Sigmoid: return y * (T(1) - y);
    case UnaryOp::AddScalar: return T(1);
    case UnaryOp::MulScalar: return a;
    case UnaryOp::PowScalar: return a * pow(x, a - T(1));
  }
  return T(0);
}

template <class T>
DG_HD T binary_value(BinaryOp op, T a, T b) {
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

}  // namespace dg
