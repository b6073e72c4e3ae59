// `deltagrad demo`: the README's main job. Pretrain the 28x28 ViT on Fashion-MNIST classes
// 0-4 (cached), then adapt it to a 1000-image training set of classes 5-9 (VTAB-1k style;
// evaluated on the full test split of those classes) with each method, and report.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "peft/method_registry.h"
#include "tools/chart.h"
#include "tools/commands.h"
#include "train/trainer.h"

namespace dg::cli {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct Method {
  std::string id;     // what --methods names: a registered method, or linear_probe, full, scaled_pair
  std::string label;  // the table's row
  json peft;
  double lr;
};

// The baselines, one row per registered method that has a demo (method_registry.h), and two
// adapters with scales composed on one model.
std::vector<Method> methods() {
  const json head = json::array({"head.*"});
  std::vector<Method> out = {{"linear_probe", "linear probe", {{"trainable", head}}, 1e-2},
                             {"full", "full fine-tune", {{"trainable", {"*"}}}, 5e-4}};
  for (const peft::MethodDef* m : peft::all_methods())
    if (m->demo) out.push_back({m->name, m->demo->label, {{"deltas", {m->demo->delta}}, {"trainable", head}}, m->demo->lr});
  out.push_back({"scaled_pair", "2 adapters + scales",
                 {{"deltas",
                   {{{"name", "post"}, {"method", "adapter_plus"}, {"dim", 4}, {"scale", {{"kind", "scalar"}, {"init", 1.0}}}},
                    {{"name", "par"}, {"method", "parallel"}, {"dim", 4}, {"scale", {{"kind", "channel"}, {"init", 0.1}}}}}},
                  {"trainable", head}},
                 3e-3});
  return out;
}

// --methods a,b,c: the rows to run, in the table's order; unknown names are an error that lists the known.
std::vector<Method> chosen(const std::string& list) {
  std::vector<Method> all = methods();
  if (list.empty()) return all;
  std::vector<std::string> want;
  for (size_t i = 0; i <= list.size();) {
    size_t j = std::min(list.find(',', i), list.size());
    if (j > i) want.push_back(list.substr(i, j - i));
    i = j + 1;
  }
  std::string known;
  for (const Method& m : all) known += (known.empty() ? "" : ", ") + m.id;
  for (const std::string& w : want) {
    bool found = false;
    for (const Method& m : all) found |= m.id == w;
    if (!found) throw UsageError(str("--methods: unknown '", w, "' (known: ", known, ")"));
  }
  std::vector<Method> out;
  for (const Method& m : all)
    if (std::find(want.begin(), want.end(), m.id) != want.end()) out.push_back(m);
  return out;
}

}  // namespace

int cmd_demo(int argc, char** argv) {
  const char* help =
      "deltagrad demo [--out RUN_DIR] [--epochs N] [--pretrain-epochs N] [--methods a,b,...] [--quiet]\n"
      "  Pretrains vit_mnist_28 on Fashion-MNIST classes 0-4 (cached in RUN_DIR/pretrained.safetensors),\n"
      "  fine-tunes it on 1000 training images of classes 5-9 with each method, evaluates on the 5000 test\n"
      "  images of those classes, and writes RUN_DIR/summary.md and RUN_DIR/summary.png.\n"
      "  --methods: the rows to run (default all): linear_probe, full, scaled_pair and the registered\n"
      "  methods that have a demo row.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2, {"out", "epochs", "pretrain-epochs", "methods"}, {"quiet"});
  const std::string out = a.get("out", "runs/demo");
  const bool quiet = a.has("quiet");
  const std::vector<Method> rows_to_run = chosen(a.get("methods"));
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
  for (const Method& m : rows_to_run) {
    train::RunConfig rc = base;
    rc.peft = m.peft;
    rc.lr = m.lr;
    std::string dir = m.label;
    for (char& c : dir)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    rc.out = out + "/" + dir;
    std::printf("-- %s (lr %g)\n", m.label.c_str(), m.lr);
    train::Trainer t(rc, tr, va);
    train::TrainResult r = t.fit();
    rows.push_back({m.label, r.trainable_params, 100.0 * double(r.trainable_params) / double(r.total_params),
                    r.epochs.back().val_acc, r.seconds});
    std::printf("   %s: %lld trainable (%.2f%%), test accuracy %.2f%%, %.1fs\n", m.label.c_str(), (long long)r.trainable_params,
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
