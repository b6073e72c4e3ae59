// Hydra (Kim et al., "Hydra: Multi-head Low-rank Adaptation for Parameter Efficient
// Fine-tuning", 2023; the extremebird/Hydra code, vtab1k/hydra.py, method hydra_both): on a
// Linear y = W x + b, a parallel low-rank branch that reads the Linear's input and a
// sequential one that reads its output,
//   y' = y + s * up_p(dropout(down_p(x))) + s * up_s(dropout(down_s(y)))
// each branch a Hydra_layer: down_proj [dim, n] and up_proj [out, dim], both with a bias;
// down xavier-uniform, up and both biases zeros. The code attaches them to every block's
// attn.proj and mlp.fc2. Both branches are linear, so the merge is exact in math:
//   W' = W + s (U_p D_p + U_s D_s W),  b' = b + s (U_p d_p + u_p + U_s (D_s b + d_s) + u_s)
// (d, u: the down and up biases); unmerge restores W and b bit-exactly.
#pragma once
#include "peft/config.h"
#include "peft/method_registry.h"

namespace dg::peft {

struct HydraOptions : MethodOptions {
  int64_t dim = 2;       // the branches' rank (train.py's --dim)
  double scale = 1.0;    // s (Hydra_layer's default; the VTAB configs give 0.1 .. 1)
  double dropout = 0.0;  // Hydra_layer's default (the VTAB configs give 0 .. 0.2)
  std::vector<std::string> target_modules = {"blocks.*.attn.proj", "blocks.*.mlp.fc2"};
};

// One Hydra_layer: up(dropout(down(x))) * s
struct HydraBranch {
  Tensor down_w, down_b, up_w, up_b;  // [dim, in], [dim], [out, dim], [out]
};

class HydraDelta : public MethodDelta {
 public:
  HydraDelta(const std::string& name, const HydraOptions& o, nn::Linear& base, Generator& gen);
  Position position() const override { return Position::Post; }
  const char* method() const override { return "hydra"; }
  Tensor apply(const Tensor& x, const Tensor& y) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }
  HydraBranch par, seq;  // parallel (reads x), sequential (reads y)

 private:
  Tensor run(const HydraBranch& br, const Tensor& in) const;
  HydraOptions opts_;
  nn::Linear& base_;
  bool merged_ = false;
  MergeOriginals originals_;
};

}  // namespace dg::peft
