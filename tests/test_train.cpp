// The trainer: resume reproduces an uninterrupted run step for step; training on an image
// folder works end to end; the examples and the CLI run.
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "train/trainer.h"
#include "tests/test_util.h"

#include <stb_image_write.h>

using namespace dg;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {
fs::path tmpdir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("dg_train_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
// 3 classes of 12x12 grayscale images over a noisy background: horizontal stripes,
// vertical stripes, or a checkerboard.
fs::path make_folder() {
  fs::path d = tmpdir("images");
  for (int c = 0; c < 3; ++c) {
    fs::create_directories(d / ("class" + std::to_string(c)));
    for (int i = 0; i < 16; ++i) {
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
train::RunConfig small_run(const fs::path& folder, const fs::path& out) {
  fs::path cfg = out.parent_path() / "model.json";
  std::ofstream(cfg) << json{{"img_size", 12}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16}, {"depth", 2},
                             {"num_heads", 2}, {"num_classes", 3}, {"mean", {0.3}}, {"std", {0.3}},
                             {"drop_path_rate", 0.1}}.dump();
  train::RunConfig rc;
  rc.model_config = cfg.string();
  rc.peft = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 2}, {"lora_dropout", 0.1}}}}, {"trainable", {"head.*"}}};
  rc.data = folder.string() + ":val=0.25";
  rc.epochs = 4, rc.batch = 8, rc.lr = 1e-2, rc.seed = 5, rc.out = out.string(), rc.quiet = true, rc.pad = 1;
  return rc;
}
}  // namespace

TEST_CASE("train: an image folder trains end to end and writes its run directory") {
  fs::path folder = make_folder(), out = tmpdir("run") / "a";
  train::RunConfig rc = small_run(folder, out);
  rc.epochs = 20;
  rc.peft = {{"trainable", {"*"}}};  // a full fine-tune of a small random ViT
  rc.lr = 3e-3;
  rc.pad = 0;
  auto [tr, va] = train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed);
  CHECK(tr.size() == 36);
  CHECK(va.size() == 12);
  train::Trainer t(rc, tr, va);
  train::TrainResult r = t.fit();
  REQUIRE(r.epochs.size() == 20);
  CHECK(r.epochs.back().train_loss < 0.7 * r.epochs.front().train_loss);
  CHECK(r.epochs.back().val_acc > 0.6);
  for (const char* f : {"run_config.json", "metrics.csv", "curves.svg", "checkpoint.safetensors", "deltas.safetensors"})
    CHECK_MESSAGE(fs::exists(out / f), f);
}

TEST_CASE("train: --resume reproduces the losses of an uninterrupted run, step for step") {
  fs::path folder = make_folder(), base = tmpdir("resume");
  auto load = [&](const train::RunConfig& rc) { return train::load_data(rc.data, nn::load_vit_config(rc.model_config), rc.seed); };
  train::RunConfig full = small_run(folder, base / "full");
  auto [tr, va] = load(full);
  std::vector<double> want;
  {
    train::Trainer t(full, tr, va);
    want = t.fit().step_losses;
  }
  // the same run, stopped after 2 of 4 epochs (a checkpoint per epoch), then resumed
  train::RunConfig first = small_run(folder, base / "split");
  first.max_steps = 7;  // stops mid-epoch, as Ctrl-C would
  std::vector<double> got;
  {
    train::Trainer t(first, tr, va);
    train::TrainResult r = t.fit();
    CHECK(r.interrupted);
    got = r.step_losses;
  }
  train::RunConfig second = small_run(folder, base / "split");
  {
    train::Trainer t(second, tr, va);
    std::vector<double> rest = t.fit(true).step_losses;
    got.insert(got.end(), rest.begin(), rest.end());
  }
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);  // bit-identical
}

TEST_CASE("examples and the CLI run") {
  const std::string b = DG_BUILD_DIR;
  CHECK(std::system((b + "/examples/train_mlp > /dev/null").c_str()) == 0);
  CHECK(std::system((b + "/tools/deltagrad --help > /dev/null").c_str()) == 0);
  // unknown options and missing files: one clear line, exit code 2
  CHECK(WEXITSTATUS(std::system((b + "/tools/deltagrad train --bogus 1 2> /dev/null").c_str())) == 2);
  CHECK(WEXITSTATUS(std::system((b + "/tools/deltagrad inspect /nonexistent.safetensors 2> /dev/null").c_str())) == 2);
  CHECK(WEXITSTATUS(std::system((b + "/tools/deltagrad frobnicate 2> /dev/null").c_str())) == 2);
}
