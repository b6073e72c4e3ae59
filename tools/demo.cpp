// `deltagrad demo`: the README's main job. Pretrain the 28x28 ViT on Fashion-MNIST classes
// 0-4 (cached), then adapt it to a 1000-image training set of classes 5-9 (VTAB-1k style;
// evaluated on the full test split of those classes) with each method (a sweep of one task and
// one seed, train/sweep.h), and report.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "tools/chart.h"
#include "tools/commands.h"
#include "train/sweep.h"

namespace dg::cli {

namespace fs = std::filesystem;

int cmd_demo(int argc, char** argv) {
  const char* help =
      "deltagrad demo [--out RUN_DIR] [--epochs N] [--pretrain-epochs N] [--methods a,b,...] [--quiet]\n"
      "  Pretrains vit_mnist_28 on Fashion-MNIST classes 0-4 (cached in RUN_DIR/pretrained.safetensors),\n"
      "  fine-tunes it on 1000 training images of classes 5-9 with each method, evaluates on the 5000 test\n"
      "  images of those classes, and writes RUN_DIR/summary.md and RUN_DIR/summary.png. Each method's run\n"
      "  dir is RUN_DIR/fashion-mnist_5-9/<method>/seed0; run again, finished methods are skipped.\n"
      "  --methods: the rows to run (default all): linear_probe, full, scaled_pair and the registered\n"
      "  methods that have a demo row.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"out", "epochs", "pretrain-epochs", "methods"}, {"quiet"});
  const std::string out = a.get("out", "runs/demo");
  const bool quiet = a.has("quiet");
  const std::vector<train::SweepMethod> methods =
      a.has("methods") ? train::choose_methods(a.get("methods"), "--methods") : train::sweep_methods();
  fs::create_directories(out);
  const std::string pre = out + "/pretrained.safetensors";
  nn::ViTConfig mc = nn::vit_preset("vit_mnist_28");
  const auto t0 = std::chrono::steady_clock::now();

  if (!fs::exists(pre)) {
    std::printf("== pretraining vit_mnist_28 on Fashion-MNIST classes 0-4 (once; cached in %s)\n", pre.c_str());
    train::RunConfig rc;
    rc.model_config = "vit_mnist_28";
    rc.peft = {{"trainable", {"*"}}};
    rc.data = "fashion-mnist:classes=0-4";
    rc.epochs = a.integer("pretrain-epochs", 2, 1);
    rc.batch = 128, rc.lr = 2e-3, rc.warmup_steps = 100, rc.weight_decay = 0.05, rc.pad = 2;
    rc.out = out + "/pretrain", rc.quiet = quiet, rc.log_every = 50;
    auto [tr, va] = train::load_data(rc.data, mc, rc.seed);
    train::Trainer t(rc, tr, va);
    train::TrainResult r = t.fit();
    std::printf("pretrained in %.0fs: accuracy %.2f%% on the test images of classes 0-4\n", r.seconds,
                100 * r.epochs.back().val_acc);
    save_safetensors(pre, nn::state_dict(t.model()), {{"model_config", nn::to_json(t.model().cfg).dump()}});
  } else {
    std::printf("== using the cached backbone %s\n", pre.c_str());
  }

  // The fine-tuning is a sweep of one task and one seed: each method's run dir is
  // RUN_DIR/fashion-mnist_5-9/<method>/seed0, and a demo run again skips the finished ones.
  train::SweepConfig sweep;
  sweep.tasks = {{"fashion-mnist_5-9", "fashion-mnist:classes=5-9:n=1000"}};
  sweep.methods = methods, sweep.seeds = 1, sweep.out = out;
  train::RunConfig& base = sweep.base;
  base.model_config = "vit_mnist_28";
  base.model = pre;
  base.epochs = a.integer("epochs", 20, 1);
  base.batch = 50, base.weight_decay = 0.05, base.warmup_steps = 20, base.pad = 2;
  base.eval_every = base.epochs, base.quiet = quiet, base.log_every = 100;
  std::printf("== fine-tuning on 1000 training images of classes 5-9, testing on the test images of those classes\n");
  std::vector<SummaryRow> rows;
  for (const train::SweepRun& r : train::run_sweep(sweep).runs)
    rows.push_back({r.label, r.trainable, 100.0 * double(r.trainable) / double(r.total), r.accuracy, r.seconds,
                    r.delta_bytes});
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string md = summary_markdown(rows, total);
  std::printf("\n%s", md.c_str());
  write_file_atomic(out + "/summary.md", md);
  write_bar_chart_png(out + "/summary.png", rows);
  std::printf("\nwrote %s/summary.md and %s/summary.png\n", out.c_str(), out.c_str());
  return 0;
}

}  // namespace dg::cli
