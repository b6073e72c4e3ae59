// `deltagrad sft`: LT-SFT (Ansell et al., ACL 2022, "Composable Sparse Fine-Tuning"; the
// authors' cambridgeltl/composable-sft LotteryTicketSparseFineTuner, one iteration), as
// train/lt_sft.h runs it: fine-tune every weight (phase 1), keep the k maskable weights that
// changed most, reset every weight to the base, fine-tune only those and the head (phase 2). The
// result is a sparse delta file (positions + values); `deltagrad merge --model W --compose A B
// ...` adds several to one base.
#include <cstdio>
#include <filesystem>

#include "tools/commands.h"
#include "tools/model_args.h"
#include "train/lt_sft.h"

namespace dg::cli {

int cmd_sft(int argc, char** argv) {
  const char* help =
      "deltagrad sft --model-config C [--model W.safetensors] --data SPEC --out RUN_DIR [--budget 0.01 | --ft-params-num K]\n"
      "              [--tensors GLOBS] [--freeze-layer-norm] [--full-epochs N] [--epochs N] [--full-lr LR] [--lr LR]\n"
      "              [--full-l1-reg C] [--sparse-l1-reg C] [--apply-reg-to-sparse-only] [--weight-decay WD]\n"
      "              [--batch B] [--seed S] [--quiet]\n"
      "  LT-SFT: phase 1 fine-tunes every weight for --full-epochs (RUN_DIR/full), keeps the K weights of the\n"
      "  --tensors globs (default: every tensor but head.*) that changed most (K = --ft-params-num, or\n"
      "  int(--budget x their parameters); every weight at the K-th largest change is kept), resets every\n"
      "  weight to the base, and phase 2 trains only those and the head for --epochs. --full-l1-reg and\n"
      "  --sparse-l1-reg add C x sum|theta - theta_0| / (all parameters) to the loss of each phase (of the\n"
      "  maskable tensors only with --apply-reg-to-sparse-only); --freeze-layer-norm never trains LayerNorms.\n"
      "  Names and defaults are the authors' (composable-sft SftArguments; --budget is ft_params_proportion,\n"
      "  --full-epochs / --epochs their full_ / sparse_ft_max_epochs_per_iteration, --weight-decay 0 their\n"
      "  Trainer's). RUN_DIR/deltas.safetensors is sparse; RUN_DIR/sft_masks.safetensors holds the positions.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2,
                      {"model-config", "model", "data", "out", "budget", "ft-params-num", "tensors", "full-epochs",
                       "epochs", "full-lr", "lr", "full-l1-reg", "sparse-l1-reg", "weight-decay", "batch", "seed"},
                      {"quiet", "freeze-layer-norm", "apply-reg-to-sparse-only"});
  train::LtSftOptions o;
  o.ft_params_proportion = a.num("budget", 0.01);
  if (!(o.ft_params_proportion > 0 && o.ft_params_proportion <= 1))
    throw UsageError(str("--budget must be in (0, 1], got ", o.ft_params_proportion));
  o.ft_params_num = a.integer("ft-params-num", 0, 0);
  o.maskable = a.list("tensors");
  o.full_ft_epochs = a.integer("full-epochs", 5, 1), o.sparse_ft_epochs = a.integer("epochs", 10, 1);
  o.full_lr = a.num("full-lr", 1e-3), o.sparse_lr = a.num("lr", 1e-3);
  o.full_l1_reg = a.num("full-l1-reg", 0), o.sparse_l1_reg = a.num("sparse-l1-reg", 0);
  if (!(o.full_l1_reg >= 0 && o.sparse_l1_reg >= 0))
    throw UsageError("--full-l1-reg and --sparse-l1-reg must be >= 0");
  o.apply_reg_to_sparse_only = a.has("apply-reg-to-sparse-only"), o.freeze_layer_norm = a.has("freeze-layer-norm");
  train::RunConfig rc;
  rc.model_config = absolute_if_file(a.need("model-config"));
  if (a.has("model")) rc.model = absolute_if_file(a.get("model"));
  rc.data = absolute_data_path(a.need("data"));
  rc.out = a.need("out");
  rc.batch = a.integer("batch", 64, 1);
  rc.seed = uint64_t(a.integer("seed", 0, 0));
  rc.weight_decay = a.num("weight-decay", 0.0);
  rc.quiet = a.has("quiet");
  const nn::ViTConfig mc = nn::load_vit_config(rc.model_config);
  auto [tr, va] = train::load_data(rc.data, mc, rc.seed);
  const train::LtSftResult r = train::run_lt_sft(rc, o, tr, va);
  if (r.interrupted) {
    std::printf("LT-SFT stopped (its checkpoints are in %s)\n", rc.out.c_str());
    return 130;
  }
  std::printf("phase 1 (full fine-tune, %lld epochs): val acc %.2f%%; kept %lld of %lld maskable weights "
              "(k = %lld, threshold |theta_1 - theta_0| >= %.6g)\n",
              (long long)o.full_ft_epochs, 100 * r.full.epochs.back().val_acc, (long long)r.kept,
              (long long)r.maskable_params, (long long)r.k, r.threshold);
  std::printf("phase 2 (sparse, %lld epochs): val acc %.2f%%, %lld trainable; sparse delta file %s/deltas.safetensors "
              "(%lld B)\n",
              (long long)o.sparse_ft_epochs, 100 * r.sparse.epochs.back().val_acc, (long long)r.sparse.trainable_params,
              rc.out.c_str(), (long long)std::filesystem::file_size(rc.out + "/deltas.safetensors"));
  return 0;
}

}  // namespace dg::cli
