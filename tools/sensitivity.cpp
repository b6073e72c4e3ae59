// `deltagrad sensitivity`: score the base weights of a model on a dataset (peft/sensitivity.h),
// keep the top share, write a mask file that a PEFT config's masks entry reads ("from"), and
// optionally a PNG heat map of each scored matrix (teaching: where does the task pull?).
#include <cstdio>
#include <filesystem>

#include "data/loader.h"
#include "nn/glob.h"
#include "peft/sensitivity.h"
#include "tools/commands.h"
#include "tools/model_args.h"
#include "train/figure.h"
#include "train/trainer.h"

namespace dg::cli {

int cmd_sensitivity(int argc, char** argv) {
  const char* help =
      "deltagrad sensitivity --model-config C --model W.safetensors --data SPEC --out MASKS.safetensors\n"
      "                      [--criterion grad|taylor|fisher|magnitude|random] [--budget 0.01] [--batches 8]\n"
      "                      [--batch 32] [--tensors GLOB,GLOB] [--scope global|tensor] [--seed S] [--heatmap DIR]\n"
      "  Scores every element of the base tensors that --tensors matches (default: blocks.*.weight):\n"
      "  grad |g|, taylor |g*w|, fisher g^2 (each summed over N training batches, eval mode, no optimizer),\n"
      "  magnitude |w|, random (seeded). Keeps the top --budget share over all tensors (global, SPT) or\n"
      "  in each (tensor), and writes their positions. Use it in a PEFT config:\n"
      "    \"masks\": [{\"tensor\": \"blocks.*.weight\", \"from\": \"MASKS.safetensors\"}]\n"
      "  --heatmap DIR writes DIR/<tensor>.png (log scale, black -> white) for each scored matrix.\n";
  if (wants_help(argc, argv, help)) return 0;
  Args a = parse_args(argc, argv, 2,
                      {"model-config", "model", "data", "out", "criterion", "budget", "batches", "batch", "tensors",
                       "scope", "seed", "heatmap"});
  const peft::Criterion crit = peft::parse_criterion(a.get("criterion", "fisher"), "--criterion");
  const double budget = a.num("budget", 0.01);
  if (!(budget > 0 && budget <= 1)) throw UsageError(str("--budget must be in (0, 1], got ", budget));
  const std::string scope = a.get("scope", "global");
  if (scope != "global" && scope != "tensor") throw UsageError("--scope must be global or tensor");
  const uint64_t seed = uint64_t(a.integer("seed", 0, 0));
  const int64_t batches = a.integer("batches", 8, 1);
  nn::ViTConfig mc = model_config_for(a);
  data::ImageSet train_set;
  if (peft::needs_gradients(crit)) {
    auto [tr, va] = train::load_data(a.need("data"), mc, seed);
    mc.num_classes = tr.num_classes, mc.class_names = tr.class_names;
    train_set = tr;
  }
  auto m = load_model(a, mc);
  const std::vector<std::string> globs = a.list("tensors", "blocks.*.weight");
  std::vector<std::string> names;
  for (auto& [n, t] : m->named_parameters(false))
    if (nn::glob_match_any(globs, n)) names.push_back(n);
  if (names.empty()) throw UsageError(str("--tensors '", a.get("tensors", "blocks.*.weight"), "' matches no tensor"));
  data::LoaderOptions lo;
  lo.batch = a.integer("batch", 32, 1), lo.shuffle = true, lo.seed = seed, lo.mean = mc.mean, lo.std = mc.std;
  std::unique_ptr<data::DataLoader> loader;
  if (peft::needs_gradients(crit)) loader = std::make_unique<data::DataLoader>(train_set, lo);
  auto scores = peft::sensitivity_scores(*m, names, crit, batches, [&](int64_t i) {
    const int64_t n = loader->batches_per_epoch();
    data::Batch b = loader->make_batch(i / n, i % n);
    return std::make_pair(b.images, b.labels);
  }, seed);
  auto masks = peft::top_k_masks(scores, budget, scope == "global");
  int64_t kept = 0, total = 0;
  for (auto& [n, mk] : masks) {
    total += mk.numel();
    for (double v : mk.to_vector()) kept += v != 0;
  }
  peft::save_mask_file(a.need("out"), masks,
                       {{"generator", "deltagrad sensitivity"}, {"criterion", a.get("criterion", "fisher")},
                        {"budget", str(budget)}, {"scope", scope}, {"batches", str(batches)}});
  std::printf("%lld of %lld elements (%.3f%%) in %zu tensors kept by %s; mask file %s\n", (long long)kept,
              (long long)total, 100.0 * double(kept) / double(total), masks.size(), a.get("criterion", "fisher").c_str(),
              a.get("out").c_str());
  if (a.has("heatmap")) {
    std::filesystem::create_directories(a.get("heatmap"));
    for (auto& [n, s] : scores) {
      if (s.dim() != 2) continue;
      const int rows = int(s.shape()[0]), cols = int(s.shape()[1]);
      const int cell = std::max(1, 256 / std::max(rows, cols));
      train::write_png(a.get("heatmap") + "/" + n + ".png", train::heat_map(s.to_vector(), rows, cols, cell));
    }
    std::printf("heat maps of the scored matrices in %s\n", a.get("heatmap").c_str());
  }
  return 0;
}

}  // namespace dg::cli
