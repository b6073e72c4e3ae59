// VisionTransformer in timm's layout: patch_embed -> [cls | patches] + pos_embed ->
// pos_drop -> blocks -> norm -> pool ('token' or 'avg' + fc_norm) -> head.
#pragma once
#include <map>
#include <memory>
#include <vector>

#include "nn/layers.h"
#include "nn/vit_config.h"

namespace dg::nn {

class VisionTransformer : public Module {
 public:
  explicit VisionTransformer(const ViTConfig& cfg);
  Tensor forward(const Tensor& images) override;    // [B,C,H,W] -> logits [B, classes]
  Tensor forward_features(const Tensor& images);     // tokens after the final norm [B, T, D]
  Tensor forward_head(const Tensor& tokens);         // pool + head (reads row 0 only with 'token')

  // timm's init (trunc normal .02 for Linear weights and pos_embed, cls 1e-6, zero biases,
  // conv default for the patch projection), reproducible from the seed.
  void init_weights(uint64_t seed);
  void reset_head(uint64_t seed);  // fresh head (a backbone checkpoint, a new task)
  // Every block's MLP recomputes its fc1 output in backward instead of saving it
  // (about a third less activation memory for PEFT, one more GEMM per block).
  void set_recompute_mlp(bool on) {
    for (auto& b : blocks) b->mlp->recompute = on;
  }

  // Rows of a block's output that nobody reads are not computed (Block::dropped_rows): those that
  // the next block's first Pre delta replaces unread (Delta::unread_input_rows, VPT-deep's
  // prompts), and in forward() with 'token' pooling every row of the last block's output but the
  // class token's (the others still serve as its keys and values; pooled_row_only_ok() says when).
  // false: every block computes every row (the reference the tests compare against).
  bool skip_unread_rows = true;
  // Whether the logits read only row 0 of the last block's output: 'token' pooling and every
  // delta from the last block's attention to the final norm row-wise (Delta::row_wise).
  bool pooled_row_only_ok();

  ViTConfig cfg;
  Tensor cls_token, pos_embed;  // [1,1,D], [1, prefix + N, D]
  std::shared_ptr<PatchEmbed> patch_embed;
  std::shared_ptr<Dropout> pos_drop;
  std::vector<std::shared_ptr<Block>> blocks;
  std::shared_ptr<Module> norm, fc_norm;  // LayerNorm or Identity
  std::shared_ptr<Dropout> head_drop;
  std::shared_ptr<Module> head;  // Linear or Identity

 private:
  Tensor features(const Tensor& images, bool pooled_row_only);
};

// Base parameters (no deltas) by name.
std::map<std::string, Tensor> state_dict(Module& m);
// Load a timm-layout state dict. Every model tensor must be present with its shape, except
// head.* (a backbone gets a fresh head when absent); pos_embed of another grid size is
// resampled bilinearly. Unexpected tensors, shape mismatches and non-finite values are
// errors naming the first offending tensor. `what` names the source in messages.
struct LoadReport {
  bool head_loaded = true, pos_embed_resampled = false;
};
LoadReport load_state_dict(VisionTransformer& m, const std::map<std::string, Tensor>& sd, const std::string& what);
// Bilinear resample of pos_embed [1, prefix + g0*g0, D] to a g1 x g1 grid (prefix untouched).
Tensor resample_pos_embed(const Tensor& pe, int64_t prefix, int64_t g1);

}  // namespace dg::nn
