// Learning-rate schedules. cosine_lr: linear warm-up from warmup_init to base over
// `warmup` steps, then cosine from base to min_lr over the remaining steps:
//   t < warmup:  warmup_init + (base - warmup_init) * t / warmup
//   else:        min_lr + (base - min_lr) * 0.5 * (1 + cos(pi * (t - warmup) / (total - warmup)))
#pragma once
#include <cmath>
#include <cstdint>

namespace dg::nn {

inline double cosine_lr(int64_t t, int64_t total, double base, int64_t warmup = 0, double min_lr = 0.0,
                        double warmup_init = 0.0) {
  if (t < warmup) return warmup_init + (base - warmup_init) * double(t) / double(warmup);
  if (total <= warmup) return base;
  const double p = std::min(1.0, double(t - warmup) / double(total - warmup));
  return min_lr + (base - min_lr) * 0.5 * (1.0 + std::cos(M_PI * p));
}

}  // namespace dg::nn
