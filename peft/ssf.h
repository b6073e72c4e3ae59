// SSF (Lian et al., NeurIPS 2022; the dongzelian/SSF code's ssf_ada): a per-channel scale and
// shift after a targeted module's output, y' = y * gamma + beta. On a ViT the SSF code puts
// one after the patch embedding, every block's norm1, qkv, proj, norm2, fc1 and fc2, and the
// final norm; its init is gamma ~ N(1, .02), beta ~ N(0, .02). Merged into the module it
// follows (a Linear, a LayerNorm or the patch embedding): W' = diag(gamma) W, b' = gamma * b + beta.
#pragma once
#include "peft/config.h"
#include "peft/method_registry.h"

namespace dg::peft {

struct SsfOptions : MethodOptions {
  std::vector<std::string> target_modules = {"patch_embed",      "blocks.*.norm1",    "blocks.*.attn.qkv",
                                             "blocks.*.attn.proj", "blocks.*.norm2",  "blocks.*.mlp.fc1",
                                             "blocks.*.mlp.fc2",   "norm"};
  bool given = false;  // target_modules came from the config (then a non-mergeable target is an error)
};

class SsfDelta : public MethodDelta {
 public:
  // `target`: a Linear, LayerNorm or PatchEmbed at `site`
  SsfDelta(const std::string& name, const std::string& site, nn::Module& target, int64_t channels, Generator& gen);
  Position position() const override { return Position::Post; }
  const char* method() const override { return "ssf"; }
  Tensor apply(const Tensor& input, const Tensor& output) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override {
    return {{"ssf_scale", scale}, {"ssf_shift", shift}};
  }
  void merge() override;
  void unmerge() override;
  bool merged() const override { return merged_; }
  Tensor scale, shift;  // [channels]

 private:
  std::pair<Tensor, Tensor> target_weight_bias() const;  // the target's tensors now (after a device move too)
  std::string site_;
  nn::Module& target_;
  bool merged_ = false;
  MergeOriginals originals_;
};

}  // namespace dg::peft
