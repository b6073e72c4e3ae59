// The LyCORIS family as Hugging Face peft computes it (tuners/lycoris_utils.py; LoHa, LoKr):
// the method builds a full update dW [out, in] each forward from its factors, and
//   y' = y + s * x dW^T   (no bias: the base output has it)
// In training, peft's rank dropout zeroes rows of dW with probability rank_dropout (dividing by
// the kept fraction where the method does), and module dropout skips the whole update with
// probability module_dropout. Merged: W += s * dW.
#pragma once
#include "peft/deltas.h"

namespace dg::peft {

struct LycorisDropouts {
  double rank = 0.0, module = 0.0;
  bool rank_scale = true;  // divide the kept rows by their mean (LoHa always; LoKr with rank_dropout_scale)
};

class WeightUpdateDelta : public MethodDelta {
 public:
  WeightUpdateDelta(const std::string& name, const ScaleConfig& sc, nn::Linear& base, LycorisDropouts drop);
  Position position() const override { return Position::Post; }
  Tensor apply(const Tensor& x, const Tensor& y) override;
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }
  Scale scale;

 protected:
  virtual Tensor update_weight() const = 0;  // dW [out, in] with the method's scaling, on the tape
  nn::Linear& base_;

 private:
  LycorisDropouts drop_;
  bool merged_ = false;
  MergeOriginals originals_;
};

// peft's kaiming_uniform_(a = sqrt(5)) on a 2-d tensor: U(-1/sqrt(cols), 1/sqrt(cols))
Tensor kaiming_a5(Generator& g, int64_t rows, int64_t cols);
// peft's LyCORIS options shared by LoHa and LoKr (r, alpha, rank_dropout, module_dropout,
// target_modules, init_weights) into `o`.
struct LycorisOptions : MethodOptions {
  int64_t r = 8;
  double alpha = 8;
  double rank_dropout = 0.0, module_dropout = 0.0;
  std::vector<std::string> target_modules = {"blocks.*.attn.qkv"};
  bool init_weights = true;
};
void parse_lycoris_options(OptionReader& r, LycorisOptions& o);
// hf_import: adapter_config.json's LyCORIS options (r, alpha, dropouts; rank_pattern and
// alpha_pattern refused), and the delta config entry they make with `targets`.
LycorisOptions lycoris_hf_options(const HfAdapter& a);
nlohmann::json lycoris_hf_delta(const char* method, const LycorisOptions& o, const std::vector<std::string>& targets);

}  // namespace dg::peft
