// LoHa (FedPara, Hyeon-Woo et al. 2022; LyCORIS) as Hugging Face peft computes it
// (tuners/loha): dW = (w1_a w1_b) ⊙ (w2_a w2_b) * alpha / r on a Linear, applied as
// weight_update_delta.h says. peft's init: w1_a, w1_b, w2_a kaiming-uniform (a = sqrt 5),
// w2_b zeros (init_weights: false makes w2_b kaiming too).
#pragma once
#include "peft/weight_update_delta.h"

namespace dg::peft {

class LohaDelta : public WeightUpdateDelta {
 public:
  LohaDelta(const std::string& name, const LycorisOptions& o, const ScaleConfig& sc, nn::Linear& base, Generator& gen);
  const char* method() const override { return "loha"; }
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  Tensor w1_a, w1_b, w2_a, w2_b;  // [out, r], [r, in], [out, r], [r, in]
  LycorisOptions opts;

 protected:
  Tensor update_weight() const override;

 private:
  double scaling_;
};

}  // namespace dg::peft
