// Datasets: Fashion-MNIST from the Debian package, IDX refusals, image folders with
// bad files, the background loader's determinism.
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "data/loader.h"
#include "tests/test_util.h"

#include <stb_image_write.h>

using namespace dg;
using namespace dg::data;
namespace fs = std::filesystem;

namespace {
fs::path tmpdir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("dg_data_" + std::to_string(::getpid())) / name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
std::vector<uint8_t> idx_header(uint32_t magic, std::vector<uint32_t> dims) {
  std::vector<uint8_t> b;
  auto put = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
  };
  put(magic);
  for (uint32_t d : dims) put(d);
  return b;
}
bool have_fashion_mnist() { return fs::exists(std::string(default_fashion_mnist_dir()) + "/t10k-labels-idx1-ubyte.gz"); }
}  // namespace

TEST_CASE("data: Fashion-MNIST loads from the Debian package; classes select and relabel") {
  if (!have_fashion_mnist()) {
    test::skip("dataset-fashion-mnist is not installed");
    return;
  }
  ImageSet te = load_fashion_mnist(default_fashion_mnist_dir(), false);
  CHECK(te.images.shape() == Shape{10000, 1, 28, 28});
  CHECK(te.labels.shape() == Shape{10000});
  std::vector<double> px = te.images.to_vector();
  CHECK(*std::min_element(px.begin(), px.end()) == 0.0);
  CHECK(*std::max_element(px.begin(), px.end()) == 1.0);
  ImageSet s = select_classes(te, {5, 6, 7, 8, 9}, 1000, 3);
  CHECK(s.size() == 1000);
  CHECK(s.num_classes == 5);
  CHECK(s.class_names[0] == "Sandal");
  std::vector<int> count(5);
  for (double l : s.labels.to_vector()) ++count[size_t(l)];
  for (int c : count) CHECK(c == 200);
  ImageSet all = select_classes(te, {5, 6, 7, 8, 9});
  CHECK(all.size() == 5000);
  ImageSet again = select_classes(te, {5, 6, 7, 8, 9}, 1000, 3);
  CHECK(again.images.to_vector() == s.images.to_vector());  // seeded
}

TEST_CASE("data: IDX files are validated before use") {
  fs::path d = tmpdir("idx");
  std::vector<uint8_t> ok = idx_header(0x803, {2, 3, 3});
  ok.resize(ok.size() + 18, 7);
  write_bytes(d / "ok", ok);
  CHECK(read_idx_images((d / "ok").string()).shape() == Shape{2, 1, 3, 3});
  auto bad = [&](const char* name, std::vector<uint8_t> b, const char* what, bool labels = false) {
    write_bytes(d / name, b);
    if (labels) CHECK_THROWS_WITH_AS(read_idx_labels((d / name).string()), doctest::Contains(what), Error);
    else CHECK_THROWS_WITH_AS(read_idx_images((d / name).string()), doctest::Contains(what), Error);
  };
  bad("magic", idx_header(0x801, {2, 3, 3}), "magic");
  std::vector<uint8_t> trunc = idx_header(0x803, {2, 3, 3});
  trunc.resize(trunc.size() + 10);
  bad("trunc", trunc, "expected 18 pixel bytes");
  bad("absurd", idx_header(0x803, {4000000000u, 10000, 10000}), "implausible");
  bad("short", {0, 0}, "too short");
  std::vector<uint8_t> lab = idx_header(0x801, {5});
  lab.resize(lab.size() + 3);
  bad("labels", lab, "expected 5 labels", true);
  // gzip: a compressed copy reads the same; a corrupt one is refused
  gzFile gz = gzopen((d / "ok.gz").string().c_str(), "wb");
  gzwrite(gz, ok.data(), unsigned(ok.size()));
  gzclose(gz);
  CHECK(read_idx_images((d / "ok.gz").string()).to_vector() == read_idx_images((d / "ok").string()).to_vector());
  CHECK_THROWS_WITH_AS(read_idx_images((d / "missing").string()), doctest::Contains("no such file"), Error);
}

TEST_CASE("data: image folders decode, convert channels, resize, and skip bad files") {
  fs::path d = tmpdir("folder");
  for (const char* c : {"cat", "dog", "eel"}) fs::create_directories(d / c);
  std::vector<unsigned char> gray(8 * 8, 200), rgb(6 * 4 * 3, 10), rgba(5 * 5 * 4, 255);
  stbi_write_png((d / "cat/a.png").string().c_str(), 8, 8, 1, gray.data(), 8);
  stbi_write_png((d / "dog/b.png").string().c_str(), 6, 4, 3, rgb.data(), 18);
  stbi_write_bmp((d / "dog/c.bmp").string().c_str(), 5, 5, 4, rgba.data());
  stbi_write_png((d / "eel/d.png").string().c_str(), 8, 8, 1, gray.data(), 8);
  std::ofstream((d / "eel/corrupt.png").string()) << "not a png";
  ImageSet s = load_image_folder(d.string(), 4, 3);
  CHECK(s.size() == 4);
  CHECK(s.skipped == 1);
  CHECK(s.class_names == std::vector<std::string>{"cat", "dog", "eel"});
  CHECK(s.images.shape() == Shape{4, 3, 4, 4});
  CHECK(s.labels.to_vector() == std::vector<double>{0, 1, 1, 2});
  CHECK(s.images.to_vector()[0] == doctest::Approx(200.0 / 255.0));  // gray replicated to RGB
  fs::create_directories(d / "empty");
  CHECK_THROWS_WITH_AS(load_image_folder(d.string(), 4, 3), doctest::Contains("'empty' has no images"), Error);
  CHECK_THROWS_WITH_AS(load_image_folder((d / "cat").string(), 4, 3), doctest::Contains("no class folders"), Error);
}

TEST_CASE("data: the loader is deterministic, augments correctly and stops cleanly") {
  ImageSet s;
  std::vector<float> px(20 * 1 * 4 * 4);
  for (size_t i = 0; i < px.size(); ++i) px[i] = float(i % 16) / 16.0f;
  s.images = Tensor::from_vector(px, {20, 1, 4, 4});
  std::vector<int64_t> lab(20);
  for (int i = 0; i < 20; ++i) lab[size_t(i)] = i % 2;
  s.labels = Tensor::from_vector(lab, {20});
  s.num_classes = 2;
  LoaderOptions o;
  o.batch = 6, o.pad = 1, o.hflip = true, o.seed = 4, o.mean = {0.0}, o.std = {1.0};
  DataLoader a(s, o), b(s, o);
  CHECK(a.batches_per_epoch() == 4);
  a.start(0);
  b.start(0);
  for (int i = 0; i < 6; ++i) {  // crosses into epoch 1
    Batch x = a.next(), y = b.next();
    CHECK(x.images.to_vector() == y.images.to_vector());
    CHECK(x.labels.to_vector() == y.labels.to_vector());
  }
  CHECK(a.make_batch(0, 0).labels.to_vector() != a.make_batch(1, 0).labels.to_vector());
  // the threaded stream equals the direct one, from any starting point
  b.start(1, 2);
  CHECK(b.next().images.to_vector() == a.make_batch(1, 2).images.to_vector());
  // last batch of an epoch is partial unless drop_last
  CHECK(a.make_batch(0, 3).images.size(0) == 2);
  // flip: without padding, a flipped image is the mirror of the original
  LoaderOptions f;
  f.batch = 20, f.shuffle = false, f.hflip = true, f.seed = 1, f.mean = {0.0}, f.std = {1.0};
  DataLoader fl(s, f);
  Batch fb = fl.make_batch(0, 0);
  int flipped = 0;
  for (int64_t i = 0; i < 20; ++i) {
    std::vector<double> got = view::slice(fb.images, 0, i, i + 1).to_vector();
    const bool same = got[0] == px[0] / 1.0 && got[3] == double(px[3]);
    const bool mirrored = got[0] == double(px[3]) && got[3] == double(px[0]);
    CHECK((same || mirrored));
    flipped += mirrored;
  }
  CHECK(flipped > 0);
  CHECK(flipped < 20);
  // destroying a loader mid-stream joins its thread (the test would hang otherwise)
  {
    DataLoader c(s, o);
    c.start(0);
    c.next();
  }
}
