#include "core/random.h"

#include <cmath>
#include <vector>

#include "core/backend.h"
#include "core/philox.h"

namespace dg {

uint64_t Generator::next_key() {
  philox::U4 r = philox::draw(seed_ ^ 0x5DEECE66DULL, offset_++);
  return uint64_t(r.x) | uint64_t(r.y) << 32;
}

void Generator::normal_(const Tensor& t, double mean, double std) {
  DG_CHECK(t.is_contiguous(), "Generator::normal_: ", t.desc(), " must be contiguous");
  backend_of(t).random_normal(t, seed_, offset_, mean, std);
  offset_ += uint64_t(t.numel());
  t.bump_version();
}

void Generator::uniform_(const Tensor& t, double lo, double hi) {
  DG_CHECK(t.is_contiguous(), "Generator::uniform_: ", t.desc(), " must be contiguous");
  backend_of(t).random_uniform(t, seed_, offset_, lo, hi);
  offset_ += uint64_t(t.numel());
  t.bump_version();
}

void Generator::trunc_normal_(const Tensor& t, double std, double a, double b) {
  // Rejection on the CPU, element by element: element i keeps drawing from its own
  // sub-stream until it lands in [a, b]. Deterministic and device-independent.
  DG_CHECK(a < b && std > 0, "trunc_normal_: need a < b and std > 0, got [", a, ", ", b, "], std ", std);
  std::vector<double> v(static_cast<size_t>(t.numel()));
  const uint64_t key = next_key();
  for (size_t i = 0; i < v.size(); ++i) {
    double x;
    uint64_t k = 0;
    do {
      x = std * double(philox::normal(key + k * 0x9E3779B97F4A7C15ULL, i));
      ++k;
    } while ((x < a || x > b) && k < 1000);
    v[i] = std::min(std::max(x, a), b);
  }
  Tensor dst = t;
  dst.copy_(Tensor::from_vector(v, t.shape()).to(t.dtype()));
}

Generator& default_generator() {
  static thread_local Generator g(0);
  return g;
}

}  // namespace dg
