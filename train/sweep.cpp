#include "train/sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "core/safetensors.h"
#include "core/user_files.h"
#include "nn/vit_config.h"
#include "peft/method_registry.h"
#include "train/lt_sft.h"

namespace dg::train {

using nlohmann::json;
namespace fs = std::filesystem;

std::vector<SweepMethod> sweep_methods() {
  const json head = json::array({"head.*"});
  std::vector<SweepMethod> out = {{"linear_probe", "linear probe", {{"trainable", head}}, 1e-2},
                                  {"full", "full fine-tune", {{"trainable", {"*"}}}, 5e-4}};
  for (const peft::MethodDef* m : peft::all_methods())
    if (m->demo) out.push_back({m->name, m->demo->label, {{"deltas", {m->demo->delta}}, {"trainable", head}}, m->demo->lr});
  out.push_back({"scaled_pair", "2 adapters + scales",
                 {{"deltas",
                   {{{"name", "post"}, {"method", "adapter_plus"}, {"dim", 4}, {"scale", {{"kind", "scalar"}, {"init", 1.0}}}},
                    {{"name", "par"}, {"method", "parallel"}, {"dim", 4}, {"scale", {{"kind", "channel"}, {"init", 0.1}}}}}},
                  {"trainable", head}},
                 3e-3});
  // Options of registered methods that change what a delta file holds (issue 19): 1-bit weights
  // (packed signs) and a sensitivity-chosen sparse mask (positions + values)
  out.push_back({"lora_1bit", "LoRA r=8 (qkv), 1-bit",
                 {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 8}, {"lora_alpha", 8}, {"bits", 1}}}},
                  {"trainable", head}},
                 3e-3});
  out.push_back({"adapter_plus_1bit", "Adapter+ d=8, 1-bit",
                 {{"deltas", {{{"name", "adapter_plus"}, {"method", "adapter_plus"}, {"dim", 8}, {"bits", 1}}}},
                  {"trainable", head}},
                 3e-3});
  out.push_back({"sparse_fisher", "1% of MLP weights (fisher, SPT)",
                 {{"trainable", head},
                  {"masks", {{{"tensor", "blocks.*.mlp.*.weight"},
                              {"select", {{"criterion", "fisher"}, {"budget", 0.01}, {"batches", 8}}}}}}},
                 3e-3});
  // LT-SFT (Ansell et al. 2022): full fine-tuning at the full row's lr, then 1% of the weights
  // that changed most (every tensor but the head eligible), retrained from the base with the head
  out.push_back({"lt_sft", "LT-SFT 1% (most changed)", {{"trainable", head}}, 3e-3,
                 {{"ft_params_proportion", 0.01}, {"full_lr", 5e-4}}});
  return out;
}

std::vector<SweepMethod> choose_methods(const std::string& list, const std::string& option) {
  const std::vector<SweepMethod> all = sweep_methods();
  std::string known;
  for (const SweepMethod& m : all) known += (known.empty() ? "" : ", ") + m.id;
  std::set<std::string> want;
  for (size_t i = 0; i <= list.size();) {
    const size_t j = std::min(list.find(',', i), list.size());
    const std::string w = list.substr(i, j - i);
    if (!w.empty()) {
      bool found = false;
      for (const SweepMethod& m : all) found |= m.id == w;
      DG_CHECK(found, option, ": unknown '", w, "' (known: ", known, ")");
      DG_CHECK(want.insert(w).second, option, ": '", w, "' is named twice");
    }
    i = j + 1;
  }
  DG_CHECK(!want.empty(), option, ": no method named (known: ", known, ")");
  std::vector<SweepMethod> out;
  for (const SweepMethod& m : all)
    if (want.count(m.id)) out.push_back(m);
  return out;
}

SweepTask sweep_task(const std::string& spec) {
  std::string path = spec.substr(0, spec.find(':'));
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  std::string name = fs::path(path).filename().string();
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') c = '_';
  DG_CHECK(!name.empty() && name != "." && name != "..", "task '", spec, "': cannot name it after its folder");
  return {name, spec};
}

std::string sweep_run_dir(const SweepConfig& c, const SweepTask& t, const SweepMethod& m, uint64_t seed) {
  return str(c.out, "/", t.name, "/", m.id, "/seed", seed);
}

namespace {

constexpr const char* kRunRecord = "sweep_run.json";

// What must match for a finished run to count for this sweep: the run config without the keys
// that do not change what is trained (where it lives, how it reports, when it checkpoints).
json trained_as(json rc) {
  for (const char* k : {"out", "quiet", "log_every", "max_steps", "checkpoint_every", "checkpoint_minutes", "device",
                        "recompute_mlp", "overlap", "bucket_mb"})
    rc.erase(k);
  // keys added later, at the values that train as before: a record written before they existed matches
  if (rc.value("l1_reg", 0.0) == 0.0) rc.erase("l1_reg");
  if (rc.value("l1_reg_tensors", json::array()).empty()) rc.erase("l1_reg_tensors");
  return rc;
}

std::string differing_keys(const json& then, const json& now) {
  std::string s;
  for (auto it = now.begin(); it != now.end(); ++it)
    if (!then.contains(it.key()) || then[it.key()] != it.value())
      s += str(s.empty() ? "" : "; ", it.key(), ": ", then.contains(it.key()) ? then[it.key()].dump() : "(none)", " then, ",
               it.value().dump(), " now");
  return s;
}

// The last evaluated accuracy in a run's metrics.csv (epoch rows: kind,epoch,step,loss,acc,lr,val_acc).
double last_val_acc(const std::string& dir) {
  const std::string path = dir + "/metrics.csv";
  std::ifstream in(path);
  std::optional<double> acc;
  for (std::string line; std::getline(in, line);)
    if (line.rfind("epoch,", 0) == 0) {
      const std::string v = line.substr(line.rfind(',') + 1);
      if (!v.empty()) acc = std::stod(v);
    }
  DG_CHECK(acc.has_value(), "run dir '", dir, "': metrics.csv has no evaluated epoch (a finished run has one)");
  return *acc;
}

struct Stats {
  int n = 0;
  double mean = 0, std = 0;  // sample standard deviation (n - 1), 0 for one value
};
Stats stats(const std::vector<double>& v) {
  Stats s;
  s.n = int(v.size());
  if (v.empty()) return s;
  for (double x : v) s.mean += x / double(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / double(v.size() - 1));
  }
  return s;
}

bool counts(const SweepRun& r) {
  return r.status == SweepRun::Status::Trained || r.status == SweepRun::Status::Resumed ||
         r.status == SweepRun::Status::Skipped;
}

// The numbers of one table row: per task (accuracy over seeds), the mean over tasks, and the
// method's means over all its finished runs.
struct MethodRow {
  std::vector<Stats> per_task;
  std::optional<double> task_mean;  // only when every task has a finished run
  double trainable = 0, delta_bytes = 0, seconds = 0;
  int runs = 0;
};
MethodRow method_row(const SweepConfig& c, const SweepMethod& m, const std::vector<SweepRun>& runs) {
  MethodRow row;
  double sum = 0;
  bool all = true;
  for (const SweepTask& t : c.tasks) {
    std::vector<double> acc;
    for (const SweepRun& r : runs)
      if (counts(r) && r.method == m.id && r.task == t.name) {
        acc.push_back(r.accuracy);
        row.trainable += double(r.trainable), row.delta_bytes += double(r.delta_bytes), row.seconds += r.seconds;
        ++row.runs;
      }
    row.per_task.push_back(stats(acc));
    all &= !acc.empty();
    sum += row.per_task.back().mean;
  }
  if (all && !c.tasks.empty()) row.task_mean = sum / double(c.tasks.size());
  if (row.runs > 0) row.trainable /= row.runs, row.delta_bytes /= row.runs, row.seconds /= row.runs;
  return row;
}

std::string bytes_text(double b) {
  char s[32];
  if (b < 1024) std::snprintf(s, sizeof s, "%.0f B", b);
  else if (b < 1024 * 1024) std::snprintf(s, sizeof s, "%.1f KiB", b / 1024);
  else std::snprintf(s, sizeof s, "%.2f MiB", b / (1024 * 1024));
  return s;
}

std::string fixed(double v, int digits) {
  char s[64];
  std::snprintf(s, sizeof s, "%.*f", digits, v);
  return s;
}

// An LT-SFT row's options: the row's, with the sweep's epochs split between the phases and the
// row's lr for the sparse phase.
LtSftOptions lt_sft_row_options(const SweepMethod& m, int64_t epochs) {
  LtSftOptions o = lt_sft_options_from_json(m.lt_sft, str("sweep method '", m.id, "'"));
  o.full_ft_epochs = std::max<int64_t>(1, epochs / 2);
  o.sparse_ft_epochs = std::max<int64_t>(1, epochs - o.full_ft_epochs);
  o.sparse_lr = m.lr;
  return o;
}

}  // namespace

SweepRun read_sweep_run(const std::string& dir) {
  SweepRun r;
  r.dir = dir;
  if (!fs::exists(dir + "/" + kRunRecord)) return r;
  const json j = read_json_file(dir + "/" + kRunRecord, "sweep run record");
  DG_CHECK(j.is_object(), "'", dir, "/", kRunRecord, "': expected a JSON object");
  try {
    r.task = j.at("task"), r.method = j.at("method"), r.label = j.at("label"), r.seed = j.at("seed");
    r.trainable = j.at("trainable_params"), r.total = j.at("total_params"), r.seconds = j.at("train_seconds");
  } catch (const json::exception& e) {
    throw Error(str("'", dir, "/", kRunRecord, "': ", e.what()));
  }
  r.accuracy = last_val_acc(dir);
  std::error_code ec;
  const auto size = fs::file_size(dir + "/deltas.safetensors", ec);
  DG_CHECK(!ec, "run dir '", dir, "': no deltas.safetensors (a finished run has one)");
  r.delta_bytes = int64_t(size);
  r.status = SweepRun::Status::Skipped;
  return r;
}

SweepResult run_sweep(const SweepConfig& c) {
  DG_CHECK(!c.tasks.empty() && !c.methods.empty() && c.seeds >= 1, "sweep: needs a task, a method and seeds >= 1");
  std::set<std::string> names;
  for (const SweepTask& t : c.tasks)
    DG_CHECK(names.insert(t.name).second, "sweep: two tasks are named '", t.name,
             "' (a task is named after its folder; give folders different names)");
  const nn::ViTConfig mc = nn::load_vit_config(c.base.model_config);
  fs::create_directories(c.out);
  SweepResult res;
  const int64_t total = int64_t(c.tasks.size() * c.methods.size()) * c.seeds;
  int64_t index = 0;
  for (const SweepTask& t : c.tasks) {
    std::map<uint64_t, std::pair<data::ImageSet, data::ImageSet>> data_of_seed;  // loaded when first needed
    for (const SweepMethod& m : c.methods) {
      for (uint64_t seed = 0; seed < uint64_t(c.seeds); ++seed) {
        ++index;
        RunConfig rc = c.base;
        rc.peft = m.peft, rc.lr = m.lr, rc.data = t.spec, rc.seed = seed, rc.out = sweep_run_dir(c, t, m, seed);
        std::optional<LtSftOptions> lt;
        if (!m.lt_sft.is_null()) lt = lt_sft_row_options(m, c.base.epochs);
        json record_now = trained_as(to_json(rc));
        if (lt) record_now["lt_sft"] = lt_sft_options_to_json(*lt);
        const std::string where = str("[", index, "/", total, "] ", t.name, " / ", m.id, " / seed ", seed);
        if (fs::exists(rc.out + "/" + kRunRecord)) {
          const json then = read_json_file(rc.out + "/" + kRunRecord, "sweep run record").value("run_config", json());
          DG_CHECK(then == record_now, "sweep: run dir '", rc.out, "' finished with another run config (",
                   differing_keys(then, record_now), "); remove it to retrain, or give another --out");
          res.runs.push_back(read_sweep_run(rc.out));
          ++res.skipped;
          if (!c.base.quiet) std::printf("%s: finished before, skipped\n", where.c_str());
          continue;
        }
        // an LT-SFT row continues whichever phase is on disk (lt_sft.h)
        const bool resume = fs::exists(rc.out + "/checkpoint.safetensors") ||
                            (lt && (fs::exists(rc.out + "/sft_masks.safetensors") ||
                                    fs::exists(rc.out + "/full/checkpoint.safetensors")));
        if (!c.base.quiet) std::printf("%s: %s (lr %g)\n", where.c_str(), resume ? "resuming" : "training", m.lr);
        std::fflush(stdout);
        if (!data_of_seed.count(seed)) data_of_seed.emplace(seed, load_data(t.spec, mc, seed));
        const auto& [tr, va] = data_of_seed.at(seed);
        TrainResult r;
        if (lt) {
          const LtSftResult both = run_lt_sft(rc, *lt, tr, va, true);
          r = both.sparse;
          r.interrupted = both.interrupted, r.total_seconds += both.full.total_seconds;
        } else {
          r = Trainer(rc, tr, va).fit(resume);
        }
        if (r.interrupted) {
          SweepRun stopped;
          stopped.task = t.name, stopped.method = m.id, stopped.label = m.label, stopped.seed = seed, stopped.dir = rc.out;
          stopped.status = SweepRun::Status::Interrupted;
          res.runs.push_back(stopped);
          res.interrupted = true;
          break;
        }
        write_file_atomic(rc.out + "/" + kRunRecord,
                          json{{"task", t.name}, {"method", m.id}, {"label", m.label}, {"seed", seed},
                               {"trainable_params", r.trainable_params}, {"total_params", r.total_params},
                               {"train_seconds", r.total_seconds}, {"run_config", record_now}}
                                  .dump(1) + "\n");
        SweepRun done = read_sweep_run(rc.out);
        done.status = resume ? SweepRun::Status::Resumed : SweepRun::Status::Trained;
        ++(resume ? res.resumed : res.trained);
        if (!c.base.quiet)
          std::printf("%s: accuracy %.2f%%, %lld trainable, %.1fs\n", where.c_str(), 100 * done.accuracy,
                      (long long)done.trainable, done.seconds);
        res.runs.push_back(done);
      }
      if (res.interrupted) break;
    }
    if (res.interrupted) break;
  }
  write_file_atomic(c.out + "/sweep.md", sweep_markdown(c, res.runs));
  write_file_atomic(c.out + "/sweep.csv", sweep_csv(c, res.runs));
  const Figure chart = sweep_figure(c, res.runs);
  write_svg(c.out + "/sweep.svg", chart);
  write_png(c.out + "/sweep.png", rasterize(chart));
  return res;
}

std::string sweep_markdown(const SweepConfig& c, const std::vector<SweepRun>& runs) {
  std::string s = "| method |", rule = "|---|";
  for (const SweepTask& t : c.tasks) s += str(" ", t.name, " |"), rule += "---:|";
  s += str(" mean | trainable params | delta file | train time / run |\n", rule, "---:|---:|---:|---:|\n");
  for (const SweepMethod& m : c.methods) {
    const MethodRow row = method_row(c, m, runs);
    s += str("| ", m.label, " |");
    for (const Stats& st : row.per_task)
      s += st.n == 0 ? std::string(" - |")
                     : str(" ", fixed(100 * st.mean, 2), " ± ", fixed(100 * st.std, 2),
                           st.n < c.seeds ? str(" (", st.n, ")") : std::string(), " |");
    s += str(" ", row.task_mean ? fixed(100 * *row.task_mean, 2) : std::string("-"), " | ");
    s += row.runs ? str(fixed(row.trainable, 0), " | ", bytes_text(row.delta_bytes), " | ", fixed(row.seconds, 1), "s |\n")
                  : std::string("- | - | - |\n");
  }
  s += str("\nAccuracy in %: mean ± sample standard deviation over ", c.seeds, " seeds (0..", c.seeds - 1,
           ") on each task's evaluation split; \"(n)\": only n runs finished. mean: over tasks, of the per-task means.\n"
           "Trainable params, delta file size and train time: means over the method's runs.\n");
  return s;
}

std::string sweep_csv(const SweepConfig& c, const std::vector<SweepRun>& runs) {
  std::string s = "method,task,runs,accuracy_mean,accuracy_std,trainable_params,delta_bytes,train_seconds\n";
  for (const SweepMethod& m : c.methods) {
    const MethodRow row = method_row(c, m, runs);
    for (size_t i = 0; i < c.tasks.size(); ++i) {
      const Stats& st = row.per_task[i];
      // per-task resource columns: the means over this task's runs
      double tp = 0, db = 0, sec = 0;
      for (const SweepRun& r : runs)
        if (counts(r) && r.method == m.id && r.task == c.tasks[i].name)
          tp += double(r.trainable), db += double(r.delta_bytes), sec += r.seconds;
      const double n = std::max(st.n, 1);
      s += str(m.id, ",", c.tasks[i].name, ",", st.n, ",", st.n ? fixed(st.mean, 6) : "", ",", st.n ? fixed(st.std, 6) : "",
               ",", st.n ? fixed(tp / n, 0) : "", ",", st.n ? fixed(db / n, 0) : "", ",", st.n ? fixed(sec / n, 3) : "", "\n");
    }
    s += str(m.id, ",mean,", row.runs, ",", row.task_mean ? fixed(*row.task_mean, 6) : "", ",,",
             row.runs ? fixed(row.trainable, 0) : "", ",", row.runs ? fixed(row.delta_bytes, 0) : "", ",",
             row.runs ? fixed(row.seconds, 3) : "", "\n");
  }
  return s;
}

Figure sweep_figure(const SweepConfig& c, const std::vector<SweepRun>& runs) {
  static const char* palette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  const double left = 170, width = 420, bar = 12, gap = 12, legend_row = 18;
  const size_t nt = c.tasks.size();
  const double top = 40 + legend_row * double((nt + 3) / 4) + 10;
  const double group = double(nt) * bar + gap;
  Figure f(left + width + 40, top + double(c.methods.size()) * group + 50);
  f.text(f.w / 2, 18, str("accuracy by method and task (mean +- std over ", c.seeds, " seeds)"), Figure::Anchor::Middle, 14);
  for (size_t i = 0; i < nt; ++i) {  // the legend: above the bars, four tasks a row
    const double lx = left + double(i % 4) * 110, ly = 34 + legend_row * double(i / 4);
    f.rect(lx, ly, 10, 10, palette[i % 8]);
    f.text(lx + 14, ly + 9, c.tasks[i].name);
  }
  const double bottom = top + double(c.methods.size()) * group;
  auto X = [&](double acc) { return left + width * acc; };
  for (double t : nice_ticks(0, 100, 5)) {
    f.line(X(t / 100), top - 4, X(t / 100), bottom, "#dddddd");
    f.text(X(t / 100), bottom + 14, tick_label(t), Figure::Anchor::Middle);
  }
  f.text(left + width / 2, bottom + 32, "accuracy (%)", Figure::Anchor::Middle);
  for (size_t mi = 0; mi < c.methods.size(); ++mi) {
    const MethodRow row = method_row(c, c.methods[mi], runs);
    const double y0 = top + double(mi) * group;
    f.text(left - 8, y0 + double(nt) * bar / 2 + 4, c.methods[mi].label, Figure::Anchor::End);
    for (size_t ti = 0; ti < nt; ++ti) {
      const Stats& st = row.per_task[ti];
      if (st.n == 0) continue;
      const double y = y0 + double(ti) * bar;
      f.rect(left, y + 1, width * st.mean, bar - 2, palette[ti % 8]);
      if (st.n > 1) {  // the whisker: +- one standard deviation
        const double a = X(std::max(0.0, st.mean - st.std)), b = X(std::min(1.0, st.mean + st.std)), ym = y + bar / 2;
        f.line(a, ym, b, ym, "#222222");
        f.line(a, ym - 3, a, ym + 3, "#222222");
        f.line(b, ym - 3, b, ym + 3, "#222222");
      }
    }
  }
  f.line(left, top - 4, left, bottom, "#444444");
  return f;
}

}  // namespace dg::train
