// LoKr (LyCORIS) as Hugging Face peft computes it (tuners/lokr): dW = kron(w1, w2) * alpha / r
// on a Linear, applied as weight_update_delta.h says. out = a c and in = b d are split by peft's
// factorization (decompose_factor; -1: the divisor pair nearest the square root), w1 [a, b] is
// full unless decompose_both and r < max(a, b) / 2 (then w1_a w1_b), w2 [c, d] is low-rank
// w2_a w2_b when r < max(c, d) / 2. peft's init: w1 (or w1_a) zeros, the rest kaiming-uniform
// (a = sqrt 5); init_weights: false makes all kaiming.
#pragma once
#include <utility>

#include "peft/weight_update_delta.h"

namespace dg::peft {

struct LokrOptions : LycorisOptions {
  bool decompose_both = false;
  int64_t decompose_factor = -1;
  bool rank_dropout_scale = false;
};

// peft's factorization: (m, n), m <= n, m * n = dimension
std::pair<int64_t, int64_t> lokr_factorization(int64_t dimension, int64_t factor);

class LokrDelta : public WeightUpdateDelta {
 public:
  LokrDelta(const std::string& name, const LokrOptions& o, const ScaleConfig& sc, nn::Linear& base, Generator& gen);
  const char* method() const override { return "lokr"; }
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  Tensor w1, w1_a, w1_b, w2, w2_a, w2_b;  // w1 or (w1_a, w1_b); w2 or (w2_a, w2_b)
  LokrOptions opts;

 protected:
  Tensor update_weight() const override;

 private:
  double scaling_;
};

}  // namespace dg::peft
