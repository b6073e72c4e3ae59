// DoRA (Liu et al. 2024) as Hugging Face peft computes it (tuners/lora/dora.py): a LoRA on a
// Linear whose output is renormalised row by row to a trained magnitude m,
//   y' = y + s * [ (m / n - 1) * (x W^T) + (m / n) * scaling * B(A(x)) ],  n = ||W + scaling B A||_row
// with n detached (no gradient flows through the norm: peft and the paper's section 4.3).
// Merged: W' = W + s * (diag(m / n) (W + scaling B A) - W); the bias is untouched.
#pragma once
#include "peft/deltas.h"

namespace dg::peft {

class DoraDelta : public LoraDelta {
 public:
  DoraDelta(const std::string& name, const LoraConfig& c, const ScaleConfig& sc, nn::Linear& base, bool fused_qkv,
            Generator& gen);
  const char* method() const override { return "dora"; }
  Tensor apply(const Tensor& x, const Tensor& y) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  Tensor delta_weight() const override;
  std::string merge_refusal(const std::vector<const nn::Delta*>& site, size_t index) const override;
  Tensor magnitude;  // [out]: peft's lora_magnitude_vector, initialised to n

 private:
  Tensor weight_norm() const;  // n, [out], computed without a tape
};

}  // namespace dg::peft
