// `deltagrad cost`: the cost ledger (train/cost.h) of one training step, as a table, JSON or CSV;
// with --compare, one row per method of the demo, beside full fine-tuning, and a bar chart.
#include <algorithm>
#include <cstdio>
#include <functional>

#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "core/backend.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "train/cost.h"
#include "train/figure.h"
#include "train/sweep.h"

namespace dg::cli {

using nlohmann::json;

namespace {

std::string mib(int64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f", double(b) / 1048576.0);
  return s;
}
std::string gflop(double f) {
  char s[32];
  std::snprintf(s, sizeof s, "%.3f", f / 1e9);
  return s;
}

std::string ratio(int64_t a, int64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.3f", double(a) / double(std::max<int64_t>(b, 1)));
  return s;
}

json row_json(const train::CostRow& r) {
  return {{"name", r.name}, {"kind", r.kind}, {"trainable_params", r.trainable_params}, {"grad_bytes", r.grad_bytes},
          {"optimizer_bytes", r.optimizer_bytes}, {"activation_bytes", r.activation_bytes},
          {"forward_flops", r.forward_flops}, {"backward_flops", r.backward_flops}, {"file_bytes", r.file_bytes}};
}

json ledger_json(const train::CostLedger& L) {
  json rows = json::array();
  for (const train::CostRow& r : L.rows) rows.push_back(row_json(r));
  json t = row_json(L.total);
  t["weight_bytes"] = L.weight_bytes, t["input_bytes"] = L.input_bytes, t["saved_param_bytes"] = L.saved_param_bytes;
  t["peak_bytes"] = L.peak_bytes, t["records"] = L.records;
  if (L.measured) t["measured"] = {{"held_bytes", L.measured_held_bytes}, {"peak_bytes", L.measured_peak_bytes}};
  return {{"rows", rows}, {"totals", t}};
}

const char* kCsvHeader =
    "name,kind,trainable_params,grad_bytes,optimizer_bytes,activation_bytes,forward_flops,backward_flops,file_bytes,"
    "weight_bytes,input_bytes,saved_param_bytes,peak_bytes,measured_held_bytes,measured_peak_bytes\n";

std::string csv_row(const train::CostRow& r) {
  return str(r.name, ",", r.kind, ",", r.trainable_params, ",", r.grad_bytes, ",", r.optimizer_bytes, ",",
             r.activation_bytes, ",", int64_t(r.forward_flops), ",", int64_t(r.backward_flops), ",", r.file_bytes);
}

// The rows, then the total with the step's totals (measured ones blank when not measured).
std::string ledger_csv(const train::CostLedger& L, const std::string& prefix) {
  std::string s;
  for (const train::CostRow& r : L.rows) s += prefix + csv_row(r) + ",,,,,,\n";
  s += prefix + csv_row(L.total) + str(",", L.weight_bytes, ",", L.input_bytes, ",", L.saved_param_bytes, ",", L.peak_bytes, ",");
  s += L.measured ? str(L.measured_held_bytes, ",", L.measured_peak_bytes, "\n") : std::string(",\n");
  return s;
}

std::string ledger_table(const train::CostLedger& L, bool sites) {
  std::string s;
  char line[400];
  std::snprintf(line, sizeof line, "%-34s %12s %10s %10s %12s %10s %10s %10s\n", "", "trainable", "grads MiB",
                "AdamW MiB", "saved act MiB", "fwd GFLOP", "bwd GFLOP", "file MiB");
  s += line;
  auto put = [&](const train::CostRow& r) {
    const std::string name = r.kind == "site" ? "  " + r.name : r.name;
    std::snprintf(line, sizeof line, "%-34s %12lld %10s %10s %12s %10s %10s %10s\n", name.substr(0, 34).c_str(),
                  (long long)r.trainable_params, mib(r.grad_bytes).c_str(), mib(r.optimizer_bytes).c_str(),
                  mib(r.activation_bytes).c_str(), gflop(r.forward_flops).c_str(), gflop(r.backward_flops).c_str(),
                  mib(r.file_bytes).c_str());
    s += line;
  };
  for (const train::CostRow& r : L.rows)
    if (sites || r.kind != "site") put(r);
  put(L.total);
  s += str("weights (base and delta parameters, buffers, masks) ", mib(L.weight_bytes), " MiB; the batch ",
           mib(L.input_bytes), " MiB; saved views of parameters (no new memory) ", mib(L.saved_param_bytes), " MiB\n");
  s += str("predicted from the ", L.records, " records of one step: saved activations ", L.total.activation_bytes,
           " B, peak ", L.peak_bytes, " B (", mib(L.peak_bytes), " MiB)\n");
  if (L.measured)
    s += str("measured after a real step: the tape held ", L.measured_held_bytes, " B (activations + parameter views: ",
             L.total.activation_bytes + L.saved_param_bytes, " B), the allocator's peak ", L.measured_peak_bytes, " B (",
             mib(L.measured_peak_bytes), " MiB; predicted/measured ", ratio(L.peak_bytes, L.measured_peak_bytes), ")\n");
  return s;
}

struct Compared {
  std::string method;
  train::CostLedger ledger;
};

std::string compare_table(const std::vector<Compared>& all) {
  std::string s =
      "| method | trainable | weights MiB | grads MiB | AdamW MiB | saved act MiB | peak MiB (predicted) | peak MiB "
      "(measured) | fwd+bwd GFLOP |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const Compared& c : all) {
    const train::CostLedger& L = c.ledger;
    s += str("| ", c.method, " | ", L.total.trainable_params, " | ", mib(L.weight_bytes), " | ", mib(L.total.grad_bytes),
             " | ", mib(L.total.optimizer_bytes), " | ", mib(L.total.activation_bytes), " | ", mib(L.peak_bytes), " | ",
             L.measured ? mib(L.measured_peak_bytes) : std::string("-"), " | ",
             gflop(L.total.forward_flops + L.total.backward_flops), " |\n");
  }
  return s;
}

// Two panels: memory by kind (stacked: weights, gradients, AdamW state, saved activations) and
// GEMM FLOPs (forward, backward) per method.
train::Figure compare_figure(const std::vector<Compared>& all, const std::string& title) {
  const double bar = 18, gap = 8, left = 150, top = 46, panel = 330, mid = 80;
  const double h = top + double(all.size()) * (bar + gap) + 40;
  train::Figure f(left + 2 * panel + mid + 90, h);  // room for the longest bar's label
  f.rect(0, 0, f.w, f.h, "white");
  f.text(10, 18, title);
  double max_mem = 1, max_flops = 1;
  for (const Compared& c : all) {
    const train::CostLedger& L = c.ledger;
    max_mem = std::max(max_mem, double(L.weight_bytes + L.total.grad_bytes + L.total.optimizer_bytes + L.total.activation_bytes));
    max_flops = std::max(max_flops, L.total.forward_flops + L.total.backward_flops);
  }
  const char* colors[] = {"#7f7f7f", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd"};
  const double x2 = left + panel + mid;
  f.text(left, top - 10, "memory MiB: weights | grads | AdamW | saved activations", train::Figure::Anchor::Start, 10);
  f.text(x2, top - 10, "GFLOP: forward | backward", train::Figure::Anchor::Start, 10);
  for (size_t i = 0; i < all.size(); ++i) {
    const train::CostLedger& L = all[i].ledger;
    const double y = top + double(i) * (bar + gap);
    f.text(10, y + bar / 2 + 4, all[i].method, train::Figure::Anchor::Start, 10);
    double x = left;
    const int64_t parts[] = {L.weight_bytes, L.total.grad_bytes, L.total.optimizer_bytes, L.total.activation_bytes};
    for (int k = 0; k < 4; ++k) {
      const double w = double(parts[k]) / max_mem * panel;
      f.rect(x, y, w, bar, colors[k]);
      x += w;
    }
    double total = 0;
    for (int64_t p : parts) total += double(p);
    f.text(x + 4, y + bar / 2 + 4, mib(int64_t(total)), train::Figure::Anchor::Start, 9);
    const double fw = L.total.forward_flops / max_flops * panel, bw = L.total.backward_flops / max_flops * panel;
    f.rect(x2, y, fw, bar, colors[4]);
    f.rect(x2 + fw, y, bw, bar, colors[5]);
    f.text(x2 + fw + bw + 4, y + bar / 2 + 4, gflop(L.total.forward_flops + L.total.backward_flops),
           train::Figure::Anchor::Start, 9);
  }
  f.line(left, top - 4, left, h - 36, "#000000");
  f.line(x2, top - 4, x2, h - 36, "#000000");
  return f;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

int cmd_cost(int argc, char** argv) {
  const char* help =
      "deltagrad cost --model-config C [--peft P.json] [--batch B] [--precision f32|bf16] [--recompute-mlp]\n"
      "               [--device cpu|cuda] [--format table|json|csv] [--out FILE] [--sites] [--predict-only]\n"
      "deltagrad cost --model-config C --compare all|a,b,... [--chart FILE.png|FILE.svg] [options as above]\n"
      "  What one training step costs (AdamW, a random batch of B images, default 8; random weights, which change\n"
      "  nothing counted), per delta, per site (--sites in the table; always in JSON and CSV) and for the base:\n"
      "  trainable parameters, gradient and AdamW state bytes, activation bytes saved for backward (from the\n"
      "  tape's records, each buffer once), forward and backward GEMM FLOPs as the engine issues them (a frozen\n"
      "  weight's gradient GEMM never runs), and the delta file's bytes. Totals: weights, the batch, the peak\n"
      "  predicted by replaying backward over the records, and measured beside it: the tape's held bytes and\n"
      "  the allocator's peak over a real step after a warm-up step (--predict-only: no warm-up, no measurement).\n"
      "  Without --peft: full fine-tuning. JSON and CSV give bytes in bytes; --out writes them to FILE.\n"
      "  --compare: the demo's methods (linear_probe, full, and each registered method's demo row; all: every\n"
      "  one), full fine-tuning always among them, as one table and, with --chart, a bar chart.\n"
      "  --device cuda without a GPU (or in a build without CUDA) prints one line saying so and skips.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2,
                      {"model-config", "peft", "batch", "precision", "device", "format", "out", "compare", "chart"},
                      {"recompute-mlp", "sites", "predict-only"});
  train::CostOptions o;
  o.batch = a.integer("batch", 8, 1);
  const std::string precision = a.get("precision", "f32");
  if (precision != "f32" && precision != "bf16") throw UsageError(str("--precision: expected f32 or bf16, got '", precision, "'"));
  o.bf16 = precision == "bf16";
  o.recompute_mlp = a.has("recompute-mlp");
  o.measure = !a.has("predict-only");
  const std::string dev = a.get("device", "cpu"), format = a.get("format", "table");
  if (dev != "cpu" && dev != "cuda") throw UsageError(str("--device: expected cpu or cuda, got '", dev, "'"));
  if (format != "table" && format != "json" && format != "csv")
    throw UsageError(str("--format: expected table, json or csv, got '", format, "'"));
  if (a.has("chart") && !a.has("compare")) throw UsageError("--chart goes with --compare");
  if (a.has("compare") && a.has("peft")) throw UsageError("--compare runs the demo's methods: drop --peft");
  const std::string chart = a.get("chart");
  if (!chart.empty() && !ends_with(chart, ".png") && !ends_with(chart, ".svg"))
    throw UsageError(str("--chart '", chart, "': expected a .png or .svg file name"));
  if (dev == "cuda" && !backend_available(Device::CUDA)) {
    std::printf("cost --device cuda: skipped: no CUDA device, or a build without CUDA\n");
    return 0;
  }
  o.device = dev == "cuda" ? Device::CUDA : Device::CPU;
  const nn::ViTConfig mc = nn::load_vit_config(a.need("model-config"));
  auto ledger_of = [&](const json& peft) {
    nn::VisionTransformer m(mc);
    m.init_weights(0);
    peft::PeftModel pm(m, peft::parse_peft_config(peft, "peft config"));
    return train::cost_ledger(pm, o);
  };
  auto emit = [&](const std::string& text) {
    if (a.has("out")) {
      write_file_atomic(a.get("out"), text);
      std::printf("wrote %s\n", a.get("out").c_str());
    } else {
      std::fputs(text.c_str(), stdout);
    }
  };
  const std::string setup = str(a.get("model-config"), ", batch ", o.batch, ", ", precision,
                                o.recompute_mlp ? ", recompute-mlp" : "", ", ", dev);
  if (!a.has("compare")) {
    const json peft = a.has("peft") ? read_json_file(a.get("peft"), "peft config") : json{{"trainable", {"*"}}};
    const train::CostLedger L = ledger_of(peft);
    if (format == "table") {
      std::printf("one training step: %s, %s\n", setup.c_str(), a.has("peft") ? a.get("peft").c_str() : "full fine-tuning");
      std::fputs(ledger_table(L, a.has("sites")).c_str(), stdout);
    } else if (format == "json") {
      emit(ledger_json(L).dump(1) + "\n");
    } else {
      emit(kCsvHeader + ledger_csv(L, ""));
    }
    return 0;
  }
  std::vector<train::SweepMethod> methods =
      a.get("compare") == "all" ? train::sweep_methods() : train::choose_methods(a.get("compare"), "--compare");
  if (std::none_of(methods.begin(), methods.end(), [](const train::SweepMethod& m) { return m.id == "full"; }))
    methods.insert(methods.begin(), train::choose_methods("full", "--compare")[0]);
  std::vector<Compared> all;
  for (const train::SweepMethod& m : methods) {
    if (!m.lt_sft.is_null()) {  // two runs: its phase 1 step is full's, its phase 2 step a masked run's
      std::fprintf(stderr, "cost: %s skipped: its steps are full fine-tuning's, then a masked run's\n", m.id.c_str());
      continue;
    }
    std::fprintf(stderr, "cost: %s\n", m.id.c_str());
    all.push_back({m.id, ledger_of(m.peft)});
  }
  if (format == "table") {
    std::printf("one training step: %s\n%s", setup.c_str(), compare_table(all).c_str());
  } else if (format == "json") {
    json j = json::array();
    for (const Compared& c : all) j.push_back({{"method", c.method}, {"ledger", ledger_json(c.ledger)}});
    emit(j.dump(1) + "\n");
  } else {
    std::string s = std::string("method,") + kCsvHeader;
    for (const Compared& c : all) s += ledger_csv(c.ledger, c.method + ",");
    emit(s);
  }
  if (!chart.empty()) {
    const train::Figure f = compare_figure(all, "one training step: " + setup);
    if (ends_with(chart, ".svg")) train::write_svg(chart, f);
    else train::write_png(chart, train::rasterize(f, 1));
    std::printf("wrote %s\n", chart.c_str());
  }
  return 0;
}

}  // namespace dg::cli
