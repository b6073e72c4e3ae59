// Inputs checked before anything runs (issue 14, items 11 and 12): data specs, one-class datasets,
// model config ranges, and what an image folder reports when it skips an entry (an image over the
// pixel limit, dangling symlinks, FIFOs).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <tuple>

#include <nlohmann/json.hpp>
#include <zlib.h>

#include "data/dataset.h"
#include "nn/vit_config.h"
#include "tests/input_fixtures.h"
#include "train/trainer.h"

using namespace dg;
using namespace dg::test;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path tmpdir(const std::string& name) { return test::fresh_dir("input_checks", name); }

// What load_image_folder writes to stderr (the entries it skips, and why).
std::string folder_warnings(const fs::path& root, data::ImageSet& s) {
  const fs::path err = root.parent_path() / "stderr.txt";
  std::fflush(stderr);
  const int saved = ::dup(2);
  const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::dup2(fd, 2);
  ::close(fd);
  try {
    s = data::load_image_folder(root.string(), 8, 1);
  } catch (...) {
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    throw;
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  return read_text(err);
}

// A valid PNG of w x h black RGB pixels, built without holding its 3 w h bytes: each row is deflated
// with a full flush, which resets the compressor, so one row's blocks repeated h times are the
// stream of h rows; the Adler-32 of all rows is combined from one row's.
std::string black_png(uint32_t w, uint32_t h) {
  auto be32 = [](uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; };
  auto chunk = [&](const std::string& type, const std::string& data) {
    const uLong crc = crc32(crc32(0, reinterpret_cast<const Bytef*>(type.data()), uInt(type.size())),
                            reinterpret_cast<const Bytef*>(data.data()), uInt(data.size()));
    return be32(uint32_t(data.size())) + type + data + be32(uint32_t(crc));
  };
  std::vector<Bytef> row(size_t(3) * w + 1, 0), buf(compressBound(uLong(row.size())) + 64);  // filter 0, then pixels
  z_stream z{};
  REQUIRE(deflateInit(&z, 9) == Z_OK);
  auto pump = [&](Bytef* in, size_t n, int flush) {
    z.next_in = in, z.avail_in = uInt(n), z.next_out = buf.data(), z.avail_out = uInt(buf.size());
    REQUIRE(deflate(&z, flush) != Z_STREAM_ERROR);
    REQUIRE(z.avail_in == 0);
    return std::string(buf.begin(), buf.begin() + long(buf.size() - z.avail_out));
  };
  const std::string first = pump(row.data(), row.size(), Z_FULL_FLUSH);  // the 2-byte zlib header + row 1
  const std::string again = pump(row.data(), row.size(), Z_FULL_FLUSH);  // any later row
  std::string tail = pump(nullptr, 0, Z_FINISH);                          // an empty last block + Adler-32
  deflateEnd(&z);
  const uLong row_adler = adler32(1, row.data(), uInt(row.size()));
  uLong adler = row_adler;
  for (uint32_t i = 1; i < h; ++i) adler = adler32_combine(adler, row_adler, z_off_t(row.size()));
  std::string idat = first;
  for (uint32_t i = 1; i < h; ++i) idat += again;
  idat += tail.substr(0, tail.size() - 4) + be32(uint32_t(adler));
  const std::string ihdr = be32(w) + be32(h) + std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  return "\x89PNG\r\n\x1a\n" + chunk("IHDR", ihdr) + chunk("IDAT", idat) + chunk("IEND", "");
}

}  // namespace

TEST_CASE("input checks: data specs are checked in full before anything loads, naming the spec") {
  using data::parse_data_spec;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"fashion-mnist:classes=9-5", "'fashion-mnist:classes=9-5': classes=9-5 is a reversed range"},
      {"fashion-mnist:classes=0-99999999999", "classes=0-99999999999: Fashion-MNIST has classes 0-9"},
      {"fashion-mnist:classes=0-10", "Fashion-MNIST has classes 0-9"},
      {"fashion-mnist:classes=a-b", "classes='a-b': expected A-B"},
      {"fashion-mnist:classes=-1-3", "expected A-B"},
      {"fashion-mnist:classes=5", "expected A-B"},
      {"fashion-mnist:n=0", "n=0: expected a whole number of images >= 1"},
      {"fashion-mnist:n=-5", "n=-5: expected a whole number"},
      {"fashion-mnist:n=1.5", "n=1.5: expected a whole number"},
      {"fashion-mnist:n=10:n=20", "'n' is given twice"},
      {"fashion-mnist:val=0.1", "unknown key 'val' for fashion-mnist"},
      {"fashion-mnist:size=3", "unknown key 'size' for fashion-mnist"},
      {"fashion-mnist:classes", "'classes' is not key=value"},
      {"root:val=1", "'root:val=1': val=1: expected the held-out fraction, a number from 0 (none) up to but not 1"},
      {"root:train=a/b", "train=a/b: expected the name of a split folder inside root"},
      {"root:eval=", "eval=: expected the name of a split folder"},
      {"root:val=-0.2", "val=-0.2: expected"},
      {"root:val=0.1x", "val=0.1x: expected"},
      {"root:val=nan", "val=nan: expected"},
      {"root:classes=0-3", "unknown key 'classes' for an image folder"},
      {"", "--data: empty spec"},
  };
  for (const auto& [spec, says] : bad) {
    CAPTURE(spec);
    CHECK_THROWS_WITH_AS(parse_data_spec(spec), has(says), Error);
  }
  data::DataSpec s = parse_data_spec("fashion-mnist:classes=5-9:n=1000");
  CHECK(s.classes == std::vector<int64_t>{5, 6, 7, 8, 9});
  CHECK(s.n == 1000);
  s = parse_data_spec("some/folder:val=0.2:n=10");
  CHECK(s.kind == "folder");
  CHECK(s.path == "some/folder");
  CHECK(s.val_fraction == 0.2);
  CHECK(s.n == 10);

  // A folder whose share for validation rounds to no image at all: refused now, not after an epoch.
  const fs::path d = tmpdir("spec");
  const fs::path folder = make_folder(d / "imgs", 2);
  const nn::ViTConfig mc = nn::load_vit_config(write_model_config(d / "model.json").string());
  CHECK_THROWS_WITH_AS(train::load_data(folder.string() + ":val=0.1", mc, 0),
                       has("holding out 0.1 of 4 images leaves no validation image"), Error);
  auto [tr, va] = train::load_data(folder.string() + ":val=0.5", mc, 0);
  CHECK(tr.size() == 2);
  CHECK(va.size() == 2);
  fs::remove_all(d);
}

TEST_CASE("input checks: a one-class dataset is refused for training, naming the folder") {
  const fs::path d = tmpdir("oneclass");
  const fs::path folder = make_folder(d / "imgs", 4, {"only"});
  const nn::ViTConfig mc = nn::load_vit_config(write_model_config(d / "model.json").string());
  CHECK_THROWS_WITH_AS(train::load_data(folder.string(), mc, 0),
                       has("image folder '" + folder.string() + "' has 1 class; training and evaluation need at least 2"),
                       Error);
  // a one-class selection of Fashion-MNIST, refused before its files are read
  CHECK_THROWS_WITH_AS(train::load_data("fashion-mnist:classes=3-3:dir=/nonexistent", mc, 0),
                       has("the selection has 1 class"), Error);
  fs::remove_all(d);
}

TEST_CASE("input checks: model config values out of range are refused naming the key and the range") {
  const std::vector<std::tuple<std::string, json, std::string>> bad = {
      {"mlp_ratio", -1, "key 'mlp_ratio' must be in (0, 64]"},
      {"mlp_ratio", 0, "key 'mlp_ratio' must be in (0, 64]"},
      {"mlp_ratio", 1e9, "key 'mlp_ratio' must be in (0, 64]"},
      {"mlp_ratio", 0.001, "key 'mlp_ratio' must be in (0, 64] with embed_dim * mlp_ratio >= 1"},
      {"norm_eps", 0, "key 'norm_eps' must be in (0, 1]"},
      {"norm_eps", -1e-6, "key 'norm_eps' must be in (0, 1]"},
      {"drop_rate", 1, "key 'drop_rate' must be a probability in [0, 1)"},
      {"attn_drop_rate", -0.1, "key 'attn_drop_rate' must be a probability in [0, 1)"},
      {"drop_path_rate", 2, "key 'drop_path_rate' must be a probability in [0, 1)"},
      {"init_values", -1, "key 'init_values' must be finite and >= 0"},
      {"std", json::array({0.0}), "key 'std' must be finite and > 0 in every channel, got 0"},
      {"depth", 0, "key 'depth' must be at least 1, got 0"},
      {"embed_dim", 0, "key 'embed_dim' must be at least 1"},
      {"img_size", 8192, "key 'img_size' must be at most 4096"},
  };
  for (const auto& [key, value, says] : bad) {
    CAPTURE(key);
    json j = {{"img_size", 8}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16}, {"depth", 1},
              {"num_heads", 2}, {"num_classes", 2}, {"mean", {0.5}}, {"std", {0.5}}};
    j[key] = value;
    CHECK_THROWS_WITH_AS(nn::vit_config_from_json(j, "model config 'm.json'"),
                         has("model config 'm.json': " + says), Error);
  }
}

TEST_CASE("input checks: an image over the pixel limit is reported with its size and the limit") {
  const fs::path d = tmpdir("huge");
  const fs::path folder = make_folder(d / "imgs", 2);
  std::ofstream(folder / "a" / "huge.png", std::ios::binary) << black_png(20000, 20000);
  // the same way, a small one stb decodes: the construction above makes valid PNGs
  std::ofstream(folder / "b" / "small.png", std::ios::binary) << black_png(5, 3);
  data::ImageSet s;
  const std::string warnings = folder_warnings(folder, s);
  CAPTURE(warnings);
  CHECK(contains(warnings, "huge.png': 20000 x 20000 pixels is more than the limit of 67108864 pixels (8192 x 8192) per image"));
  CHECK(s.skipped == 1);
  CHECK(s.size() == 5);  // 2 + 2 made, and small.png
  fs::remove_all(d);
}

TEST_CASE("input checks: dangling symlinks and other unreadable entries of an image folder are reported by path") {
  const fs::path d = tmpdir("links");
  const fs::path folder = make_folder(d / "imgs", 2);
  fs::create_symlink(d / "nowhere.png", folder / "a" / "gone.png");
  fs::create_symlink(d / "nowhere", folder / "ghost_class");
  REQUIRE(::mkfifo((folder / "b" / "pipe.png").c_str(), 0644) == 0);
  fs::create_directories(folder / "b" / "folder.png" / "x");
  std::ofstream(folder / "b" / "notes.txt") << "not an image: ignored without a word";
  data::ImageSet s;
  const std::string warnings = folder_warnings(folder, s);
  CAPTURE(warnings);
  CHECK(contains(warnings, "gone.png': a dangling symbolic link"));
  CHECK(contains(warnings, "ghost_class': a dangling symbolic link"));
  CHECK(contains(warnings, "pipe.png': not a regular file (a FIFO, socket or device)"));
  CHECK(contains(warnings, "folder.png': a directory, not an image file"));
  CHECK(!contains(warnings, "notes.txt"));
  CHECK(s.skipped == 4);
  CHECK(s.size() == 4);
  CHECK(s.num_classes == 2);
  fs::remove_all(d);
}
