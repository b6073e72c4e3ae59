// A sweep, the way papers are made: every task x method x seed trained as an ordinary run dir
// (SWEEP_DIR/<task>/<method>/seed<k>), then one table of mean +- std accuracy per method and task.
//
// Resumable by construction: a run dir with sweep_run.json is finished and skipped (its run
// config must match, else the sweep stops and says what differs); one with a checkpoint but no
// sweep_run.json was interrupted and is resumed through the trainer's own resume (which checks
// base weights, data, model, PEFT config and batch); the trainer's run-dir lock keeps a second
// writer out. The table is computed from the run dirs' own files (metrics.csv, deltas.safetensors,
// sweep_run.json), so it always describes what is on disk.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/figure.h"
#include "train/trainer.h"

namespace dg::train {

// A method as a sweep (and the demo) trains it: a PEFT config with the head trainable, and its lr.
struct SweepMethod {
  std::string id;     // what --methods names
  std::string label;  // the table's row
  nlohmann::json peft;
  double lr;
  // An LT-SFT row (train/lt_sft.h's options; null: an ordinary run). The sweep's epochs are split
  // between its phases, full_ft_epochs = max(1, epochs / 2) and the rest to the sparse phase, so it
  // trains as many epochs as the other rows; lr is the sparse phase's. The row's run dir is phase
  // 2's (its accuracy, trainable count and delta file), phase 1 under it in full/; its time is both.
  nlohmann::json lt_sft = nullptr;
};

// linear_probe, full, every registered method that has a demo row (peft/method_registry.h: its
// default delta config and lr), and scaled_pair (two adapters with scales on one model).
std::vector<SweepMethod> sweep_methods();
// The methods of a comma-separated list, in sweep_methods()' order; an unknown or repeated name
// throws Error("<option>: unknown 'x' (known: ...)").
std::vector<SweepMethod> choose_methods(const std::string& list, const std::string& option);

struct SweepTask {
  std::string name;  // the run dirs' folder and the table's column
  std::string spec;  // a data SPEC as train takes it
};
// A task named after the last folder of SPEC's path part ("data/vtab/cifar:val=0.2" -> "cifar").
SweepTask sweep_task(const std::string& spec);

struct SweepConfig {
  std::vector<SweepTask> tasks;
  std::vector<SweepMethod> methods;
  int64_t seeds = 3;  // seeds 0..seeds-1
  std::string out;
  RunConfig base;  // model, epochs, batch, ...; each run sets peft, lr, data, seed and out
};

struct SweepRun {
  std::string task, method, label, dir;
  uint64_t seed = 0;
  enum class Status { Trained, Resumed, Skipped, Interrupted, Missing } status = Status::Missing;
  double accuracy = 0, seconds = 0;  // the last evaluation (metrics.csv); training time across resumes
  int64_t trainable = 0, total = 0, delta_bytes = 0;
};

struct SweepResult {
  std::vector<SweepRun> runs;  // task-major, then method, then seed
  bool interrupted = false;    // a run stopped (Ctrl-C or max_steps): the runs after it did not start
  int trained = 0, resumed = 0, skipped = 0;
};

std::string sweep_run_dir(const SweepConfig& c, const SweepTask& t, const SweepMethod& m, uint64_t seed);

// Runs what is not finished, then writes SWEEP_DIR/sweep.md, sweep.csv, sweep.svg and sweep.png
// (of the finished runs, also after an interruption). Prints a line per run unless base.quiet.
SweepResult run_sweep(const SweepConfig& c);

// The finished run in `dir` (Missing when it has no sweep_run.json).
SweepRun read_sweep_run(const std::string& dir);

// The table: a row per method, a column per task (mean +- sample std over seeds, %), the mean
// over tasks of the per-task means, and the method's mean trainable parameters, delta file size
// and training time per run. CSV: one row per method and task, plus one per method for the mean.
std::string sweep_markdown(const SweepConfig& c, const std::vector<SweepRun>& runs);
std::string sweep_csv(const SweepConfig& c, const std::vector<SweepRun>& runs);
Figure sweep_figure(const SweepConfig& c, const std::vector<SweepRun>& runs);

}  // namespace dg::train
