// A delta: a small trainable change attached to a site of a frozen base model (a module's
// input/output, or a named point inside a module's forward such as a block's MLP branch).
// nn/ only knows this interface; peft/ implements LoRA, adapters and prompts on it.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dg::nn {

struct Delta {
  virtual ~Delta() = default;
  std::string name;     // unique per site, e.g. "lora"
  bool enabled = true;  // disabled deltas are skipped (the base runs as if they were absent)
  enum class Position { Pre, Post };
  virtual Position position() const = 0;
  virtual const char* method() const = 0;  // "lora", "adapter", "vpt", ...
  // Pre: return the new input (output is undefined). Post: return the new output, given
  // the site's input and output.
  virtual Tensor apply(const Tensor& input, const Tensor& output) = 0;
  // Whether a Post delta reads the site's input (a parallel adapter at a block's mlp_branch
  // reads the residual stream that also enters norm2): the module then lets the LayerNorm
  // keep that input for backward rather than its output, so one buffer serves both.
  virtual bool reads_site_input() const { return false; }
  // Tokens (rows [first, second) of dim 1) of a Pre delta's input that it replaces without
  // reading them (VPT-deep's prompt rows); {0, 0}: it reads every row. The model may then leave
  // those rows out of the module before it (VisionTransformer::forward_features), and sets
  // unread_rows_absent while this delta's input lacks them: apply must give the same result.
  virtual std::pair<int64_t, int64_t> unread_input_rows() const { return {0, 0}; }
  bool unread_rows_absent = false;
  // Whether the delta's output row t (dim 1, a token) depends on its input row t only: true for
  // every per-token method. A delta that inserts, replaces or mixes tokens (VPT's prompts) says
  // false; the model then computes every row after it (VisionTransformer::forward, which otherwise
  // computes only the rows its pooling reads in the last block).
  virtual bool row_wise() const { return true; }
  // Local names ("lora_A", "down.weight", "scale") -> tensors.
  virtual std::vector<std::pair<std::string, Tensor>> named_parameters() { return {}; }
  virtual void train(bool mode) { training = mode; }
  bool training = true;
};

}  // namespace dg::nn
