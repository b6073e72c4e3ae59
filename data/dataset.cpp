#include "data/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <sstream>

#include "core/error.h"
#include "core/random.h"

#include <stb_image.h>

namespace dg::data {

namespace fs = std::filesystem;

const char* default_fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

namespace {

// The whole (decompressed) file; gzip is detected by gzread itself (plain files pass through).
std::vector<uint8_t> read_gz(const std::string& path, uint64_t max_bytes) {
  DG_CHECK(fs::is_regular_file(path), "cannot open '", path, "': no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  DG_CHECK(f, "cannot open '", path, "'");
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) {
    out.insert(out.end(), buf, buf + n);
    if (out.size() > max_bytes) {
      gzclose(f);
      throw Error(str("'", path, "': more than ", max_bytes, " bytes after decompression"));
    }
  }
  int err = 0;
  const char* msg = gzerror(f, &err);
  gzclose(f);
  DG_CHECK(n == 0 && err == Z_OK, "'", path, "': corrupt gzip data (", msg, ")");
  return out;
}

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

}  // namespace

Tensor read_idx_images(const std::string& path) {
  auto b = read_gz(path, 1ull << 31);
  DG_CHECK(b.size() >= 16, "'", path, "': ", b.size(), " bytes, too short for an IDX image header (16)");
  DG_CHECK(be32(b.data()) == 0x00000803, "'", path, "': magic 0x", std::hex, be32(b.data()),
           " is not an IDX u8 3-d image file (0x00000803)");
  const uint64_t n = be32(b.data() + 4), r = be32(b.data() + 8), c = be32(b.data() + 12);
  DG_CHECK(r > 0 && c > 0 && r <= 4096 && c <= 4096 && n <= 100000000, "'", path, "': implausible dims ", n, "x", r,
           "x", c);
  DG_CHECK(b.size() - 16 == n * r * c, "'", path, "': expected ", n * r * c, " pixel bytes for ", n, " images of ", r,
           "x", c, ", found ", b.size() - 16);
  Tensor t = Tensor::empty({int64_t(n), 1, int64_t(r), int64_t(c)});
  float* p = t.data<float>();
  for (uint64_t i = 0; i < n * r * c; ++i) p[i] = float(b[16 + i]) / 255.0f;
  return t;
}

Tensor read_idx_labels(const std::string& path) {
  auto b = read_gz(path, 1ull << 28);
  DG_CHECK(b.size() >= 8, "'", path, "': ", b.size(), " bytes, too short for an IDX label header (8)");
  DG_CHECK(be32(b.data()) == 0x00000801, "'", path, "': magic 0x", std::hex, be32(b.data()),
           " is not an IDX u8 label file (0x00000801)");
  const uint64_t n = be32(b.data() + 4);
  DG_CHECK(b.size() - 8 == n, "'", path, "': expected ", n, " labels, found ", b.size() - 8, " bytes");
  std::vector<int64_t> v(b.begin() + 8, b.end());
  return Tensor::from_vector(v, {int64_t(n)});
}

ImageSet load_fashion_mnist(const std::string& dir, bool train) {
  const std::string pre = dir + (train ? "/train" : "/t10k");
  ImageSet s;
  s.images = read_idx_images(pre + "-images-idx3-ubyte.gz");
  s.labels = read_idx_labels(pre + "-labels-idx1-ubyte.gz");
  DG_CHECK(s.images.size(0) == s.labels.size(0), "Fashion-MNIST in '", dir, "': ", s.images.size(0), " images but ",
           s.labels.size(0), " labels");
  s.num_classes = 10;
  s.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
  for (double l : s.labels.to_vector()) DG_CHECK(l >= 0 && l < 10, "Fashion-MNIST in '", dir, "': label ", l, " out of range");
  return s;
}

ImageSet subset(const ImageSet& s, const std::vector<int64_t>& idx) {
  ImageSet o = s;
  const int64_t per = s.images.numel() / std::max<int64_t>(s.size(), 1);
  Shape sh = s.images.shape();
  sh[0] = int64_t(idx.size());
  o.images = Tensor::empty(sh);
  const float* src = s.images.data<float>();
  float* dst = o.images.data<float>();
  std::vector<int64_t> lab(idx.size());
  const int64_t* sl = s.labels.data<int64_t>();
  for (size_t i = 0; i < idx.size(); ++i) {
    std::copy(src + idx[i] * per, src + (idx[i] + 1) * per, dst + int64_t(i) * per);
    lab[i] = sl[idx[i]];
  }
  o.labels = Tensor::from_vector(lab, {int64_t(idx.size())});
  return o;
}

// Fisher-Yates with the counter-based generator: the same seed, the same order.
static void shuffle(std::vector<int64_t>& v, uint64_t seed) {
  Generator g(seed);
  Tensor u = Tensor::empty({int64_t(v.size())}, DType::F64);
  g.uniform_(u);
  const double* p = u.data<double>();
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[size_t(p[i - 1] * double(i))]);
}

ImageSet select_classes(const ImageSet& s, const std::vector<int64_t>& classes, int64_t n, uint64_t seed) {
  std::vector<std::vector<int64_t>> by(classes.size());
  const int64_t* l = s.labels.data<int64_t>();
  for (int64_t i = 0; i < s.size(); ++i)
    for (size_t k = 0; k < classes.size(); ++k)
      if (l[i] == classes[k]) by[k].push_back(i);
  std::vector<int64_t> idx;
  for (size_t k = 0; k < classes.size(); ++k) {
    DG_CHECK(!by[k].empty(), "select_classes: class ", classes[k], " has no images");
    shuffle(by[k], seed + k);
    int64_t take = int64_t(by[k].size());
    if (n > 0) take = std::min<int64_t>(take, n / int64_t(classes.size()) + (int64_t(k) < n % int64_t(classes.size())));
    idx.insert(idx.end(), by[k].begin(), by[k].begin() + take);
  }
  std::sort(idx.begin(), idx.end());
  ImageSet o = subset(s, idx);
  int64_t* ol = o.labels.data<int64_t>();
  for (int64_t i = 0; i < o.size(); ++i)
    ol[i] = std::find(classes.begin(), classes.end(), ol[i]) - classes.begin();
  o.num_classes = int64_t(classes.size());
  o.class_names.clear();
  for (int64_t c : classes) o.class_names.push_back(size_t(c) < s.class_names.size() ? s.class_names[size_t(c)] : str(c));
  return o;
}

std::pair<ImageSet, ImageSet> split(const ImageSet& s, double val_fraction, uint64_t seed) {
  std::vector<std::vector<int64_t>> by(size_t(s.num_classes));
  const int64_t* l = s.labels.data<int64_t>();
  for (int64_t i = 0; i < s.size(); ++i) by[size_t(l[i])].push_back(i);
  std::vector<int64_t> tr, va;
  for (size_t k = 0; k < by.size(); ++k) {
    shuffle(by[k], seed + k);
    const size_t nv = size_t(double(by[k].size()) * val_fraction + 0.5);
    va.insert(va.end(), by[k].begin(), by[k].begin() + nv);
    tr.insert(tr.end(), by[k].begin() + nv, by[k].end());
  }
  std::sort(tr.begin(), tr.end());
  std::sort(va.begin(), va.end());
  return {subset(s, tr), subset(s, va)};
}

ImageSet load_image_folder(const std::string& root, int64_t size, int64_t channels) {
  DG_CHECK(fs::is_directory(root), "image folder '", root, "': not a directory");
  DG_CHECK(channels == 1 || channels == 3, "image folder: channels must be 1 or 3, got ", channels);
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) classes.push_back(e.path().filename().string());
  std::sort(classes.begin(), classes.end());
  DG_CHECK(!classes.empty(), "image folder '", root, "': no class folders (expected root/<class>/*.png)");
  std::vector<float> pix;
  std::vector<int64_t> labels;
  int64_t skipped = 0;
  for (size_t k = 0; k < classes.size(); ++k) {
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(fs::path(root) / classes[k])) {
      std::string ext = e.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
      if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp"))
        files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    DG_CHECK(!files.empty(), "image folder '", root, "': class folder '", classes[k], "' has no images");
    for (const std::string& f : files) {
      int w = 0, h = 0, c = 0;
      unsigned char* img = stbi_load(f.c_str(), &w, &h, &c, int(channels));  // converts to `channels`
      if (!img) {
        std::fprintf(stderr, "skipping unreadable image '%s': %s\n", f.c_str(), stbi_failure_reason());
        ++skipped;
        continue;
      }
      // bilinear resize to size x size (align_corners = false), channel-planar output
      const size_t base = pix.size();
      pix.resize(base + size_t(channels * size * size));
      for (int64_t ch = 0; ch < channels; ++ch)
        for (int64_t y = 0; y < size; ++y)
          for (int64_t x = 0; x < size; ++x) {
            double fy = std::clamp((y + 0.5) * h / double(size) - 0.5, 0.0, double(h - 1));
            double fx = std::clamp((x + 0.5) * w / double(size) - 0.5, 0.0, double(w - 1));
            int y0 = int(fy), x0 = int(fx), y1 = std::min(y0 + 1, h - 1), x1 = std::min(x0 + 1, w - 1);
            double wy = fy - y0, wx = fx - x0;
            auto at = [&](int yy, int xx) { return double(img[(size_t(yy) * size_t(w) + size_t(xx)) * size_t(channels) + size_t(ch)]); };
            double v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
            pix[base + size_t((ch * size + y) * size + x)] = float(v / 255.0);
          }
      stbi_image_free(img);
      labels.push_back(int64_t(k));
    }
  }
  DG_CHECK(!labels.empty(), "image folder '", root, "': no readable images (", skipped, " skipped)");
  if (skipped) std::fprintf(stderr, "image folder '%s': %lld unreadable images skipped\n", root.c_str(), (long long)skipped);
  ImageSet s;
  s.images = Tensor::from_vector(pix, {int64_t(labels.size()), channels, size, size});
  s.labels = Tensor::from_vector(labels, {int64_t(labels.size())});
  s.num_classes = int64_t(classes.size());
  s.class_names = classes;
  s.skipped = skipped;
  return s;
}

DataSpec parse_data_spec(const std::string& spec) {
  DataSpec d;
  std::vector<std::string> parts;
  std::stringstream ss(spec);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  DG_CHECK(!parts.empty(), "--data: empty spec");
  if (parts[0] == "fashion-mnist") {
    d.kind = "fashion-mnist";
    d.path = default_fashion_mnist_dir();
  } else {
    d.kind = "folder";
    d.path = parts[0];
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    const auto eq = parts[i].find('=');
    DG_CHECK(eq != std::string::npos, "--data: option '", parts[i], "' is not key=value");
    const std::string k = parts[i].substr(0, eq), v = parts[i].substr(eq + 1);
    try {
      if (k == "classes") {
        const auto dash = v.find('-');
        DG_CHECK(dash != std::string::npos, "--data: classes=A-B expected, got '", v, "'");
        for (int64_t c = std::stoll(v.substr(0, dash)); c <= std::stoll(v.substr(dash + 1)); ++c) d.classes.push_back(c);
      } else if (k == "n") {
        d.n = std::stoll(v);
      } else if (k == "val") {
        d.val_fraction = std::stod(v);
      } else if (k == "dir") {
        d.path = v;
      } else {
        throw Error(str("--data: unknown option '", k, "' (classes, n, val, dir)"));
      }
    } catch (const std::logic_error&) {
      throw Error(str("--data: bad value in '", parts[i], "'"));
    }
  }
  return d;
}

}  // namespace dg::data
