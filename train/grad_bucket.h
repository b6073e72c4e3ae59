// The all-reduce of a data-parallel step: trainable gradients copied into one flat f32 buffer
// (one collective for all of them, whatever their number), summed over the ranks, and copied
// back. Only trainable tensors travel: with PEFT that is the deltas and the head. Used whole
// (one bucket of every gradient, after backward: --no-overlap) or as one of the buckets that
// train/grad_reducer.h starts during backward.
#pragma once
#include <cstdint>
#include <memory>

#include "core/comm.h"
#include "nn/module.h"

namespace dg::train {

class GradientBucket {
 public:
  // A buffer for these tensors, in this order.
  GradientBucket(const nn::NamedTensors& params, Device dev);
  int64_t floats() const { return floats_; }
  int64_t bytes() const { return floats_ * int64_t(sizeof(float)); }
  const nn::NamedTensors& params() const { return params_; }
  // What a bucket of these tensors all-reduces per step, without making one (the bench prints it).
  static int64_t bytes_for(const nn::NamedTensors& params);
  // Every gradient := the sum over ranks of (weight * that rank's gradient). A tensor without a
  // gradient on a rank (no sample reached it there) adds zeros; afterwards every tensor has one.
  // Through Comm::start_all_reduce_sum (waited), the call the overlapped buckets make.
  void all_reduce(Comm& comm, double weight);

  // The same in steps (train/grad_reducer.h): copy in each tensor's gradient (zeros without one),
  // then start with the weight, then, once the request is waited, restore.
  void copy_in(size_t k);
  std::unique_ptr<CommRequest> start(Comm& comm, double weight);
  void restore();

 private:
  nn::NamedTensors params_;
  std::vector<int64_t> offsets_;
  Tensor buffer_;
  int64_t floats_ = 0;
  Tensor slot(size_t k) const;  // tensor k's part of the buffer, in its shape
  void scale(double weight);
};

}  // namespace dg::train
