// Float64 central-difference gradient checks (the registry's engine, also usable directly).
#pragma once
#include <string>

#include "autograd/op_registry.h"

namespace dg {

struct GradCheckResult {
  bool ok = true;
  double max_abs_err = 0, max_rel_err = 0;
  int64_t checked = 0;  // number of input elements compared
  std::string report;   // first mismatches, for the failure message
};

// Analytic gradients of L = sum(fn(inputs) * w) (w a fixed random tensor) against
// (L(x + h) - L(x - h)) / 2h for every element of every input that requires grad.
// Passes when |analytic - numeric| <= atol + rtol * |numeric| everywhere.
GradCheckResult gradcheck(const GradCheckCase& c, double h = 1e-6, double atol = 1e-7);

// The same case on another device: the inputs (floats in `dtype`, the rest as made) copied to
// the CPU and to `dev`, the same output weights w, and the output and every input gradient of
// `dev` compared with the CPU's by the whole tensor's relative error, ||dev - cpu|| / ||cpu||.
// Passes when every error is at most `tol`. This is how every op with a gradient check is run on
// CUDA against the CPU (tests/test_cuda.cpp), from the registry, not from a list.
struct DeviceCheckResult {
  bool ok = true;
  double max_err = 0;  // the largest relative error (output or any gradient)
  std::string report;  // what differed
};
DeviceCheckResult device_check(const GradCheckCase& c, Device dev, DType dtype, double tol);

// Helpers for writing cases: float64 random tensors with a fixed seed.
Tensor randn64(const Shape& shape, uint64_t seed, bool requires_grad = true);
Tensor rand64(const Shape& shape, uint64_t seed, double lo, double hi, bool requires_grad = true);

}  // namespace dg
