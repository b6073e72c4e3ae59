// The delta methods. Each is an nn::Delta attached at a site of a frozen ViT:
//   LoraDelta     Post on a Linear:        y + s * scaling * B(A(dropout(x)))
//   AdapterDelta  Post on a block/branch:  z + s * DropPath(up(drop(act(down(norm(u))))))
//                 with u = z (reads the site's output) or u = the site's input (parallel)
//   PromptDelta   VPT: Post on pos_drop inserts prompt tokens after the cls token (shallow);
//                 Pre on blocks.i (i >= 1) replaces those rows with the layer's own (deep)
// and a conditioning scale s (fixed 1, scalar or per-channel; trainable or not) per delta.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/random.h"
#include "nn/delta.h"
#include "nn/layers.h"
#include "peft/config.h"
#include "peft/method_registry.h"
#include "peft/packed_bits.h"

namespace dg::peft {

// peft's LoRA options (r, lora_alpha, ...) into d.lora: the lora and dora registrations.
void parse_lora_options(OptionReader& r, DeltaConfig& d);
// LoRA deltas as peft's LORA adapter (lora and dora).
void lora_hf_export(const Attachments& list, HfAdapter& out);
// peft's LORA format back (peft/hf_import.cpp); dora: with use_dora's lora_magnitude_vector
HfImported lora_family_hf_import(const HfAdapter& a, bool dora);

// s in "out + s * branch": undefined value = the constant 1.
struct Scale {
  ScaleConfig cfg;
  Tensor value;  // [1] or [channels]
  Scale() = default;
  Scale(const ScaleConfig& c, int64_t channels);
  Tensor apply(const Tensor& branch) const;  // branch [..., channels]
  // When the branch ends in a Linear, s * (h W^T + b) = h (s W)^T + s b: the scale folds into
  // W's rows [channels, in] and b, so no [..., channels] pass runs and no branch is saved for
  // the scale's gradient (Adapter+ saved 12 x [B, N, D] for it). Undefined w/b pass through.
  // w holds the channels [row0, row0 + w.size(0)) of the branch.
  Tensor fold_rows(const Tensor& w, int64_t row0 = 0) const;
  void add_to(std::vector<std::pair<std::string, Tensor>>& out) const;
};

class LoraDelta : public MethodDelta {
 public:
  // `fused_qkv`: the Linear is timm's qkv (out == 3 * in); with qkv_mode "separate" one
  // LoRA per projection in qkv_parts.
  LoraDelta(const std::string& name, const LoraConfig& c, const ScaleConfig& sc, nn::Linear& base, bool fused_qkv,
            Generator& gen);
  Position position() const override { return Position::Post; }
  const char* method() const override { return "lora"; }
  Tensor apply(const Tensor& x, const Tensor& y) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;

  double scaling() const;                 // alpha / r, or alpha / sqrt(r) with rsLoRA
  Tensor update_weight() const;           // scaling * B @ A as a [out, in] tensor (no s)
  virtual Tensor delta_weight() const;    // what merge adds to W: s * update_weight()
  void merge() override;                  // W += delta_weight(); forward then skips the branch
  void unmerge() override;                // restores W bit-exactly (the original is kept)
  bool merged() const override { return merged_; }
  // timm qkv split: "" (joint) or "q", "k", "v"
  struct Part { std::string id; Tensor A, B; int64_t row0; };
  std::vector<Part> parts;
  LoraConfig cfg;
  Scale scale;
  BinaryWeights* binary_weights() override { return bits_.names.empty() ? nullptr : &bits_; }

 protected:
  // scaling * B(A(xd)) as [..., out] (zeros for projections without a LoRA), no s: DoRA's update
  // (LoRA's own forward adds the parts into y with lowrank_add)
  Tensor low_rank_update(const Tensor& xd, const Tensor& y) const;
  nn::Linear& base_;
  bool merged_ = false;
  MergeOriginals originals_;
  BinaryWeights bits_;  // bits: 1: A and B as 1-bit weights
  Tensor A_of(const Part& p) const { return bits_.weight(p.id.empty() ? "lora_A" : p.id + ".lora_A", p.A); }
  Tensor B_of(const Part& p) const { return bits_.weight(p.id.empty() ? "lora_B" : p.id + ".lora_B", p.B); }
};

class AdapterDelta : public MethodDelta {
 public:
  AdapterDelta(const std::string& name, const AdapterConfig& c, const ScaleConfig& sc, int64_t dim, bool reads_input,
               double norm_eps, Generator& gen);
  Position position() const override { return Position::Post; }
  const char* method() const override { return "adapter"; }
  Tensor apply(const Tensor& input, const Tensor& output) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  AdapterConfig cfg;
  Scale scale;
  Tensor down_w, down_b, up_w, up_b, norm_w, norm_b;  // [d, D], [d], [D, d], [D], [D], [D]
  bool reads_input;
  bool reads_site_input() const override { return reads_input; }
  double norm_eps;
  BinaryWeights* binary_weights() override { return bits_.names.empty() ? nullptr : &bits_; }

 private:
  BinaryWeights bits_;  // bits: 1: down.weight and up.weight as 1-bit weights
};

class PromptDelta : public MethodDelta {
 public:
  // insert = true: shallow insertion after the cls token (site pos_drop, Post);
  // insert = false: replace the rows after the cls token (site blocks.i, Pre).
  PromptDelta(const std::string& name, const PromptConfig& c, int64_t dim, double init_bound, bool insert,
              Generator& gen);
  Position position() const override { return insert_ ? Position::Post : Position::Pre; }
  const char* method() const override { return "vpt"; }
  Tensor apply(const Tensor& input, const Tensor& output) override;
  // deep: the rows after the cls token that this layer's prompt replaces (when the block before
  // has not computed them, unread_rows_absent, the prompt is inserted instead)
  std::pair<int64_t, int64_t> unread_input_rows() const override {
    return insert_ ? std::pair<int64_t, int64_t>{0, 0} : std::pair<int64_t, int64_t>{1, 1 + cfg.num_tokens};
  }
  bool row_wise() const override { return false; }  // it inserts or replaces tokens
  std::vector<std::pair<std::string, Tensor>> named_parameters() override { return {{"prompt", prompt}}; }
  PromptConfig cfg;
  Tensor prompt;  // [num_tokens, D]

 private:
  bool insert_;
};

}  // namespace dg::peft
