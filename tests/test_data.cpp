// Datasets: Fashion-MNIST from the Debian package, class selection and splits, IDX refusals
// with real bad files, image folders (channel conversion, bilinear resize, bad files), and
// the background loader (determinism, augmentation, resume points, shutdown).
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "data/loader.h"
#include "tests/test_util.h"

#include <stb_image_write.h>

using namespace dg;
using namespace dg::data;
namespace fs = std::filesystem;

namespace {
fs::path tmpdir(const std::string& name) { return test::fresh_dir("data", name); }
void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
void write_gz(const fs::path& p, const std::vector<uint8_t>& b) {
  gzFile gz = gzopen(p.string().c_str(), "wb");
  REQUIRE(gz);
  REQUIRE(gzwrite(gz, b.data(), unsigned(b.size())) == int(b.size()));
  gzclose(gz);
}
std::vector<uint8_t> idx_file(uint32_t magic, std::vector<uint32_t> dims, size_t payload, uint8_t fill = 7) {
  std::vector<uint8_t> b;
  auto put = [&](uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
  };
  put(magic);
  for (uint32_t d : dims) put(d);
  b.resize(b.size() + payload, fill);
  return b;
}
bool have_fashion_mnist() { return fs::exists(std::string(default_fashion_mnist_dir()) + "/t10k-labels-idx1-ubyte.gz"); }
std::vector<int64_t> counts(const Tensor& labels, int64_t k) {
  std::vector<int64_t> c(size_t(k), 0);
  for (double l : labels.to_vector()) {
    REQUIRE(l >= 0);
    REQUIRE(l < double(k));
    ++c[size_t(l)];
  }
  return c;
}
// n images [C, H, W] whose pixel values are their flat index in the set (every pixel unique,
// an image recognisable from its first pixel) and labels i % k.
ImageSet synthetic(int64_t n, int64_t k, int64_t C = 1, int64_t H = 2, int64_t W = 2) {
  ImageSet s;
  std::vector<float> px(size_t(n * C * H * W));
  for (size_t j = 0; j < px.size(); ++j) px[j] = float(j);
  s.images = Tensor::from_vector(px, {n, C, H, W});
  std::vector<int64_t> lab(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) lab[size_t(i)] = i % k;
  s.labels = Tensor::from_vector(lab, {n});
  s.num_classes = k;
  for (int64_t c = 0; c < k; ++c) s.class_names.push_back("c" + std::to_string(c));
  return s;
}
std::vector<double> row(const Tensor& t, int64_t i) { return view::slice(t, 0, i, i + 1).to_vector(); }
}  // namespace

TEST_CASE("data: Fashion-MNIST loads from the Debian package") {
  if (!have_fashion_mnist()) {
    test::skip("dataset-fashion-mnist is not installed");
    return;
  }
  ImageSet tr = load_fashion_mnist(default_fashion_mnist_dir(), true);
  ImageSet te = load_fashion_mnist(default_fashion_mnist_dir(), false);
  CHECK(tr.images.shape() == Shape{60000, 1, 28, 28});
  CHECK(te.images.shape() == Shape{10000, 1, 28, 28});
  CHECK(tr.labels.shape() == Shape{60000});
  CHECK(tr.num_classes == 10);
  CHECK(tr.class_names.size() == 10);
  CHECK(tr.class_names[9] == "Ankle boot");
  // Fashion-MNIST is balanced: 6000 / 1000 images per class.
  for (int64_t c : counts(tr.labels, 10)) CHECK(c == 6000);
  for (int64_t c : counts(te.labels, 10)) CHECK(c == 1000);
  std::vector<double> px = te.images.to_vector();
  CHECK(*std::min_element(px.begin(), px.end()) == 0.0);
  CHECK(*std::max_element(px.begin(), px.end()) == 1.0);
  // The well-known training-set pixel mean (0.2860) and std (0.3530): a misread header or
  // payload offset would not reproduce them.
  double sum = 0, sq = 0;
  std::vector<double> tp = tr.images.to_vector();
  for (double v : tp) sum += v, sq += v * v;
  const double mean = sum / double(tp.size()), sd = std::sqrt(sq / double(tp.size()) - mean * mean);
  CHECK(mean == doctest::Approx(0.2860).epsilon(0.002));
  CHECK(sd == doctest::Approx(0.3530).epsilon(0.002));
}

TEST_CASE("data: select_classes relabels and takes balanced seeded subsets (VTAB-1k style)") {
  if (have_fashion_mnist()) {
    ImageSet tr = load_fashion_mnist(default_fashion_mnist_dir(), true);
    ImageSet s = select_classes(tr, {5, 6, 7, 8, 9}, 1000, 3);
    CHECK(s.size() == 1000);
    CHECK(s.images.shape() == Shape{1000, 1, 28, 28});
    CHECK(s.num_classes == 5);
    CHECK(s.class_names == std::vector<std::string>{"Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"});
    for (int64_t c : counts(s.labels, 5)) CHECK(c == 200);
    ImageSet again = select_classes(tr, {5, 6, 7, 8, 9}, 1000, 3);
    CHECK(again.images.to_vector() == s.images.to_vector());  // seeded
    CHECK(select_classes(tr, {5, 6, 7, 8, 9}, 1000, 4).images.to_vector() != s.images.to_vector());
  } else {
    test::skip("dataset-fashion-mnist is not installed (synthetic part still runs)");
  }
  // Synthetic: which images are kept, and their relabelled classes.
  ImageSet s = synthetic(30, 3);  // labels 0,1,2,0,1,2,...
  ImageSet all = select_classes(s, {2, 0});
  CHECK(all.size() == 20);
  CHECK(all.class_names == std::vector<std::string>{"c2", "c0"});
  const std::vector<double> l = all.labels.to_vector();
  for (int64_t i = 0; i < all.size(); ++i) {
    const int64_t src = int64_t(row(all.images, i)[0]) / 4;  // source image index
    CHECK(src % 3 != 1);
    CHECK(l[size_t(i)] == (src % 3 == 2 ? 0 : 1));
    if (i > 0) CHECK(row(all.images, i)[0] > row(all.images, i - 1)[0]);  // source order kept
  }
  // A class with too few images gives its share to the others: exactly n in total.
  std::vector<int64_t> lab(22);
  for (int64_t i = 0; i < 22; ++i) lab[size_t(i)] = i < 2 ? 0 : 1 + i % 2;  // 2, 10, 10 images
  s.images = synthetic(22, 3).images;
  s.labels = Tensor::from_vector(lab, {22});
  ImageSet few = select_classes(s, {0, 1, 2}, 15, 1);
  CHECK(few.size() == 15);
  const std::vector<int64_t> c = counts(few.labels, 3);
  CHECK(c[0] == 2);
  CHECK(c[1] + c[2] == 13);
  CHECK(std::abs(c[1] - c[2]) <= 1);
  CHECK_THROWS_WITH_AS(select_classes(s, {0, 1, 2}, 23), doctest::Contains("only 22"), Error);
  CHECK_THROWS_WITH_AS(select_classes(s, {1, 1}), doctest::Contains("listed twice"), Error);
  CHECK_THROWS_WITH_AS(select_classes(s, {7}), doctest::Contains("class 7 has no images"), Error);
  CHECK_THROWS_WITH_AS(select_classes(s, {0}, 0), doctest::Contains("n must be"), Error);
}

TEST_CASE("data: split is stratified, seeded and disjoint") {
  ImageSet s = synthetic(40, 4);
  auto [tr, va] = split(s, 0.25, 9);
  CHECK(tr.size() == 28);
  CHECK(va.size() == 12);
  for (int64_t c : counts(va.labels, 4)) CHECK(c == 3);  // round(0.25 * 10) per class
  for (int64_t c : counts(tr.labels, 4)) CHECK(c == 7);
  std::set<double> seen;
  for (const ImageSet* p : {&tr, &va})
    for (int64_t i = 0; i < p->size(); ++i) seen.insert(row(p->images, i)[0]);
  CHECK(seen.size() == 40);  // every image in exactly one part
  CHECK(split(s, 0.25, 9).second.images.to_vector() == va.images.to_vector());
  CHECK(split(s, 0.25, 10).second.images.to_vector() != va.images.to_vector());
  CHECK(split(s, 0.0, 1).second.size() == 0);
  CHECK_THROWS_WITH_AS(split(s, 1.0, 1), doctest::Contains("val fraction"), Error);
}

TEST_CASE("data: IDX files are validated before use") {
  fs::path d = tmpdir("idx");
  std::vector<uint8_t> ok = idx_file(0x803, {2, 3, 3}, 18);
  ok[16] = 255;
  write_bytes(d / "ok", ok);
  Tensor t = read_idx_images((d / "ok").string());
  CHECK(t.shape() == Shape{2, 1, 3, 3});
  CHECK(t.to_vector()[0] == 1.0);
  CHECK(t.to_vector()[1] == doctest::Approx(7.0 / 255.0));
  // gzip: a compressed copy reads the same
  write_gz(d / "ok.gz", ok);
  CHECK(read_idx_images((d / "ok.gz").string()).to_vector() == t.to_vector());

  auto refused = [&](const char* name, const std::vector<uint8_t>& b, const char* what, bool labels = false) {
    write_bytes(d / name, b);
    const std::string p = (d / name).string();
    if (labels) CHECK_THROWS_WITH_AS(read_idx_labels(p), doctest::Contains(what), Error);
    else CHECK_THROWS_WITH_AS(read_idx_images(p), doctest::Contains(what), Error);
    // every message names the file
    if (labels) CHECK_THROWS_WITH_AS(read_idx_labels(p), doctest::Contains(p.c_str()), Error);
    else CHECK_THROWS_WITH_AS(read_idx_images(p), doctest::Contains(p.c_str()), Error);
  };
  refused("magic", idx_file(0x801, {2, 3, 3}, 18), "magic 0x801 is not an IDX u8 image file");
  refused("labels_as_images", idx_file(0x801, {5}, 5), "magic");
  refused("trunc", idx_file(0x803, {2, 3, 3}, 10), "truncated: expected 18 data bytes for dims [2, 3, 3], found 10");
  refused("trailing", idx_file(0x803, {2, 3, 3}, 19), "trailing bytes");
  refused("absurd", idx_file(0x803, {4000000000u, 10000, 10000}, 0), "implausible dims");
  refused("absurd2", idx_file(0x803, {100000, 100000, 1000}, 0), "more than 1000000000 elements");
  refused("zero_side", idx_file(0x803, {2, 0, 3}, 0), "implausible dims");
  refused("short", {0, 0}, "too short");
  refused("lab_trunc", idx_file(0x801, {5}, 3), "expected 5 data bytes", true);
  refused("lab_magic", idx_file(0x803, {5}, 5), "not an IDX u8 label file", true);
  // a gzip stream cut in the middle
  write_gz(d / "big.gz", idx_file(0x803, {50, 28, 28}, 50 * 28 * 28, 3));
  std::ifstream in(d / "big.gz", std::ios::binary);
  std::vector<uint8_t> gz((std::istreambuf_iterator<char>(in)), {});
  gz.resize(gz.size() / 2);
  write_bytes(d / "cut.gz", gz);
  CHECK_THROWS_WITH_AS(read_idx_images((d / "cut.gz").string()), doctest::Contains("gzip"), Error);
  CHECK_THROWS_WITH_AS(read_idx_images((d / "missing").string()), doctest::Contains("no such file"), Error);
  CHECK_THROWS_WITH_AS(read_idx_images(d.string()), doctest::Contains("not a regular file (a directory)"), Error);

  // A Fashion-MNIST directory whose label file does not match the image file.
  fs::path fm = tmpdir("fm");
  write_gz(fm / "t10k-images-idx3-ubyte.gz", idx_file(0x803, {3, 28, 28}, 3 * 28 * 28));
  write_gz(fm / "t10k-labels-idx1-ubyte.gz", idx_file(0x801, {2}, 2, 1));
  CHECK_THROWS_WITH_AS(load_fashion_mnist(fm.string(), false), doctest::Contains("has 3 images but"), Error);
  write_gz(fm / "t10k-labels-idx1-ubyte.gz", idx_file(0x801, {3}, 3, 12));
  CHECK_THROWS_WITH_AS(load_fashion_mnist(fm.string(), false), doctest::Contains("label 12 at index 0"), Error);
  write_gz(fm / "t10k-labels-idx1-ubyte.gz", idx_file(0x801, {3}, 3, 4));
  ImageSet s = load_fashion_mnist(fm.string(), false);
  CHECK(s.size() == 3);
  CHECK(s.labels.to_vector() == std::vector<double>{4, 4, 4});
  CHECK_THROWS_WITH_AS(load_fashion_mnist(fm.string(), true), doctest::Contains("train-images-idx3-ubyte.gz"), Error);
}

TEST_CASE("data: image folders decode, convert channels, resize, and skip bad files") {
  fs::path d = tmpdir("folder");
  for (const char* c : {"cat", "dog", "eel"}) fs::create_directories(d / c);
  std::vector<unsigned char> gray(8 * 8, 200), rgb(6 * 6 * 3), rgba(5 * 5 * 4), ga(3 * 3 * 2);
  for (size_t i = 0; i < rgb.size(); i += 3) rgb[i] = 100, rgb[i + 1] = 50, rgb[i + 2] = 200;
  for (size_t i = 0; i < rgba.size(); i += 4) rgba[i] = 10, rgba[i + 1] = 20, rgba[i + 2] = 30, rgba[i + 3] = 128;
  for (size_t i = 0; i < ga.size(); i += 2) ga[i] = 60, ga[i + 1] = 0;
  REQUIRE(stbi_write_png((d / "cat/a.png").string().c_str(), 8, 8, 1, gray.data(), 8));
  REQUIRE(stbi_write_png((d / "cat/b.PNG").string().c_str(), 3, 3, 2, ga.data(), 6));  // gray + alpha
  REQUIRE(stbi_write_png((d / "dog/b.png").string().c_str(), 6, 4, 3, rgb.data(), 18));
  REQUIRE(stbi_write_png((d / "dog/c.png").string().c_str(), 5, 5, 4, rgba.data(), 20));
  REQUIRE(stbi_write_bmp((d / "eel/d.bmp").string().c_str(), 5, 5, 3, rgb.data()));
  REQUIRE(stbi_write_jpg((d / "eel/e.jpg").string().c_str(), 8, 8, 1, gray.data(), 95));
  std::ofstream((d / "eel/corrupt.png").string()) << "not a png";
  std::ofstream((d / "eel/notes.txt").string()) << "ignored: not an image extension";
  // A PNG header claiming 20000 x 20000 gray pixels (400 MB): refused from the header before
  // stb allocates anything (the rest of the file does not exist).
  std::vector<uint8_t> huge = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                               0, 0, 0x4e, 0x20, 0, 0, 0x4e, 0x20, 8, 0, 0, 0, 0, 0, 0, 0, 0};
  write_bytes(d / "eel/huge.png", huge);

  ImageSet s = load_image_folder(d.string(), 4, 3);
  CHECK(s.skipped == 2);
  CHECK(s.class_names == std::vector<std::string>{"cat", "dog", "eel"});
  CHECK(s.num_classes == 3);
  REQUIRE(s.images.shape() == Shape{6, 3, 4, 4});
  CHECK(s.labels.to_vector() == std::vector<double>{0, 0, 1, 1, 2, 2});  // a.png, b.PNG | b, c | d.bmp, e.jpg
  auto all_eq = [](const std::vector<double>& v, size_t from, size_t to, double want) {
    for (size_t i = from; i < to; ++i)
      if (std::abs(v[i] - want) > 1e-6) return false;
    return true;
  };
  std::vector<double> v = row(s.images, 0);
  CHECK(all_eq(v, 0, 48, 200.0 / 255.0));  // gray replicated to RGB
  v = row(s.images, 1);
  CHECK(all_eq(v, 0, 48, 60.0 / 255.0));  // gray + alpha: alpha dropped
  v = row(s.images, 2);
  CHECK(all_eq(v, 0, 16, 100.0 / 255.0));
  CHECK(all_eq(v, 16, 32, 50.0 / 255.0));
  CHECK(all_eq(v, 32, 48, 200.0 / 255.0));
  v = row(s.images, 3);
  CHECK(all_eq(v, 0, 16, 10.0 / 255.0));  // RGBA: alpha dropped, not composited
  CHECK(all_eq(v, 32, 48, 30.0 / 255.0));
  v = row(s.images, 4);
  CHECK(all_eq(v, 16, 32, 50.0 / 255.0));  // BMP
  // One channel: RGB -> luma with stb's weights (77 r + 150 g + 29 b) >> 8.
  ImageSet g = load_image_folder(d.string(), 4, 1);
  REQUIRE(g.images.shape() == Shape{6, 1, 4, 4});
  CHECK(all_eq(row(g.images, 2), 0, 16, double((77 * 100 + 150 * 50 + 29 * 200) >> 8) / 255.0));
  CHECK(all_eq(row(g.images, 0), 0, 16, 200.0 / 255.0));

  // Bilinear resize (align_corners = false) of a 2x2 horizontal ramp to 4x4: every row is
  // [0, .25, .75, 1], as torch.nn.functional.interpolate gives.
  fs::path r = tmpdir("ramp");
  fs::create_directories(r / "only");
  std::vector<unsigned char> ramp = {0, 255, 0, 255};
  REQUIRE(stbi_write_png((r / "only/r.png").string().c_str(), 2, 2, 1, ramp.data(), 2));
  ImageSet rs = load_image_folder(r.string(), 4, 1);
  const std::vector<double> want = {0, 0.25, 0.75, 1};
  std::vector<double> got = rs.images.to_vector();
  REQUIRE(got.size() == 16);
  for (size_t i = 0; i < 16; ++i) CHECK(got[i] == doctest::Approx(want[i % 4]));
  // and downscaling an 8x8 image with 2x2 blocks of one value to 4x4 samples the block centres exactly
  std::vector<uint8_t> blocks(64);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x) blocks[size_t(y * 8 + x)] = uint8_t(10 * (y / 2 * 4 + x / 2));
  std::vector<float> out(16);
  resize_bilinear(blocks.data(), 8, 8, 1, 4, 4, out.data());
  for (int i = 0; i < 16; ++i) CHECK(out[size_t(i)] == doctest::Approx(10.0 * i / 255.0));

  // Layout errors name the folder.
  fs::create_directories(d / "empty");
  CHECK_THROWS_WITH_AS(load_image_folder(d.string(), 4, 3), doctest::Contains("empty' has no images"), Error);
  fs::remove(d / "empty");
  fs::create_directories(d / "zbad");
  std::ofstream((d / "zbad/x.jpg").string()) << "garbage";
  CHECK_THROWS_WITH_AS(load_image_folder(d.string(), 4, 3), doctest::Contains("zbad' could be read"), Error);
  CHECK_THROWS_WITH_AS(load_image_folder((d / "cat").string(), 4, 3), doctest::Contains("no class folders"), Error);
  CHECK_THROWS_WITH_AS(load_image_folder((d / "nope").string(), 4, 3), doctest::Contains("not a directory"), Error);
  CHECK_THROWS_WITH_AS(load_image_folder(d.string(), 4, 2), doctest::Contains("channels must be 1 or 3"), Error);
}

TEST_CASE("data: the loader is deterministic and resumable") {
  ImageSet s = synthetic(20, 2, 1, 4, 4);
  LoaderOptions o;
  o.batch = 6, o.pad = 1, o.hflip = true, o.seed = 4, o.mean = {0.0}, o.std = {1.0};
  DataLoader a(s, o), b(s, o);
  CHECK(a.batches_per_epoch() == 4);
  a.start(0);
  b.start(0);
  std::vector<Batch> stream;
  for (int i = 0; i < 10; ++i) {  // crosses into epochs 1 and 2
    Batch x = a.next(), y = b.next();
    CHECK(x.images.to_vector() == y.images.to_vector());
    CHECK(x.labels.to_vector() == y.labels.to_vector());
    CHECK(x.epoch == i / 4);
    CHECK(x.step == i % 4);
    stream.push_back(x);
  }
  CHECK(stream[3].images.size(0) == 2);  // last batch of an epoch is partial
  // the threaded stream equals the direct one, and a restart from (1, 2) continues identically
  for (int i = 0; i < 10; ++i) CHECK(stream[size_t(i)].images.to_vector() == a.make_batch(i / 4, i % 4).images.to_vector());
  b.start(1, 2);
  for (int i = 6; i < 10; ++i) CHECK(b.next().images.to_vector() == stream[size_t(i)].images.to_vector());
  // each epoch visits every sample once, in a different order per epoch
  for (int64_t e = 0; e < 3; ++e) {
    std::vector<int64_t> ord = a.order(e);
    std::sort(ord.begin(), ord.end());
    for (int64_t i = 0; i < 20; ++i) CHECK(ord[size_t(i)] == i);
  }
  CHECK(a.order(0) != a.order(1));
  LoaderOptions o2 = o;
  o2.seed = 5;
  CHECK(DataLoader(s, o2).order(0) != a.order(0));
  // without shuffling: source order; drop_last drops the partial batch
  LoaderOptions p = o;
  p.shuffle = false, p.drop_last = true;
  DataLoader pl(s, p);
  CHECK(pl.batches_per_epoch() == 3);
  CHECK(pl.make_batch(2, 1).labels.to_vector() == std::vector<double>{0, 1, 0, 1, 0, 1});
  CHECK_THROWS_WITH_AS(pl.make_batch(0, 3), doctest::Contains("outside"), Error);
  CHECK_THROWS_WITH_AS(pl.start(0, 3), doctest::Contains("outside"), Error);
  CHECK_THROWS_WITH_AS(pl.next(), doctest::Contains("before start"), Error);
  // bad options
  LoaderOptions bad = o;
  bad.std = {0.0};
  CHECK_THROWS_WITH_AS(DataLoader(s, bad), doctest::Contains("std must be positive"), Error);
  bad = o, bad.mean = {0.1, 0.2};
  CHECK_THROWS_WITH_AS(DataLoader(s, bad), doctest::Contains("mean has 2 values for 1 channels"), Error);
  ImageSet no_labels = s;
  no_labels.labels = Tensor::from_vector(std::vector<int64_t>{0, 1}, {2});
  CHECK_THROWS_WITH_AS(DataLoader(no_labels, o), doctest::Contains("labels must be I64 [20]"), Error);
  // the loader keeps its own handle to the set: a temporary is fine
  DataLoader tmp(synthetic(8, 2, 1, 4, 4), o);
  tmp.start(0);
  CHECK(tmp.next().images.shape() == Shape{6, 1, 4, 4});
}

TEST_CASE("data: loader augmentation (crop with zero padding, flip) and normalisation are exact") {
  const int64_t H = 5, W = 5, C = 3, N = 40;
  ImageSet s = synthetic(N, 2, C, H, W);  // pixel value = its flat index: every pixel unique
  LoaderOptions o;
  o.batch = N, o.shuffle = false, o.pad = 2, o.hflip = true, o.seed = 7;
  o.mean = {0.5, 1.0, 2.0}, o.std = {2.0, 4.0, 0.5};
  DataLoader dl(s, o);
  Batch b = dl.make_batch(0, 0);
  REQUIRE(b.images.shape() == Shape{N, C, H, W});
  const std::vector<double> src = s.images.to_vector(), out = b.images.to_vector();
  int flipped = 0, shifted = 0;
  for (int64_t i = 0; i < N; ++i) {
    // find the (flip, dy, dx) that explains sample i exactly; it must exist and be unique
    int found = 0;
    for (int f = 0; f < 2; ++f)
      for (int64_t dy = -2; dy <= 2; ++dy)
        for (int64_t dx = -2; dx <= 2; ++dx) {
          bool ok = true;
          for (int64_t c = 0; c < C && ok; ++c)
            for (int64_t y = 0; y < H && ok; ++y)
              for (int64_t x = 0; x < W && ok; ++x) {
                const int64_t sy = y + dy, sx0 = x + dx, sx = f ? W - 1 - sx0 : sx0;
                const double v = (sy < 0 || sy >= H || sx0 < 0 || sx0 >= W) ? 0.0 : src[size_t(((i * C + c) * H + sy) * W + sx)];
                const double want = (v - o.mean[size_t(c)]) / o.std[size_t(c)];
                ok = std::abs(out[size_t(((i * C + c) * H + y) * W + x)] - want) <= 1e-4 * std::max(1.0, std::abs(want));
              }
          if (ok) {
            ++found;
            flipped += f;
            shifted += dy != 0 || dx != 0;
          }
        }
    CHECK(found == 1);
  }
  CHECK(flipped > 5);  // both outcomes occur over 40 samples
  CHECK(flipped < 35);
  CHECK(shifted > 20);
  // Tiny known image, flip only: the mirror image or the original, nothing else.
  ImageSet t;
  t.images = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {1, 1, 2, 3});
  t.labels = Tensor::from_vector(std::vector<int64_t>{0}, {1});
  t.num_classes = 1;
  LoaderOptions fo;
  fo.batch = 1, fo.hflip = true, fo.mean = {0.0}, fo.std = {1.0};
  std::set<std::vector<double>> seen;
  for (int64_t e = 0; e < 40; ++e) seen.insert(DataLoader(t, fo).make_batch(e, 0).images.to_vector());
  CHECK(seen == std::set<std::vector<double>>{{1, 2, 3, 4, 5, 6}, {3, 2, 1, 6, 5, 4}});
}

TEST_CASE("data: the loader's thread stops when the loader is destroyed mid-epoch") {
  const auto t0 = std::chrono::steady_clock::now();
  ImageSet s = synthetic(64, 2, 1, 8, 8);
  LoaderOptions o;
  o.batch = 4, o.prefetch = 2, o.seed = 1;
  for (int rep = 0; rep < 20; ++rep) {
    DataLoader c(s, o);
    c.start(0);
    c.next();  // the worker is now blocked on a full queue or preparing the next batch
  }
  {
    DataLoader c(s, o);
    c.start(3, 5);
    c.start(0, 1);  // a restart joins the previous worker
    CHECK(c.next().step == 1);
  }
  { DataLoader never_started(s, o); }
  // every destructor joined promptly (a worker missing the stop signal would hang here instead)
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 5.0);
}
