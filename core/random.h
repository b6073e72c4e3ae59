// Reproducible randomness. Every draw is a counter-based Philox stream (core/philox.h),
// so a Generator is just (seed, offset): saving those two numbers in a checkpoint is
// enough to resume a run with identical dropout masks and initialisations.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace dg {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  void manual_seed(uint64_t seed) { seed_ = seed; offset_ = 0; }
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed; offset_ = offset; }

  // A fresh 64-bit key for a stream (e.g. one dropout call): never repeats for this seed.
  uint64_t next_key();
  // Fill with N(mean, std) / U[lo, hi) on the tensor's device; advances the offset.
  void normal_(const Tensor& t, double mean = 0.0, double std = 1.0);
  void uniform_(const Tensor& t, double lo = 0.0, double hi = 1.0);
  // Truncated normal as timm's trunc_normal_: N(mean, std) redrawn outside [a, b].
  void trunc_normal_(const Tensor& t, double std, double a, double b);

 private:
  uint64_t seed_ = 0, offset_ = 0;
};

Generator& default_generator();  // per thread

}  // namespace dg
