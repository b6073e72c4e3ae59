// A small image-folder training run for the trainer and run-dir tests: 3 classes of 12x12
// grayscale images (stripes one way, the other, or a checkerboard, over a noisy background)
// and a 2-block ViT with a LoRA, which trains in well under a second.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <stb_image_write.h>

#include "train/trainer.h"

namespace dg::test {

// `per_class` images of each class under dir/class<c>/<i>.png.
inline std::filesystem::path make_stripes_folder(const std::filesystem::path& d, int per_class = 16) {
  for (int c = 0; c < 3; ++c) {
    std::filesystem::create_directories(d / ("class" + std::to_string(c)));
    for (int i = 0; i < per_class; ++i) {
      std::vector<unsigned char> px(144);
      for (int p = 0; p < 144; ++p) px[size_t(p)] = (unsigned char)((p * 37 + i * 11) % 60);
      for (int y = 0; y < 12; ++y)
        for (int x = 0; x < 12; ++x) {
          const bool on = c == 0 ? y % 2 == 0 : c == 1 ? x % 2 == 0 : (x + y) % 2 == 0;
          if (on) px[size_t(y * 12 + x)] = 230;
        }
      stbi_write_png((d / ("class" + std::to_string(c)) / (std::to_string(i) + ".png")).string().c_str(), 12, 12, 1,
                     px.data(), 12);
    }
  }
  return d;
}

// The run: model config written beside `out` (out's parent/model.json), 4 epochs of 5 steps.
inline train::RunConfig small_run(const std::filesystem::path& folder, const std::filesystem::path& out) {
  std::filesystem::path cfg = out.parent_path() / "model.json";
  std::ofstream(cfg) << nlohmann::json{{"img_size", 12}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16},
                                       {"depth", 2}, {"num_heads", 2}, {"num_classes", 3}, {"mean", {0.3}},
                                       {"std", {0.3}}, {"drop_path_rate", 0.1}}.dump();
  train::RunConfig rc;
  rc.model_config = cfg.string();
  rc.peft = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 2}, {"lora_dropout", 0.1}}}},
             {"trainable", {"head.*"}}};
  rc.data = folder.string() + ":val=0.25";
  rc.epochs = 4, rc.batch = 8, rc.lr = 1e-2, rc.seed = 5, rc.out = out.string(), rc.quiet = true, rc.pad = 1;
  rc.augment = "pad-crop";  // the tests' expectations were set with it (auto takes random-resized-crop here)
  return rc;
}

}  // namespace dg::test
