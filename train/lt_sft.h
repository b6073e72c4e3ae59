// LT-SFT (Ansell, Ponti, Korhonen, Vulić, ACL 2022, "Composable Sparse Fine-Tuning for
// Cross-Lingual Transfer"), one iteration of the authors' cambridgeltl/composable-sft
// LotteryTicketSparseFineTuner: phase 1 fine-tunes every tensor; the k maskable weights that
// changed most, |theta_1 - theta_0|, are kept; every tensor (the head too) goes back to theta_0;
// phase 2 trains only the kept weights and the head, with a fresh optimizer and schedule. Each
// phase may add the authors' L1 term towards theta_0 (trainer.h's l1_reg). The result is a
// sparse delta file (positions + values, and the head).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/trainer.h"

namespace dg::train {

// Named as the authors' SftArguments (sft_args.py), with their defaults where they have one.
struct LtSftOptions {
  // Globs of the tensors eligible for the sparse difference (theirs: `maskable_params`, every
  // encoder parameter that trains, i.e. all but the head); empty: every base tensor but head.*.
  std::vector<std::string> maskable;
  double ft_params_proportion = 0.01;  // k = int(proportion * maskable parameters), theirs
  int64_t ft_params_num = 0;           // k itself when > 0 (theirs: None)
  // Theirs must be given (full_/sparse_ft_max_epochs_per_iteration; their examples: 5/5, 3/10).
  int64_t full_ft_epochs = 5, sparse_ft_epochs = 10;
  double full_lr = 1e-3, sparse_lr = 1e-3;  // theirs: one learning_rate for both phases
  double full_l1_reg = 0, sparse_l1_reg = 0;  // the L1 coefficient of each phase, theirs (0: off)
  bool apply_reg_to_sparse_only = false;      // theirs: the L1 term covers the maskable tensors only
  bool freeze_layer_norm = false;             // theirs (every example of theirs sets it): LayerNorms never train
};
// The keys are the field names; unknown keys and bad values throw, naming `where`.
LtSftOptions lt_sft_options_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json lt_sft_options_to_json(const LtSftOptions& o);

// The authors' selection (unfreeze_k_most_changed_params): the threshold is the k-th largest of
// all `scores` together, and every element at or above it is kept (so ties at the threshold keep
// more than k). 0/1 masks (F32), each score's shape; `threshold` receives the threshold.
std::map<std::string, Tensor> most_changed_masks(const std::map<std::string, Tensor>& scores, int64_t k,
                                                 double* threshold = nullptr);
// k: ft_params_num, or int(ft_params_proportion * maskable_params); checked to be in [1, maskable_params].
int64_t lt_sft_k(const LtSftOptions& o, int64_t maskable_params);
// The base tensors `o` makes maskable in `model` (names in model order); throws when none.
std::vector<std::string> maskable_tensors(nn::VisionTransformer& model, const LtSftOptions& o);

struct LtSftResult {
  TrainResult full, sparse;        // full is empty when phase 1 had finished before (resume)
  int64_t k = 0, kept = 0, maskable_params = 0;
  double threshold = 0;
  bool interrupted = false;        // a phase stopped (Ctrl-C, max_steps): resume to continue
};

// Runs both phases for `rc` (its model, data, batch, seed, warmup, ...; its peft, epochs, lr and
// l1_reg are set per phase): phase 1 in rc.out/full, the chosen positions in
// rc.out/sft_masks.safetensors, phase 2 in rc.out (deltas.safetensors, metrics.csv). With
// `resume`, a phase whose checkpoint is on disk continues, and phase 1 is skipped when the mask
// file exists.
LtSftResult run_lt_sft(const RunConfig& rc, const LtSftOptions& o, const data::ImageSet& train_set,
                       const data::ImageSet& val_set, bool resume = false);

}  // namespace dg::train
