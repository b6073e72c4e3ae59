// MoSA, Mixture of Sparse Adapters (Zhang et al., "MoSA: Mixture of Sparse Adapters for Visual
// Efficient Tuning", arXiv 2312.02923; Theia-4869/MoSA, src/models/vit_adapter/vit_mosa.py
// MoSABlock with STYLE AdaptFormer, src/utils/pruner.py Pruner.divide, train.py --sparse-train,
// src/engine/trainer.py). An AdaptFormer adapter (LayerNorm, down, GELU, dropout, up, times a
// fixed scalar, added to the MLP branch from the MLP sub-block's input) whose non-shared
// projection is held as `experts` copies, each trained only on its own part of a random
// split of the elements into disjoint equal parts (the Rand pruner's score, divided by rank).
// Each training forward activates one random copy per non-shared projection; evaluation uses
// the merged adapter: the mean of the copies ("add", the authors' default and VTAB script) or
// each copy's own part placed together and divided by the copy count ("joint", as their code).
// Training adds, as their VTAB script (ADDITIONAL True), a consistency loss between two forwards
// with their own random copies (peft/training_loss.h). A delta file holds the merged adapter
// alone, the float32 tensors eval uses; loaded from one, the delta evaluates only (its copies
// and masks are not there to train): a training forward is an error. A checkpoint keeps the
// copies (the masks are drawn again from the config's seed).
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/random.h"
#include "peft/config.h"
#include "peft/method_registry.h"

namespace dg::peft {

struct MosaOptions : MethodOptions {
  int64_t dim = 16;          // BOTTLENECK_SIZE (the VTAB script's 16)
  int64_t experts = 4;       // EXPERT_NUM: the parts of the split
  double scalar = 0.1;       // SCALAR: the adapter's fixed output scale
  double dropout = 0.1;      // DROPOUT after the activation
  std::string share = "down";  // SHARE: the projection kept whole ("down", "up" or "none")
  std::string merge = "add";   // MERGE: "add" or "joint"
  bool additional = true;      // ADDITIONAL: the consistency loss's second forward (the VTAB script's True)
  double add_weight = 0.0;     // ADD_WEIGHT: its cross-entropy's weight
  double reg_weight = 1.0;     // REG_WEIGHT: the symmetric KL's weight
  std::vector<std::string> blocks = {"blocks.*"};
};

// The authors' Pruner.divide(score) for a weight: part i holds the elements whose score ranks
// (1-based, ascending) in [int(i/n * numel) + 1, int((i+1)/n * numel)]. Ties share a part.
std::vector<Tensor> mosa_divide(const Tensor& score, int64_t parts);

class MosaDelta : public MethodDelta {
 public:
  MosaDelta(const std::string& name, const MosaOptions& o, int64_t dim, double norm_eps, Generator& gen);
  Position position() const override { return Position::Post; }
  const char* method() const override { return "mosa"; }
  bool reads_site_input() const override { return true; }  // AdaptFormer: the MLP sub-block's input
  Tensor apply(const Tensor& input, const Tensor& output) override;
  std::vector<std::pair<std::string, Tensor>> named_parameters() override;
  // As the authors' log: a split weight counts its part's elements once per copy (the masks'
  // sums), a bias every element of every copy (its masks are all ones).
  int64_t trainable_count() override;
  // The merged adapter's tensors: {down.weight, down.bias, up.weight, up.bias}, differentiable.
  std::vector<Tensor> merged_adapter() const;
  // Delta files: the merged adapter with its LayerNorm (norm.*, down.*, up.*), and back.
  nlohmann::json file_metadata() const override { return {{"stored", "merged adapter"}}; }
  std::map<std::string, Tensor> file_tensors() const override;
  void load_file_tensors(const std::map<std::string, Tensor>& tensors, const std::string& path) override;
  bool loaded_merged() const { return !loaded_.empty(); }
  std::optional<ConsistencyLoss> consistency_loss() const override;

  struct Projection {
    std::vector<Tensor> w, b;   // one per copy, or one when shared
    std::vector<Tensor> mask;   // per copy: the elements of w[i] it trains (F32 0/1), empty when shared
  };
  Projection down, up;
  Tensor norm_w, norm_b;
  MosaOptions opt;
  double norm_eps;
  // tests: the copies the training forwards activate (down, up), in turn, instead of random ones
  std::vector<std::pair<int64_t, int64_t>> forced_choices;
  size_t forced_next = 0;

 private:
  std::vector<Tensor> loaded_;  // the merged adapter read from a delta file (merged_adapter()'s order)
};

}  // namespace dg::peft
