// The all-reduce of a data-parallel step: every trainable gradient copied into one flat f32
// buffer (one collective per step, whatever the number of tensors), summed over the ranks,
// and copied back. Only trainable tensors travel: with PEFT that is the deltas and the head.
#pragma once
#include <cstdint>

#include "core/comm.h"
#include "nn/module.h"

namespace dg::train {

class GradientBucket {
 public:
  GradientBucket(const nn::NamedTensors& params, Device dev);
  int64_t floats() const { return floats_; }
  int64_t bytes() const { return floats_ * int64_t(sizeof(float)); }
  // What a bucket of these tensors all-reduces per step, without making one (the bench prints it).
  static int64_t bytes_for(const nn::NamedTensors& params);
  // Every gradient := the sum over ranks of (weight * that rank's gradient). A tensor without a
  // gradient on a rank (no sample reached it there) adds zeros; afterwards every tensor has one.
  void all_reduce(const nn::NamedTensors& params, Comm& comm, double weight);

 private:
  Tensor buffer_;
  int64_t floats_ = 0;
};

}  // namespace dg::train
