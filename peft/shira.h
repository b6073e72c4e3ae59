// SHiRA, Sparse High Rank Adapters (Bhardwaj et al., NeurIPS 2024; Hugging Face peft
// tuners/shira): train a sparse subset of a Linear's base weights as a delta. The delta holds
// K positions (fixed, chosen before training) and K values (trained, zeros at init as peft's
// init_weights; randn with init_weights: false), and computes
//   y' = y + s * x dW^T,   dW = scatter(values at positions) [out, in]
// which is peft's F.linear(x, W + dW, b) up to float rounding; the base stays bit-identical and
// several SHiRA deltas on one Linear add up. Merged: W += s * dW. K = r (in + out) as peft sizes
// it (the parameter count of a rank-r LoRA), or a mask file's count. Mask strategies (the
// paper's section 3): random (SHiRA-Rand; deltagrad's seeded generator, not torch's randperm),
// magnitude (SHiRA-WM: the largest |w|), or a mask file from `deltagrad sensitivity`
// (grad = SHiRA-Grad, taylor = SHiRA-SNIP).
#pragma once
#include "peft/weight_update_delta.h"

namespace dg::peft {

struct ShiraOptions : MethodOptions {
  int64_t r = 32;                // peft's default
  std::string mask_type = "random";  // random | magnitude | from (then `from` names the mask file)
  std::string from;
  uint64_t random_seed = 0;
  std::vector<std::string> target_modules = {"blocks.*.attn.qkv"};
  bool init_weights = true;
};

class ShiraDelta : public WeightUpdateDelta {
 public:
  ShiraDelta(const std::string& name, const std::string& site, const ShiraOptions& o, const ScaleConfig& sc,
             nn::Linear& base, Generator& gen);
  const char* method() const override { return "shira"; }
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  int64_t trainable_count() override { return shira_weight.numel(); }
  Tensor shira_weight;   // [K] values, trainable
  Tensor shira_indices;  // [K] flat row-major positions (I32, sorted), fixed; saved in delta files

 protected:
  Tensor update_weight() const override;

 private:
  // position -> value index, and the 0/1 mask, rebuilt when shira_indices changes (a load)
  mutable std::vector<double> cached_positions_;
  mutable Tensor gather_, mask_;
};

}  // namespace dg::peft
