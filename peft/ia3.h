// (IA)^3 (Liu et al. 2022) as Hugging Face peft computes it (tuners/ia3/layer.py): a learned
// vector l per targeted Linear that scales its output, y' = y * l (bias included), or, for a
// module in feedforward_modules, its input, y' = (x * l) W^T + b. On timm's fused qkv, peft's
// semantics scale all 3D outputs (q, k and v rows; the paper's l_k, l_v are rows D..3D).
// Merged: W' = diag(l) W and b' = l * b, or W' = W diag(l) for feedforward modules.
#pragma once
#include "peft/config.h"
#include "peft/method_registry.h"

namespace dg::peft {

struct Ia3Options : MethodOptions {
  // the IA3 paper's places on a ViT: attention keys and values (the fused qkv), the MLP's
  // inner activation (fc2's input)
  std::vector<std::string> target_modules = {"blocks.*.attn.qkv", "blocks.*.mlp.fc2"};
  std::vector<std::string> feedforward_modules = {"blocks.*.mlp.fc2"};
  bool init_ia3_weights = true;  // ones (the identity); false: standard normal, as peft leaves them
};

class Ia3Delta : public MethodDelta {
 public:
  Ia3Delta(const std::string& name, nn::Linear& base, bool feedforward, bool init_ones, Generator& gen);
  // feedforward: Pre (scales the Linear's input), else Post (scales its output)
  Position position() const override { return feedforward_ ? Position::Pre : Position::Post; }
  const char* method() const override { return "ia3"; }
  Tensor apply(const Tensor& input, const Tensor& output) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override { return {{"ia3_l", l}}; }
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }
  std::string merge_refusal(const std::vector<const nn::Delta*>& site, size_t index) const override;
  bool feedforward() const { return feedforward_; }
  Tensor l;  // [in] (feedforward) or [out]

 private:
  nn::Linear& base_;
  bool feedforward_, merged_ = false;
  MergeOriginals originals_;
};

}  // namespace dg::peft
