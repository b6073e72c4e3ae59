// `deltagrad sft`: LT-SFT (Ansell et al., ACL 2022, "Composable Sparse Fine-Tuning"; the
// authors' cambridgeltl/composable-sft LotteryTicketSparseFineTuner, one iteration): fine-tune
// every weight (phase 1), keep the K weights that changed most (|theta_1 - theta_0|, over the
// maskable tensors together), reset every weight to the base, and fine-tune only those K with a
// fresh optimizer and schedule (phase 2). The result is a sparse delta file (positions + values);
// `deltagrad merge --model W --compose A B ...` adds several to one base.
#include <cstdio>
#include <filesystem>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "nn/glob.h"
#include "peft/sensitivity.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "train/trainer.h"

namespace dg::cli {

int cmd_sft(int argc, char** argv) {
  const char* help =
      "deltagrad sft --model-config C [--model W.safetensors] --data SPEC --out RUN_DIR [--budget 0.01]\n"
      "              [--tensors GLOBS] [--full-epochs N] [--epochs N] [--full-lr LR] [--lr LR] [--batch B] [--seed S] [--quiet]\n"
      "  LT-SFT: phase 1 fine-tunes every weight for --full-epochs (RUN_DIR/full), keeps the --budget share\n"
      "  of the weights --tensors matches (default blocks.*) that changed most, resets to the base, and\n"
      "  phase 2 trains only those (and the head) for --epochs. RUN_DIR/deltas.safetensors is sparse;\n"
      "  RUN_DIR/sft_masks.safetensors holds the chosen positions.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2,
                      {"model-config", "model", "data", "out", "budget", "tensors", "full-epochs", "epochs", "full-lr",
                       "lr", "batch", "seed"},
                      {"quiet"});
  const double budget = a.num("budget", 0.01);
  if (!(budget > 0 && budget <= 1)) throw UsageError(str("--budget must be in (0, 1], got ", budget));
  const std::string out = a.need("out"), glob = a.get("tensors", "blocks.*");
  train::RunConfig rc;
  rc.model_config = absolute_if_file(a.need("model-config"));
  if (a.has("model")) rc.model = absolute_if_file(a.get("model"));
  rc.data = absolute_data_path(a.need("data"));
  rc.batch = a.integer("batch", 64, 1);
  rc.seed = uint64_t(a.integer("seed", 0, 0));
  rc.quiet = a.has("quiet");
  const nn::ViTConfig mc = nn::load_vit_config(rc.model_config);
  auto [tr, va] = train::load_data(rc.data, mc, rc.seed);

  // phase 1: full fine-tuning
  rc.peft = {{"trainable", {"*"}}};
  rc.epochs = a.integer("full-epochs", 5, 1), rc.lr = a.num("full-lr", 1e-3), rc.out = out + "/full";
  std::map<std::string, Tensor> before, scores;
  train::Trainer full(rc, tr, va);
  for (auto& [n, t] : full.model().named_parameters(false))
    if (nn::glob_match(glob, n)) before[n] = t.detach().clone();
  if (before.empty()) throw UsageError(str("--tensors '", glob, "' matches no tensor"));
  train::TrainResult r1 = full.fit();
  for (auto& [n, t] : full.model().named_parameters(false))
    if (before.count(n)) scores[n] = abs(sub(t.detach().to(Device::CPU), before[n].to(Device::CPU)));
  const std::string masks = out + "/sft_masks.safetensors";
  std::filesystem::create_directories(out);
  peft::save_mask_file(masks, peft::top_k_masks(scores, budget, true),
                       {{"generator", "deltagrad sft"}, {"criterion", "most changed in full fine-tuning"}});
  std::printf("phase 1 (full fine-tune, %lld epochs): val acc %.2f%%; kept the %.3g%% most changed weights of %s\n",
              (long long)rc.epochs, 100 * r1.epochs.back().val_acc, 100 * budget, glob.c_str());

  // phase 2: from the base again (a fresh Trainer reloads it), only the kept weights and the head
  rc.peft = {{"masks", {{{"tensor", glob}, {"from", std::filesystem::absolute(masks).string()}}}}, {"trainable", {"head.*"}}};
  rc.epochs = a.integer("epochs", 10, 1), rc.lr = a.num("lr", 1e-3), rc.out = out;
  train::Trainer sparse(rc, tr, va);
  std::printf("%s", sparse.peft().report().c_str());
  train::TrainResult r2 = sparse.fit();
  std::printf("phase 2 (sparse, %lld epochs): val acc %.2f%%; sparse delta file %s/deltas.safetensors (%lld B)\n",
              (long long)rc.epochs, 100 * r2.epochs.back().val_acc, out.c_str(),
              (long long)std::filesystem::file_size(out + "/deltas.safetensors"));
  return 0;
}

}  // namespace dg::cli
