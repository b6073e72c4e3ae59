// Image folders in torchvision's ImageFolder layout: root/<class>/*.png|jpg|jpeg|bmp, classes
// sorted by folder name, files sorted by path. Decoded with stb_image (compiled in
// data/stb_impl.cpp), converted to 1 or 3 channels, resized (bilinear) to size x size and
// stored in [0, 1]; the loader normalises with the model's mean/std per batch.
//
// A file that cannot be decoded (corrupt, unsupported, absurdly large) is reported once on
// stderr by path and skipped; the count is kept in ImageSet::skipped. A layout problem (no
// class folders, a class with no images) is an error naming the folder: training on a
// silently missing class would give a model with a dead output.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "data/dataset.h"

#include <stb_image.h>

namespace dg::data {

namespace fs = std::filesystem;

namespace {

// Refuse to decode more than this many pixels per image (an 8k x 8k photo; a ViT dataset
// image is far smaller): stb allocates whatever the header claims, before it finds out that
// a 100-byte file holds no such image. At 4 channels this caps one decode at 256 MiB.
constexpr int64_t kMaxPixels = int64_t(1) << 26;

bool is_image_file(const fs::directory_entry& e) {
  if (!e.is_regular_file()) return false;
  std::string ext = e.path().extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

}  // namespace

void resize_bilinear(const uint8_t* src, int64_t h, int64_t w, int64_t channels, int64_t out_h, int64_t out_w,
                     float* dst) {
  // align_corners = false (torch's F.interpolate and PIL's geometry): output pixel centres map
  // back to (y + 0.5) * h / out_h - 0.5, clamped at the border. No antialiasing: downscaling
  // by more than 2x skips source pixels, which is fine for thumbnails of a few px.
  const double sy = double(h) / double(out_h), sx = double(w) / double(out_w);
  for (int64_t y = 0; y < out_h; ++y) {
    const double fy = std::clamp((double(y) + 0.5) * sy - 0.5, 0.0, double(h - 1));
    const int64_t y0 = int64_t(fy), y1 = std::min(y0 + 1, h - 1);
    const double wy = fy - double(y0);
    for (int64_t x = 0; x < out_w; ++x) {
      const double fx = std::clamp((double(x) + 0.5) * sx - 0.5, 0.0, double(w - 1));
      const int64_t x0 = int64_t(fx), x1 = std::min(x0 + 1, w - 1);
      const double wx = fx - double(x0);
      for (int64_t c = 0; c < channels; ++c) {
        auto at = [&](int64_t yy, int64_t xx) { return double(src[(yy * w + xx) * channels + c]); };
        const double v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
        dst[(c * out_h + y) * out_w + x] = float(v / 255.0);  // planar [C, out_h, out_w]
      }
    }
  }
}

ImageSet load_image_folder(const std::string& root, int64_t size, int64_t channels) {
  DG_CHECK(fs::is_directory(root), "image folder '", root, "': not a directory");
  DG_CHECK(channels == 1 || channels == 3, "image folder '", root, "': channels must be 1 or 3, got ", channels);
  DG_CHECK(size >= 1 && size <= 4096, "image folder '", root, "': image size must be in 1..4096, got ", size);
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) classes.push_back(e.path().filename().string());
  std::sort(classes.begin(), classes.end());
  DG_CHECK(!classes.empty(), "image folder '", root, "': no class folders (expected root/<class>/*.png|jpg|jpeg|bmp)");

  const int64_t per = channels * size * size;
  std::vector<float> pix;  // [N, C, size, size], grown per image
  std::vector<int64_t> labels;
  int64_t skipped = 0;
  for (size_t k = 0; k < classes.size(); ++k) {
    const fs::path dir = fs::path(root) / classes[k];
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir))
      if (is_image_file(e)) files.push_back(e.path().string());
    std::sort(files.begin(), files.end());
    DG_CHECK(!files.empty(), "image folder '", root, "': class folder '", dir.string(),
             "' has no images (.png, .jpg, .jpeg, .bmp)");
    int64_t kept = 0;
    for (const std::string& f : files) {
      int w = 0, h = 0, c = 0;
      // Header first: refuse absurd sizes before stb allocates for them.
      if (!stbi_info(f.c_str(), &w, &h, &c)) {
        std::fprintf(stderr, "image folder: skipping unreadable image '%s': %s\n", f.c_str(), stbi_failure_reason());
        ++skipped;
        continue;
      }
      if (int64_t(w) * h > kMaxPixels || c < 1 || c > 4) {
        std::fprintf(stderr, "image folder: skipping '%s': %d x %d pixels with %d channels (limits: %lld pixels, 1-4 channels)\n",
                     f.c_str(), w, h, c, (long long)kMaxPixels);
        ++skipped;
        continue;
      }
      // stb converts 1 (gray), 2 (gray+alpha), 3 (RGB) and 4 (RGBA) to `channels`: gray is
      // replicated, RGB -> gray uses stb's luma weights, alpha is dropped (not composited).
      unsigned char* img = stbi_load(f.c_str(), &w, &h, &c, int(channels));
      if (!img) {
        std::fprintf(stderr, "image folder: skipping unreadable image '%s': %s\n", f.c_str(), stbi_failure_reason());
        ++skipped;
        continue;
      }
      const size_t base = pix.size();
      pix.resize(base + size_t(per));
      resize_bilinear(img, h, w, channels, size, size, pix.data() + base);
      stbi_image_free(img);
      labels.push_back(int64_t(k));
      ++kept;
    }
    DG_CHECK(kept > 0, "image folder '", root, "': none of the ", files.size(), " images in class folder '", dir.string(),
             "' could be read");
  }
  if (skipped)
    std::fprintf(stderr, "image folder '%s': %lld unreadable images skipped\n", root.c_str(), (long long)skipped);
  ImageSet s;
  const int64_t n = int64_t(labels.size());
  s.images = Tensor::from_vector(pix, {n, channels, size, size});
  s.labels = Tensor::from_vector(labels, {n});
  s.num_classes = int64_t(classes.size());
  s.class_names = classes;
  s.skipped = skipped;
  return s;
}

}  // namespace dg::data
