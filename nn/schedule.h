// Learning-rate schedules, as functions of the optimizer step t = 0, 1, 2, ... (the lr used
// for the update of step t; call before opt.step()).
//
// cosine_lr(t, total, base, warmup, min_lr, warmup_init):
//   t < warmup:   warmup_init + t * (base - warmup_init) / warmup          (linear warm-up)
//   otherwise:    u = min(t - warmup, total - warmup)
//                 min_lr + 0.5 * (base - min_lr) * (1 + cos(pi * u / (total - warmup)))
// so lr(0) = warmup_init, lr(warmup) = base, lr(t >= total) = min_lr. This is exactly timm's
// CosineLRScheduler(t_initial = total - warmup, lr_min = min_lr, warmup_t = warmup,
// warmup_lr_init = warmup_init, warmup_prefix = True, cycle_limit = 1, t_in_epochs = False)
// stepped once per optimizer step (timm's default warmup_prefix = False would instead let the
// cosine start at t = 0, under the warm-up). If total <= warmup the lr stays at base after
// the warm-up.
//
// constant_lr(t, base, warmup, warmup_init): the same linear warm-up, then base.
#pragma once
#include <cstdint>

namespace dg::nn {

double cosine_lr(int64_t t, int64_t total, double base, int64_t warmup = 0, double min_lr = 0.0,
                 double warmup_init = 0.0);
double constant_lr(int64_t t, double base, int64_t warmup = 0, double warmup_init = 0.0);

}  // namespace dg::nn
