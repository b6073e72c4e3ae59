// `deltagrad sweep`: every task x method x seed as ordinary run dirs, then the table
// (train/sweep.h does the work; this reads the options and says what went wrong in their terms).
#include <csignal>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "tools/commands.h"
#include "core/user_files.h"
#include "tools/model_args.h"
#include "train/sweep.h"

namespace dg::cli {

using nlohmann::json;

namespace {
void on_sigint(int) { train::Trainer::request_stop(); }
}  // namespace

int cmd_sweep(int argc, char** argv) {
  const char* help =
      "deltagrad sweep --tasks SPEC [SPEC...] --methods a,b,... --model-config C.json|PRESET --out SWEEP_DIR\n"
      "                [--seeds N] [--model W.safetensors] [--epochs N] [--batch B] [--weight-decay WD]\n"
      "                [--warmup STEPS] [--device cpu|cuda] [--precision f32|bf16]\n"
      "                [--augment auto|random-resized-crop|pad-crop] [--checkpoint-every STEPS]\n"
      "                [--checkpoint-minutes M] [--recompute-mlp] [--quiet]\n"
      "  Trains every task x method x seed (seeds 0..N-1, default 3) as a run dir\n"
      "  SWEEP_DIR/<task>/<method>/seed<k>, then writes SWEEP_DIR/sweep.md and sweep.csv (mean +- std\n"
      "  accuracy per method and task, the mean over tasks, trainable parameters, delta file size, train\n"
      "  time) and a chart, sweep.svg and sweep.png. The other options are train's, for every run.\n"
      "  SPEC: a data SPEC as train takes it (see deltagrad train --help); the task is named after its folder.\n"
      "  --methods: linear_probe, full, scaled_pair and the registered methods that have a default config\n"
      "  (the demo's rows), each with its own lr; the table's rows follow that order.\n"
      "  Run it again to continue: finished runs are skipped, an interrupted one (Ctrl-C) resumes.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2,
                      {"tasks", "methods", "seeds", "out", "model-config", "model", "epochs", "batch", "weight-decay",
                       "warmup", "device", "precision", "augment", "checkpoint-every", "checkpoint-minutes"},
                      {"quiet", "recompute-mlp"});
  // --tasks A B C: the first SPEC is the option's value, the rest arrive as positional arguments
  std::vector<std::string> specs;
  if (a.has("tasks")) specs.push_back(a.get("tasks"));
  specs.insert(specs.end(), a.positional.begin(), a.positional.end());
  if (specs.empty()) throw UsageError("missing required option --tasks");
  if (!a.has("tasks")) throw UsageError(str("unexpected argument '", specs[0], "' (tasks follow --tasks)"));
  train::SweepConfig c;
  for (const std::string& spec : specs) {
    const std::string path = spec.substr(0, spec.find(':'));
    std::error_code ec;
    if (path != "fashion-mnist" && !std::filesystem::is_directory(path, ec))
      throw UsageError(str("--tasks: '", spec, "' is not a folder (expected an image folder root/<class>/*.png, a ",
                           "folder of splits root/train, root/val, or fashion-mnist[:classes=...]"));
    c.tasks.push_back(train::sweep_task(absolute_data_path(spec)));
  }
  try {
    c.methods = train::choose_methods(a.need("methods"), "--methods");
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(e.what());
  }
  c.seeds = a.integer("seeds", 3, 1, 1000);
  c.out = a.need("out");
  json rc = {{"model_config", absolute_if_file(a.need("model-config"))}, {"out", c.out}};
  if (a.has("model")) rc["model"] = absolute_if_file(a.get("model"));
  if (a.has("epochs")) rc["epochs"] = a.integer("epochs", 1, 1);
  if (a.has("batch")) rc["batch"] = a.integer("batch", 64, 1);
  if (a.has("weight-decay")) rc["weight_decay"] = a.num("weight-decay", 0.05);
  if (a.has("warmup")) rc["warmup_steps"] = a.integer("warmup", 0, 0);
  if (a.has("device")) rc["device"] = a.get("device");
  if (a.has("precision")) rc["precision"] = a.get("precision");
  if (a.has("augment")) rc["augment"] = a.get("augment");
  if (a.has("checkpoint-every")) rc["checkpoint_every"] = a.integer("checkpoint-every", 0, 0);
  if (a.has("checkpoint-minutes")) rc["checkpoint_minutes"] = a.num("checkpoint-minutes", 0);
  if (a.has("quiet")) rc["quiet"] = true;
  if (a.has("recompute-mlp")) rc["recompute_mlp"] = true;
  c.base = train::run_config_from_json(rc);
  std::signal(SIGINT, on_sigint);
  const train::SweepResult r = train::run_sweep(c);
  std::signal(SIGINT, SIG_DFL);
  if (!a.has("quiet"))
    std::printf("\n%s\n", read_regular_file(c.out + "/sweep.md", "sweep table").c_str());
  std::printf("%d trained, %d resumed, %d skipped (finished before)%s; wrote %s/sweep.md, sweep.csv, sweep.svg, sweep.png\n",
              r.trained, r.resumed, r.skipped, r.interrupted ? "; interrupted: run it again to continue" : "",
              c.out.c_str());
  return r.interrupted ? 130 : 0;
}

}  // namespace dg::cli
