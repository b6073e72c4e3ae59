// Train with your own data source: build an ImageSet in memory (here: 3 classes of
// synthetic 16x16 patterns) and hand it to the Trainer with a run config.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "train/trainer.h"

using namespace dg;

static data::ImageSet make_patterns(int64_t n, uint64_t seed) {
  data::ImageSet s;
  std::vector<float> px(static_cast<size_t>(n * 16 * 16));
  std::vector<int64_t> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = int64_t((uint64_t(i) * 2654435761u + seed) % 3);  // stripes, columns, checkers
    labels[size_t(i)] = c;
    for (int64_t y = 0; y < 16; ++y)
      for (int64_t x = 0; x < 16; ++x) {
        const bool on = c == 0 ? y % 4 < 2 : c == 1 ? x % 4 < 2 : (x / 2 + y / 2) % 2 == 0;
        px[size_t((i * 16 + y) * 16 + x)] = on ? 0.9f : 0.1f;
      }
  }
  s.images = Tensor::from_vector(px, {n, 1, 16, 16});
  s.labels = Tensor::from_vector(labels, {n});
  s.num_classes = 3;
  s.class_names = {"stripes", "columns", "checkers"};
  return s;
}

int main() {
  const auto dir = std::filesystem::temp_directory_path() / "dg_custom_data";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "model.json") << R"({"img_size": 16, "patch_size": 4, "in_chans": 1, "embed_dim": 32,
    "depth": 2, "num_heads": 2, "num_classes": 3, "mean": [0.5], "std": [0.5]})";
  train::RunConfig rc;
  rc.model_config = (dir / "model.json").string();
  rc.peft = {{"trainable", {"*"}}};  // a small model from scratch: train everything
  rc.epochs = 5, rc.batch = 32, rc.lr = 3e-3, rc.out = (dir / "run").string(), rc.quiet = true;
  rc.pad = 0;  // no random crops: shifting a period-4 pattern by 1-2 pixels would change its class look
  data::ImageSet train = make_patterns(256, 1), val = make_patterns(96, 2);
  train::Trainer t(rc, train, val);
  train::TrainResult r = t.fit();
  std::printf("val accuracy after %zu epochs: %.1f%% (%.1fs); run dir %s\n", r.epochs.size(),
              100 * r.epochs.back().val_acc, r.seconds, rc.out.c_str());
  return r.epochs.back().val_acc > 0.9 ? 0 : 1;
}
