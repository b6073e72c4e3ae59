#include "nn/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dg::nn {

namespace {
double warmup_lr(int64_t t, double base, int64_t warmup, double warmup_init) {
  return warmup_init + double(t) * ((base - warmup_init) / double(warmup));  // timm: init + t * step
}
}  // namespace

double cosine_lr(int64_t t, int64_t total, double base, int64_t warmup, double min_lr, double warmup_init) {
  DG_CHECK(t >= 0 && warmup >= 0, "cosine_lr: step ", t, " and warmup ", warmup, " must be >= 0");
  if (t < warmup) return warmup_lr(t, base, warmup, warmup_init);
  if (total <= warmup) return base;
  const int64_t span = total - warmup, u = std::min(t - warmup, span);
  return min_lr + 0.5 * (base - min_lr) * (1.0 + std::cos(M_PI * double(u) / double(span)));
}

double constant_lr(int64_t t, double base, int64_t warmup, double warmup_init) {
  DG_CHECK(t >= 0 && warmup >= 0, "constant_lr: step ", t, " and warmup ", warmup, " must be >= 0");
  return t < warmup ? warmup_lr(t, base, warmup, warmup_init) : base;
}

}  // namespace dg::nn
