// timm's image geometry (data/transforms.h): where the eval transform crops, what it computes on
// images whose resized values are known in closed form (a ramp stays a ramp under a symmetric
// normalised filter; a period-4 stripe pattern shrunk 4x by PIL's widened triangle filter is its
// mean, where resampling without antialiasing would read only the dark pixels), and
// RandomResizedCrop's boxes.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <vector>

#include <nlohmann/json.hpp>
#include <stb_image_write.h>

#include "core/safetensors.h"
#include "data/loader.h"
#include "data/transforms.h"
#include "tests/test_util.h"

using namespace dg;
using namespace dg::data;

namespace {
EvalGeometry geometry(int64_t size, double crop_pct, Interpolation i = Interpolation::Bilinear) {
  EvalGeometry g;
  g.size = size, g.crop_pct = crop_pct, g.interpolation = i;
  return g;
}
}  // namespace

TEST_CASE("transforms: the eval crop is centred in the image resized to floor(size / crop_pct) on its short side") {
  // wide: short side 20 -> floor(8 / 0.8) = 10, long side int(10 * 40 / 20) = 20; crop 8 at (1, 6)
  ResizeCrop r = eval_resize_crop(20, 40, geometry(8, 0.8));
  CHECK(r.resized_h == 10);
  CHECK(r.resized_w == 20);
  CHECK(r.top == 1);
  CHECK(r.left == 6);
  r = eval_resize_crop(40, 20, geometry(8, 0.8));  // tall
  CHECK((r.resized_h == 20 && r.resized_w == 10 && r.top == 6 && r.left == 1));
  // torchvision's round((10 - 5) / 2) is Python's round(2.5) = 2 (halves to even), not 3
  r = eval_resize_crop(30, 30, geometry(5, 0.5));
  CHECK((r.resized_h == 10 && r.resized_w == 10 && r.top == 2 && r.left == 2));
  // timm's ViT eval at 224: crop_pct 0.9 resizes the short side to 248
  r = eval_resize_crop(375, 500, geometry(224, 0.9));
  CHECK((r.resized_h == 248 && r.resized_w == 330 && r.top == 12 && r.left == 53));
}

TEST_CASE("transforms: resize and centre crop of a ramp, a tall image and a stripe pattern give the known values") {
  // a horizontal ramp 6x over 40 x 20: the 2x smaller image's pixel i sits at source 2i + 0.5, so
  // output x (resized pixel x + 6) is 6 * (2 (x + 6) + 0.5) / 255, for both filters
  std::vector<uint8_t> ramp(20 * 40);
  for (int y = 0; y < 20; ++y)
    for (int x = 0; x < 40; ++x) ramp[size_t(y * 40 + x)] = uint8_t(6 * x);
  for (Interpolation f : {Interpolation::Bilinear, Interpolation::Bicubic}) {
    std::vector<float> out(64);
    resize_center_crop(ramp.data(), 20, 40, 1, geometry(8, 0.8, f), out.data());
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x)
        CHECK(out[size_t(y * 8 + x)] == doctest::Approx(6.0 * (2.0 * (x + 6) + 0.5) / 255.0).epsilon(1e-5));
  }
  // a tall 10 x 30 image, rows 8y, size 10 at crop_pct 1: no resize, the middle rows 10..19
  std::vector<uint8_t> tall(30 * 10 * 3);
  for (int y = 0; y < 30; ++y)
    for (int x = 0; x < 10 * 3; ++x) tall[size_t(y * 30 + x)] = uint8_t(8 * y);
  std::vector<float> out(3 * 100);
  resize_center_crop(tall.data(), 30, 10, 3, geometry(10, 1.0), out.data());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 10; ++y) CHECK(out[size_t(c * 100 + y * 10 + 3)] == doctest::Approx(8.0 * (y + 10) / 255.0));
  // stripes 255, 0, 0, 0 along x in 64 x 16, shrunk 4x to 16 x 4 (crop 4 at left 6): every pixel
  // averages the pattern, 0.25; bilinear sampling without antialiasing would give 0
  std::vector<uint8_t> stripes(16 * 64);
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 64; ++x) stripes[size_t(y * 64 + x)] = x % 4 == 0 ? 255 : 0;
  std::vector<float> small(16);
  resize_center_crop(stripes.data(), 16, 64, 1, geometry(4, 1.0), small.data());
  for (float v : small) CHECK(v == doctest::Approx(0.25).epsilon(1e-6));
}

TEST_CASE("transforms: the eval transform matches timm's (PIL) on synthetic images, within PIL's 8-bit rounding") {
  // tests/fixtures/transform_golden.safetensors: scripts/make_transform_golden.py ran timm's
  // create_transform(is_training=False) on these images
  SafeTensors f = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/transform_golden.safetensors");
  const nlohmann::json cases = nlohmann::json::parse(f.metadata.at("cases"));
  REQUIRE(cases.size() >= 5);
  for (size_t k = 0; k < cases.size(); ++k) {
    CAPTURE(k);
    const Tensor& src = f.tensors.at("src." + std::to_string(k));
    const std::vector<double> want = f.tensors.at("out." + std::to_string(k)).to_vector();
    std::vector<uint8_t> px;
    for (double v : src.to_vector()) px.push_back(uint8_t(v));
    const int64_t size = cases[k]["size"];
    const EvalGeometry g = geometry(size, cases[k]["crop_pct"],
                                    parse_interpolation(cases[k]["interpolation"], "fixture"));
    std::vector<float> got(size_t(3 * size * size));
    resize_center_crop(px.data(), src.size(0), src.size(1), 3, g, got.data());
    REQUIRE(want.size() == got.size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
    MESSAGE("case ", k, ": largest difference to timm ", worst * 255, " / 255");
    CHECK(worst <= 1.5 / 255);
  }
}

TEST_CASE("transforms: RandomResizedCrop boxes lie in the image with timm's scale and ratio ranges") {
  uint64_t state = 12345;
  auto lcg = [&](int) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return double(state >> 11) / double(uint64_t(1) << 53);
  };
  int fallbacks = 0;
  for (int t = 0; t < 500; ++t) {
    const CropBox b = random_resized_crop_box(50, 80, lcg);
    REQUIRE((b.top >= 0 && b.left >= 0 && b.top + b.height <= 50 && b.left + b.width <= 80));
    const double area = double(b.height * b.width) / (50.0 * 80.0), ratio = double(b.width) / double(b.height);
    if (b.height == 50 && b.width == 67) ++fallbacks;
    CHECK(area >= 0.07);  // 0.08 less the rounding of both sides
    CHECK(ratio >= 0.7);
    CHECK(ratio <= 1.42);
  }
  CHECK(fallbacks < 50);
  // draws that never fit (the largest area at the widest ratio is 55 px high) take torchvision's
  // fallback: the full height, width round(50 * 4 / 3) = 67, centred
  const CropBox f = random_resized_crop_box(50, 80, [](int) { return 0.9999; });
  CHECK((f.top == 0 && f.left == 6 && f.height == 50 && f.width == 67));
}

TEST_CASE("transforms: RandomResizedCrop boxes are torchvision's get_params boxes for the same random draws") {
  // tests/fixtures/rrc_golden.json: torchvision's own RandomResizedCrop.get_params, its draws
  // replaced by fixed ones (scripts/make_rrc_golden.py says how they map to ours), on square,
  // wide, tall, tiny and random image sizes; a fifth of the cases exhaust the 10 tries.
  const nlohmann::json f = nlohmann::json::parse(test::slurp(DG_SOURCE_DIR "/tests/fixtures/rrc_golden.json"));
  REQUIRE(f["cases"].size() == 200);
  int fallbacks = 0;
  for (const auto& c : f["cases"]) {
    const std::vector<double> u = c["u"];
    const int64_t h = c["h"], w = c["w"];
    const CropBox b = random_resized_crop_box(h, w, [&](int k) { return u.at(size_t(k)); });
    const std::vector<int64_t> want = c["box"];
    CAPTURE(h);
    CAPTURE(w);
    CHECK(std::vector<int64_t>{b.top, b.left, b.height, b.width} == want);
    fallbacks += (b.height == h || b.width == w) && (b.top == (h - b.height) / 2 && b.left == (w - b.width) / 2);
  }
  CHECK(fallbacks >= 30);  // the fallback was exercised, not just the tries
}

TEST_CASE("loader: random-resized-crop keeps a flat image flat and varies a textured one by epoch") {
  ImageSet s;
  std::vector<float> px(2 * 16 * 16, 0.5f);
  for (int i = 0; i < 256; ++i) px[size_t(256 + i)] = float(i % 16) / 16.0f;  // image 1: a ramp
  s.images = Tensor::from_vector(px, {2, 1, 16, 16});
  s.labels = Tensor::from_vector(std::vector<int64_t>{0, 1}, {2});
  s.num_classes = 2;
  LoaderOptions o;
  o.batch = 2, o.shuffle = false, o.random_resized_crop = true, o.hflip = true, o.mean = {0.25}, o.std = {0.5};
  DataLoader dl(s, o);
  const std::vector<double> e0 = dl.make_batch(0, 0).images.to_vector(), e1 = dl.make_batch(1, 0).images.to_vector();
  for (size_t i = 0; i < 256; ++i) CHECK(e0[i] == doctest::Approx((0.5 - 0.25) / 0.5));
  bool differs = false;
  for (size_t i = 256; i < 512; ++i) differs = differs || std::abs(e0[i] - e1[i]) > 1e-3;
  CHECK(differs);
}

TEST_CASE("loader: random-resized-crop of an image folder crops the original file, not the stored eval crop") {
  // One 20 x 60 image, white in its 10 leftmost columns, black elsewhere. Stored at size 8 the
  // eval view (short side to 8: 8 x 24, centre 8 columns = original columns 20..40) is all black;
  // crops of the original (the box drawn on 20 x 60) reach the white columns in some epochs.
  const std::filesystem::path d = test::fresh_dir("transforms", "rrc_original");
  std::filesystem::create_directories(d / "a");
  std::vector<unsigned char> px(20 * 60, 0);
  for (int y = 0; y < 20; ++y)
    for (int x = 0; x < 10; ++x) px[size_t(y * 60 + x)] = 255;
  REQUIRE(stbi_write_png((d / "a" / "0.png").string().c_str(), 60, 20, 1, px.data(), 60));
  EvalGeometry g;
  g.size = 8;
  ImageSet s = load_image_folder(d.string(), 1, g);
  REQUIRE(s.files.size() == 1);
  CHECK(*std::max_element(s.images.data<float>(), s.images.data<float>() + 64) == 0.0f);  // the stored view: black
  LoaderOptions o;
  o.batch = 1, o.shuffle = false, o.random_resized_crop = true, o.mean = {0.0}, o.std = {1.0};
  DataLoader dl(s, o);
  int white = 0;
  for (int epoch = 0; epoch < 40; ++epoch) {
    const std::vector<double> v = dl.make_batch(epoch, 0).images.to_vector();
    REQUIRE(v.size() == 64);
    white += *std::max_element(v.begin(), v.end()) > 0.5;
  }
  CHECK(white >= 3);
  // without its files (a set built in memory), the stored image is cropped: black every time
  ImageSet stored = s;
  stored.files.clear();
  DataLoader dl2(stored, o);
  for (int epoch = 0; epoch < 40; ++epoch) {
    const std::vector<double> v = dl2.make_batch(epoch, 0).images.to_vector();
    CHECK(*std::max_element(v.begin(), v.end()) == 0.0);
  }
  // subsets keep each image's file
  CHECK(subset(s, {0, 0}).files == std::vector<std::string>{s.files[0], s.files[0]});
}
