// Robustness that crosses process and thread boundaries: a process SIGKILLed in the middle
// of repeated atomic saves leaves a complete, loadable file; 20 CPU training steps are
// bit-identical for the same seed and thread count, and agree to fp32 tolerance with
// another thread count. Then the regressions for what fuzz/ found in the readers (inputs in
// tests/fixtures/fuzz/).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <stb_image_write.h>
#include <zlib.h>
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
#include "train/trainer.h"
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
  REQUIRE(omp_get_max_threads() == threads);  // what the CPU backend splits its work by
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
// Starts a new peak-RSS window (false where /proc cannot).
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return bool(f.flush());
}
// A /proc/self/status size in MiB: "VmRSS:" (now) or "VmHWM:" (peak since the reset).
double status_mb(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(key.size())) / 1024.0;
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
  const double before = status_mb("VmRSS:");
  std::string err;
  try {
    data::read_idx_images(path);
  } catch (const Error& e) {
    err = e.what();
  }
  CHECK(err.find("truncated") != std::string::npos);
  CHECK(err.find("huge.idx") != std::string::npos);
  if (can_measure) {
    const double grew = status_mb("VmHWM:") - before;  // not the peak itself: ASan's process is > 1 GiB
    MESSAGE("peak RSS growth while refusing it: ", grew, " MiB");
    CHECK(grew < 256);  // the old reader touched 1000 MiB
  }
  fs::remove_all(dir);
}

TEST_CASE("robustness: an IDX file of 0 images whose image size overflows int64 is refused") {
  // Regression for a fuzz/fuzz_idx finding (UBSan: signed overflow in the tensor's strides):
  // dims [0, 4280549375, 4278714624] hold no data, so the element count (0) passed the check.
  const std::string path = DG_SOURCE_DIR "/tests/fixtures/fuzz/idx_0_images_of_2e19_pixels.idx";
  REQUIRE(fs::file_size(path) == 16);
  CHECK_THROWS_WITH_AS(data::read_idx_images(path), doctest::Contains("implausible dims ([0, 4280549375]"), Error);
}

namespace {
// Loads an image folder of one good PNG and the file `bad`; the bad file must be skipped.
// Returns what the loader wrote to stderr (the skipped file and why).
std::string skip_message(const fs::path& bad) {
  const fs::path dir = test::fresh_dir("robust", "img"), err = dir / "stderr.txt";
  fs::create_directories(dir / "cls");
  fs::copy_file(bad, dir / "cls" / bad.filename());
  const uint8_t px[4] = {0, 64, 128, 255};
  REQUIRE(stbi_write_png((dir / "cls" / "good.png").string().c_str(), 2, 2, 1, px, 2));
  std::fflush(stderr);
  const int saved = ::dup(2);
  FILE* f = std::fopen(err.c_str(), "w");
  REQUIRE(f);
  ::dup2(::fileno(f), 2);
  data::ImageSet s;
  try {
    s = data::load_image_folder(dir.string(), 4, 1);
  } catch (...) {
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::fclose(f);
  CHECK(s.size() == 1);
  CHECK(s.skipped == 1);
  const std::string msg = read_bytes(err);
  fs::remove_all(dir);
  return msg;
}
const fs::path fuzz_fixtures = DG_SOURCE_DIR "/tests/fixtures/fuzz";
}  // namespace

TEST_CASE("robustness: image files that would make stb misbehave are skipped before stb reads them") {
  // Regressions for fuzz/fuzz_image findings, each a 70..169-byte file: PNG IDAT chunks that
  // claim 1.5 GB and 1 GB (stb allocated what they claimed), an empty first IDAT (stb_image 2.27
  // called memcpy on a null buffer) and JPEG Huffman tables of 257 codes, the second after
  // fill bytes before the start marker (stb_image 2.27 wrote past the table); UBSan reports.
  for (const char* bad : {"png_idat_claims_1_5GB.png", "png_idat_claims_1GB.png", "png_empty_first_idat.png"})
    CHECK(skip_message(fuzz_fixtures / bad).find(bad + std::string("': corrupt PNG (")) != std::string::npos);
  for (const char* bad : {"jpeg_dht_257_codes.jpg", "jpeg_fill_bytes_dht_257_codes.jpg"})
    CHECK(skip_message(fuzz_fixtures / bad).find(bad + std::string("': corrupt JPEG (a Huffman table of more")) !=
          std::string::npos);
  // and a BMP of 0 rows, which stb decodes and the resize read before its (empty) pixels (ASan)
  CHECK(skip_message(fuzz_fixtures / "bmp_0_rows.bmp").find("bmp_0_rows.bmp': 131074 x 0 pixels") != std::string::npos);
  // a 60-byte BMP whose header claims 66 x 852363 pixels: stb decoded 56 M pixels of zeros (13 s)
  CHECK(skip_message(fuzz_fixtures / "bmp_truncated_56M_pixels.bmp")
            .find("bmp_truncated_56M_pixels.bmp': truncated BMP (the file is shorter than the pixel rows") !=
        std::string::npos);
}

TEST_CASE("robustness: a 100-byte PNG that claims 4096 x 4096 pixels is skipped as truncated, not decoded") {
  auto chunk = [](const std::string& type, const std::string& data) {  // stb does not check CRCs
    const auto n = uint32_t(data.size());
    return std::string{char(n >> 24), char(n >> 16), char(n >> 8), char(n)} + type + data + std::string(4, '\0');
  };
  std::vector<uint8_t> row(4097, 0), z(compressBound(uLong(row.size())));  // one row of data, 4095 missing
  uLongf zn = uLongf(z.size());
  REQUIRE(compress2(z.data(), &zn, row.data(), uLong(row.size()), 9) == Z_OK);
  const fs::path dir = test::fresh_dir("robust", "dense"), png = dir / "dense.png";
  std::ofstream(png, std::ios::binary) << "\x89PNG\r\n\x1a\n" +
                                             chunk("IHDR", std::string("\0\0\x10\0\0\0\x10\0\x08\0\0\0\0", 13)) +
                                             chunk("IDAT", std::string(z.begin(), z.begin() + long(zn))) + chunk("IEND", "");
  CHECK(fs::file_size(png) < 200);
  CHECK(skip_message(png).find("dense.png': 4096 x 4096 pixels cannot come from") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("robustness: a 2x2 PNG whose pixel data inflates to 16 MB is refused as out of memory") {
  // stb grows its inflate buffer for as long as the data goes on; the loader caps every decode
  // allocation by the file's size and the image's, so this 16 KB zlib bomb is not inflated.
  std::vector<uint8_t> zeros(size_t(16) << 20), z(compressBound(uLong(zeros.size())));
  uLongf zn = uLongf(z.size());
  REQUIRE(compress2(z.data(), &zn, zeros.data(), uLong(zeros.size()), 9) == Z_OK);
  auto chunk = [](const std::string& type, const std::string& data) {  // stb does not check CRCs
    const auto n = uint32_t(data.size());
    return std::string{char(n >> 24), char(n >> 16), char(n >> 8), char(n)} + type + data + std::string(4, '\0');
  };
  const fs::path dir = test::fresh_dir("robust", "bomb"), png = dir / "bomb.png";
  std::ofstream(png, std::ios::binary) << "\x89PNG\r\n\x1a\n" + chunk("IHDR", std::string("\0\0\0\2\0\0\0\2\x08\x02\0\0\0", 13)) +
                                             chunk("IDAT", std::string(z.begin(), z.begin() + long(zn))) + chunk("IEND", "");
  CHECK(fs::file_size(png) < 32768);
  CHECK(skip_message(png).find("bomb.png': Out of memory") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("robustness: configs refuse non-integers where integers belong") {
  // Regression for a fuzz/fuzz_config finding: num_classes 4.4e54 was converted to int64
  // (undefined behaviour); the same conversion was open in PEFT and run configs.
  using nlohmann::json;
  std::ifstream f(DG_SOURCE_DIR "/tests/fixtures/fuzz/vit_config_num_classes_4e54.json");
  const json j = json::parse(f);
  CHECK_THROWS_WITH_AS(nn::vit_config_from_json(j), doctest::Contains("'num_classes' must be an integer"), Error);
  CHECK_THROWS_WITH_AS(nn::vit_config_from_json(json{{"depth", 2.5}}), doctest::Contains("'depth' must be an integer"),
                       Error);
  CHECK_THROWS_WITH_AS(nn::vit_config_from_json(json{{"preset", 1}}), doctest::Contains("'preset' must be a string"),
                       Error);
  CHECK_THROWS_WITH_AS(peft::parse_peft_config(json{{"deltas", {{{"name", "l"}, {"method", "lora"}, {"r", 1e300}}}}}),
                       doctest::Contains("'r' must be an integer"), Error);
  CHECK_THROWS_WITH_AS(train::run_config_from_json(json{{"epochs", 1e300}}), doctest::Contains("'epochs' must be an integer"),
                       Error);
  // An integer where a float belongs is still fine.
  CHECK(nn::vit_config_from_json(json{{"mlp_ratio", 2}}).mlp_ratio == 2.0);
}
