// `deltagrad demo`: the README's main job. Pretrain the 28x28 ViT on Fashion-MNIST classes
// 0-4 (cached), then adapt it to a 1000-image training set of classes 5-9 (VTAB-1k style;
// evaluated on the full test split of those classes) with each method, and report.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "tools/chart.h"
#include "tools/commands.h"
#include "train/trainer.h"

namespace dg::cli {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Method {
  const char* name;
  json peft;
  double lr;
};

std::vector<Method> methods() {
  const json head = json::array({"head.*"});
  return {
      {"linear probe", {{"trainable", head}}, 1e-2},
      {"full fine-tune", {{"trainable", {"*"}}}, 5e-4},
      {"LoRA r=8 (qkv)", {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 8}, {"lora_alpha", 8}}}}, {"trainable", head}}, 3e-3},
      {"Houlsby d=8", {{"deltas", {{{"name", "houlsby"}, {"method", "houlsby"}, {"dim", 8}}}}, {"trainable", head}}, 3e-3},
      {"Adapter+ d=8", {{"deltas", {{{"name", "adapter_plus"}, {"method", "adapter_plus"}, {"dim", 8}}}}, {"trainable", head}}, 3e-3},
      {"VPT-deep 10", {{"deltas", {{{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 10}}}}, {"trainable", head}}, 1e-2},
      {"2 adapters + scales",
       {{"deltas",
         {{{"name", "post"}, {"method", "adapter_plus"}, {"dim", 4}, {"scale", {{"kind", "scalar"}, {"init", 1.0}}}},
          {{"name", "par"}, {"method", "parallel"}, {"dim", 4}, {"scale", {{"kind", "channel"}, {"init", 0.1}}}}}},
        {"trainable", head}},
       3e-3},
  };
}

}  // namespace

int cmd_demo(int argc, char** argv) {
  const char* help =
      "deltagrad demo [--out RUN_DIR] [--epochs N] [--pretrain-epochs N] [--quiet]\n"
      "  Pretrains vit_mnist_28 on Fashion-MNIST classes 0-4 (cached in RUN_DIR/pretrained.safetensors),\n"
      "  fine-tunes it on 1000 training images of classes 5-9 with each method, evaluates on the 5000 test\n"
      "  images of those classes, and writes RUN_DIR/summary.md and RUN_DIR/summary.png.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"out", "epochs", "pretrain-epochs"}, {"quiet"});
  const std::string out = a.get("out", "runs/demo");
  const bool quiet = a.has("quiet");
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

  std::vector<SummaryRow> rows;
  train::RunConfig base;
  base.model_config = "vit_mnist_28";
  base.model = pre;
  base.data = "fashion-mnist:classes=5-9:n=1000";
  base.epochs = a.integer("epochs", 20, 1);
  base.batch = 50, base.weight_decay = 0.05, base.warmup_steps = 20, base.pad = 2;
  base.eval_every = base.epochs, base.quiet = quiet, base.log_every = 100;
  auto [tr, va] = train::load_data(base.data, mc, base.seed);
  std::printf("== fine-tuning on %lld images of classes 5-9, testing on %lld\n", (long long)tr.size(), (long long)va.size());
  for (const Method& m : methods()) {
    train::RunConfig rc = base;
    rc.peft = m.peft;
    rc.lr = m.lr;
    std::string dir = m.name;
    for (char& c : dir)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    rc.out = out + "/" + dir;
    std::printf("-- %s (lr %g)\n", m.name, m.lr);
    train::Trainer t(rc, tr, va);
    train::TrainResult r = t.fit();
    rows.push_back({m.name, r.trainable_params, 100.0 * double(r.trainable_params) / double(r.total_params),
                    r.epochs.back().val_acc, r.seconds});
    std::printf("   %s: %lld trainable (%.2f%%), test accuracy %.2f%%, %.1fs\n", m.name, (long long)r.trainable_params,
                rows.back().percent, 100 * rows.back().accuracy, r.seconds);
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string md = summary_markdown(rows, total);
  std::printf("\n%s", md.c_str());
  write_file_atomic(out + "/summary.md", md);
  write_bar_chart_png(out + "/summary.png", rows);
  std::printf("\nwrote %s/summary.md and %s/summary.png\n", out.c_str(), out.c_str());
  return 0;
}

}  // namespace dg::cli
