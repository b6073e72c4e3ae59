// Robustness that crosses process and thread boundaries: a process SIGKILLed in the middle
// of repeated atomic saves leaves a complete, loadable file; 20 CPU training steps are
// bit-identical for the same seed and thread count, and agree to fp32 tolerance with
// another thread count.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/ops.h"
#include "data/dataset.h"
#include "core/random.h"
#include "core/safetensors.h"
#include "nn/optim.h"
#include "nn/vit.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {
std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

TEST_CASE("robustness: SIGKILL during repeated saves leaves the previous file complete and loadable") {
  const fs::path dir = test::fresh_dir("robust", "kill");
  const std::string path = (dir / "ckpt.safetensors").string();
  // Four versions of a 4 MiB checkpoint, every element of version v equal to v + 1. The child
  // rewrites the file with write_file_atomic (the path every checkpoint and delta save takes)
  // as fast as it can; bytes are prepared here so the child runs no library code but the write.
  std::vector<std::string> versions;
  for (int v = 0; v < 4; ++v) {
    const fs::path p = dir / ("v" + std::to_string(v) + ".safetensors");
    save_safetensors(p.string(), {{"w", Tensor::full({1024, 1024}, double(v + 1))}}, {{"version", std::to_string(v)}});
    versions.push_back(read_bytes(p));
  }
  write_file_atomic(path, versions[0]);
  int mid_write_kills = 0;
  for (int round = 0; round < 6; ++round) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      for (int i = 1;; ++i) {
        try {
          write_file_atomic(path, versions[size_t(i % 4)]);
        } catch (...) {
          ::_exit(3);
        }
      }
    }
    ::usleep(useconds_t(5000 + 7000 * round));  // 5..40 ms: several saves, then a kill at some point of one
    REQUIRE(::kill(pid, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    // The killed writer's temp file may remain (that is all a kill can leave); the file itself
    // is one complete version.
    const fs::path tmp = path + ".tmp." + std::to_string(pid);
    if (fs::exists(tmp)) {
      ++mid_write_kills;
      fs::remove(tmp);
    }
    SafeTensors st = load_safetensors(path);
    REQUIRE(st.tensors.count("w") == 1);
    const int v = std::stoi(st.metadata.at("version"));
    std::vector<double> w = st.tensors.at("w").to_vector();
    REQUIRE(w.size() == size_t(1024 * 1024));
    bool all = true;
    for (double x : w) all = all && x == double(v + 1);
    CHECK(all);
  }
  MESSAGE("kills that landed while a temp file was open: ", mid_write_kills, " of 6");
  fs::remove_all(dir);
}

namespace {
// 20 AdamW steps of a ViT with LoRA and every kind of dropout (dropout, attention dropout,
// drop-path, LoRA dropout), large enough that GEMMs, elementwise ops and reductions all run
// threaded. Returns the losses.
std::vector<double> train_20_steps(int threads) {
#ifdef _OPENMP
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
#endif
  default_generator().manual_seed(7);
  nn::ViTConfig c = nn::vit_config_from_json(
      nlohmann::json{{"img_size", 32}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 64}, {"depth", 2},
                     {"num_heads", 4}, {"num_classes", 5}, {"drop_rate", 0.1}, {"attn_drop_rate", 0.1},
                     {"drop_path_rate", 0.1}, {"mean", {0.5}}, {"std", {0.5}}});
  nn::VisionTransformer m(c);
  m.init_weights(1);
  peft::PeftModel pm(m,
                     peft::parse_peft_config(nlohmann::json{
                         {"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"lora_alpha", 8}, {"lora_dropout", 0.1}}}},
                         {"trainable", {"head.*"}}}),
                     2);
  m.train();
  nn::AdamW opt(pm.trainable_parameters(), 1e-2, 0.05);
  Tensor x = Tensor::empty({16, 1, 32, 32});
  Generator(3).normal_(x);
  std::vector<int64_t> yl(16);
  for (int64_t i = 0; i < 16; ++i) yl[size_t(i)] = i % 5;
  Tensor y = Tensor::from_vector(yl, {16});
  std::vector<double> losses;
  for (int step = 0; step < 20; ++step) {
    opt.zero_grad();
    Tensor loss = cross_entropy(pm.forward(x), y);
    losses.push_back(loss.item());
    backward(loss);
    opt.step();
  }
#ifdef _OPENMP
  omp_set_num_threads(before);
#endif
  return losses;
}
}  // namespace

TEST_CASE("robustness: 20 CPU training steps are bit-identical for the same seed and threads") {
  const std::vector<double> a = train_20_steps(2), b = train_20_steps(2);
  REQUIRE(a.size() == 20);
  CHECK(a == b);                   // bit for bit, dropout masks included
  CHECK(a.back() < a.front());     // and it trained
  const std::vector<double> one = train_20_steps(1);
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(one[i] - a[i]) / std::abs(a[i]));
  MESSAGE("1 thread vs 2 threads: largest relative loss difference over 20 steps ", worst);
  CHECK(worst < 1e-4);
}

namespace {
// Peak RSS in MiB since the last reset_peak_rss() (-1 where /proc cannot tell).
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return bool(f.flush());
}
double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return -1;
}
}  // namespace

TEST_CASE("robustness: a tiny IDX file whose header claims 10^9 pixels is refused without allocating them") {
  // Regression for a fuzz/fuzz_idx finding: the reader sized its buffer from the header.
  const fs::path dir = test::fresh_dir("robust", "idx");
  const std::string path = (dir / "huge.idx").string();
  {
    std::ofstream f(path, std::ios::binary);
    const unsigned char head[16] = {0, 0, 8, 3, 0, 0, 0x03, 0xE8, 0, 0, 0x03, 0xE8, 0, 0, 0x03, 0xE8};  // 1000^3
    f.write(reinterpret_cast<const char*>(head), 16);
    f.write("0123456789", 10);
  }
  const bool can_measure = reset_peak_rss();
  std::string err;
  try {
    data::read_idx_images(path);
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK(err.find("truncated") != std::string::npos);
  CHECK(err.find("huge.idx") != std::string::npos);
  if (can_measure) {
    const double peak = peak_rss_mb();
    MESSAGE("peak RSS while refusing it: ", peak, " MiB");
    CHECK(peak < 1024);  // the process itself is ~200 MiB; the old reader touched 1000 MiB more
  }
  fs::remove_all(dir);
}
