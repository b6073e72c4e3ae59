// Image folders in torchvision's ImageFolder layout: root/<class>/*.png|jpg|jpeg|bmp, classes
// sorted by folder name, files sorted by path. Decoded with stb_image (compiled below), converted
// to 1 or 3 channels, resized (bilinear) to size x size and stored in [0, 1]; the loader
// normalises with the model's mean/std per batch.
//
// A file that cannot be decoded (corrupt, unsupported, absurdly large), a dangling symlink or an
// entry that only looks like an image (a FIFO or a directory named x.png) is reported once on
// stderr by path and skipped; the count is kept in ImageSet::skipped. Running out of memory
// while decoding is not a bad file: it throws OutOfMemory naming the image. A layout problem (no
// class folders, a class with no images) is an error naming the folder: training on a
// silently missing class would give a model with a dead output.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/user_files.h"
#include "data/dataset.h"
#include "data/transforms.h"

// stb_image is compiled here, its only user, with every allocation bounded by `decode_limit`:
// stb trusts the sizes in a file, and an 86-byte PNG whose IDAT chunk claimed 1.5 GB made it
// allocate 1.5 GB (found by fuzz/fuzz_image). The limit is set before each decode from the
// file's size and the image size in its header; a larger request fails as "Out of memory".
// A request under the cap that the C library refuses is real memory exhaustion, not a bad file:
// `decode_out_of_memory` tells the two apart (stb reports both as "Out of memory").
namespace {
thread_local size_t decode_limit = 0;
thread_local bool decode_out_of_memory = false;
void* stb_malloc(size_t n) {
  if (n > decode_limit) return nullptr;
  void* p = std::malloc(n);
  decode_out_of_memory = decode_out_of_memory || !p;
  return p;
}
void* stb_realloc(void* p, size_t n) {
  if (n > decode_limit) return nullptr;
  void* q = std::realloc(p, n);
  decode_out_of_memory = decode_out_of_memory || !q;
  return q;
}
}  // namespace
#define STBI_MALLOC(n) stb_malloc(n)
#define STBI_REALLOC(p, n) stb_realloc(p, n)
#define STBI_FREE(p) std::free(p)
#define STBI_ONLY_PNG  // the formats the folder takes: stb picks a decoder by content, not by name
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_FAILURE_USERMSG
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

namespace dg::data {

namespace fs = std::filesystem;

namespace {

// Refuse to decode more than this many pixels per image (an 8k x 8k photo; a ViT dataset
// image is far smaller): stb allocates whatever the header claims, before it finds out that
// a 100-byte file holds no such image. At 4 channels this caps one decode at 256 MiB.
constexpr int64_t kMaxPixels = int64_t(1) << 26;
// ... and no piece of a decode above what such an image takes at 16 bits x 4 channels, plus slack
constexpr size_t kMaxDecodeAlloc = 8 * size_t(kMaxPixels) + (size_t(64) << 20);

// Larger files are not dataset images (and stb takes an int length).
constexpr uintmax_t kMaxFileBytes = uintmax_t(1) << 28;

// stb_image 2.27 (Debian 12) writes past a Huffman table when a JPEG DHT segment declares
// more than 256 codes (found by fuzz/fuzz_image; upstream checks it since 2.28). This walks
// the marker segments as stb does (bytes outside segments, fill bytes and RSTn skipped) and
// reads every DHT table the way stb would, so that no such table reaches stb.
bool jpeg_huffman_tables_ok(const std::string& b) {
  auto at = [&](size_t k) { return k < b.size() ? uint8_t(b[k]) : uint8_t(0); };  // stb reads 0 past the end
  size_t i = 0;
  while (at(i) == 0xFF) ++i;                      // stb takes FF FF ... D8 as the start too
  if (i == 0 || at(i) != 0xD8) return true;  // not a JPEG
  for (++i; i + 1 < b.size();) {
    const uint8_t m = at(i + 1);
    if (at(i) != 0xFF || m == 0xFF) { ++i; continue; }
    if (m == 0xD9) break;                                             // EOI: stb reads no further
    if (m == 0x00 || (m >= 0xD0 && m <= 0xD8)) { i += 2; continue; }  // stuffed 0xFF, RSTn, SOI: no length
    const size_t len = size_t(at(i + 2)) << 8 | at(i + 3);
    if (m == 0xC4)  // DHT: tables of [class/id, 16 code counts, the codes] while length is left
      for (size_t p = i + 4, left = len - std::min<size_t>(len, 2); left > 0;) {
        size_t n = 0;
        for (size_t k = 1; k <= 16; ++k) n += at(p + k);
        if (n > 256) return false;
        p += 17 + n, left -= std::min(left, 17 + n);
      }
    i += 2 + len;
  }
  return true;
}

// stb_image 2.27 takes a PNG chunk's length on trust, and on an empty first IDAT copies 0 bytes
// to a null buffer (undefined behaviour; found by fuzz/fuzz_image). Walks the chunks as stb
// does (8-byte signature, then length, type, data, CRC) and refuses both.
bool png_chunks_ok(const std::string& b) {
  if (b.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) return true;  // not a PNG
  auto be32 = [&](size_t k) { return uint32_t(uint8_t(b[k])) << 24 | uint32_t(uint8_t(b[k + 1])) << 16 |
                                     uint32_t(uint8_t(b[k + 2])) << 8 | uint8_t(b[k + 3]); };
  bool have_data = false;
  for (size_t i = 8; i + 8 <= b.size();) {
    const uint32_t len = be32(i);
    const std::string type = b.substr(i + 4, 4);
    if (len > b.size() - i - 8 || (type == "IDAT" && len == 0 && !have_data)) return false;
    if (type == "IEND") break;
    have_data = have_data || (type == "IDAT" && len > 0);
    i += 12 + size_t(len);
  }
  return true;
}

// An uncompressed BMP (the only kind stb reads: no RLE) must hold its pixel rows. stb reads
// zeros past the end, so a 61-byte BMP claiming 66 x 852363 pixels made it decode 56 M pixels
// of nothing (found by fuzz/fuzz_image: 13 s under ASan, 170 MB). Headers as stb reads them:
// BITMAPCOREHEADER (12 bytes, 16-bit sizes) or a later one (32-bit signed sizes).
bool bmp_holds_its_pixels(const std::string& b) {
  if (b.size() < 2 || b[0] != 'B' || b[1] != 'M') return true;  // not a BMP
  auto at = [&](size_t k) { return k < b.size() ? uint8_t(b[k]) : uint8_t(0); };
  auto le16 = [&](size_t k) { return uint32_t(at(k)) | uint32_t(at(k + 1)) << 8; };
  auto le32 = [&](size_t k) { return le16(k) | le16(k + 2) << 16; };
  const uint32_t offset = le32(10), hsz = le32(14);
  int64_t w, h, bpp;
  if (hsz == 12) w = le16(18), h = le16(20), bpp = le16(24);
  else w = int32_t(le32(18)), h = int32_t(le32(22)), bpp = le16(28);
  if (w <= 0 || bpp <= 0 || bpp > 32) return true;  // stb refuses these itself
  const int64_t stride = (w * bpp + 31) / 32 * 4, rows = h < 0 ? -h : h;  // rows padded to 4 bytes
  return int64_t(b.size()) >= int64_t(offset) + stride * rows;
}

// Width and height from a PNG, BMP or JPEG header (false: not one of those, or too short). stb's
// own info call fails on images it finds too large, which it reports as "not of any known type,
// or corrupt"; these say how large they are.
bool header_dimensions(const std::string& b, int64_t& w, int64_t& h) {
  auto at = [&](size_t k) { return k < b.size() ? uint8_t(b[k]) : uint8_t(0); };
  auto be16 = [&](size_t k) { return int64_t(at(k)) << 8 | at(k + 1); };
  auto le16 = [&](size_t k) { return int64_t(at(k)) | int64_t(at(k + 1)) << 8; };
  if (b.size() >= 24 && b.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0 && b.compare(12, 4, "IHDR") == 0) {
    w = be16(16) << 16 | be16(18), h = be16(20) << 16 | be16(22);
    return true;
  }
  if (b.size() >= 26 && b[0] == 'B' && b[1] == 'M') {
    const bool core = (le16(14) | le16(16) << 16) == 12;  // BITMAPCOREHEADER: 16-bit sizes
    w = core ? le16(18) : int32_t(uint32_t(le16(18) | le16(20) << 16));
    h = core ? le16(20) : int32_t(uint32_t(le16(22) | le16(24) << 16));
    h = h < 0 ? -h : h;  // negative: rows stored top-down
    return true;
  }
  if (at(0) == 0xFF && at(1) == 0xD8)  // JPEG: the first SOFn segment (not DHT C4, JPG C8, DAC CC)
    for (size_t i = 2; i + 9 < b.size() && at(i) == 0xFF;) {
      const uint8_t m = at(i + 1);
      if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
        h = be16(i + 5), w = be16(i + 7);
        return true;
      }
      i += 2 + size_t(be16(i + 2));
    }
  return false;
}

// Why stb must not see these bytes (nullptr: it may).
const char* unsafe_for_stb(const std::string& b) {
  if (!jpeg_huffman_tables_ok(b)) return "corrupt JPEG (a Huffman table of more than 256 codes)";
  if (!png_chunks_ok(b)) return "corrupt PNG (a chunk past the end of the file, or an empty first IDAT)";
  if (!bmp_holds_its_pixels(b)) return "truncated BMP (the file is shorter than the pixel rows its header declares)";
  return nullptr;
}

// Beyond 1 M pixels, an image must come with at least one byte per 16384 of them: deflate
// packs at most ~1032 bytes into one (8256 pixels of a 1-bit PNG), a JPEG block of 64 pixels
// takes bits; a file far denser than that is truncated data that stb would pad with zeros.
constexpr int64_t kMaxPixelsPerByte = 16384, kFreePixels = int64_t(1) << 20;

bool has_image_extension(const fs::path& p) { return has_image_file_name(p.string()); }

// Why an entry of a folder cannot be read as what it looks like (nullptr: it can, or it is not
// meant to be: a notes.txt). Dangling symlinks and FIFOs were skipped without a word.
const char* unreadable_entry(const fs::directory_entry& e, bool want_directory) {
  std::error_code ec;
  const fs::file_status target = fs::status(e.path(), ec);
  if (fs::is_symlink(e.symlink_status(ec)) && !fs::exists(target)) return "a dangling symbolic link";
  if (want_directory || !has_image_extension(e.path()) || fs::is_regular_file(target)) return nullptr;
  return fs::is_directory(target) ? "a directory, not an image file" : "not a regular file (a FIFO, socket or device)";
}

// The sorted class folder names of an ImageFolder root; `skip(path, why)` hears of entries that
// cannot be what they look like.
template <class Skip>
std::vector<std::string> list_class_folders(const std::string& root, Skip&& skip) {
  DG_CHECK(fs::is_directory(root), "image folder '", root, "': not a directory");
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(root)) {
    if (const char* why = unreadable_entry(e, true)) skip(e.path().string(), why);
    else if (e.is_directory()) classes.push_back(e.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  DG_CHECK(!classes.empty(), "image folder '", root, "': no class folders (expected root/<class>/*.png|jpg|jpeg|bmp)");
  return classes;
}

}  // namespace

bool has_image_file_name(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

std::vector<std::string> class_folders(const std::string& root) {
  return list_class_folders(root, [](const std::string&, const char*) {});
}

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

std::string decode_image(const std::string& f, int64_t channels, DecodedImage& out) {
  DG_CHECK(channels == 1 || channels == 3, "image '", f, "': channels must be 1 or 3, got ", channels);
  std::string bytes;
  try {
    bytes = read_regular_file(f, "image", kMaxFileBytes);
  } catch (const Error& e) {
    return e.what();
  }
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const char* why = bytes.empty() ? "empty file" : unsafe_for_stb(bytes);
  auto over_limit = [&](int64_t w, int64_t h) {
    return str(w, " x ", h, " pixels is more than the limit of ", kMaxPixels, " pixels (8192 x 8192) per image");
  };
  int w = 0, h = 0, c = 0;
  // Header first: refuse absurd sizes before stb allocates for them. stb holds at most the
  // compressed data (PNG's IDAT gathered by doubling: < 2x the file) or the image at 16 bits
  // x 4 channels (JPEG in blocks of up to 32 pixels), one piece at a time, plus its state.
  decode_limit = 2 * bytes.size() + (size_t(1) << 20);
  decode_out_of_memory = false;
  if (why || !stbi_info_from_memory(data, int(bytes.size()), &w, &h, &c)) {
    int64_t hw = 0, hh = 0;  // stb calls an image it finds too large "not of any known type"
    if (!why && header_dimensions(bytes, hw, hh) && hw * hh > kMaxPixels) return over_limit(hw, hh);
    return why ? why : stbi_failure_reason();
  }
  if (int64_t(w) * h > kMaxPixels) return over_limit(w, h);
  if (int64_t(w) * h > std::max(kFreePixels, kMaxPixelsPerByte * int64_t(bytes.size())))
    return str(w, " x ", h, " pixels cannot come from ", bytes.size(), " bytes (truncated)");
  if (w < 1 || h < 1 || c < 1 || c > 4)  // 0 rows: found by fuzz/fuzz_image
    return str(w, " x ", h, " pixels with ", c, " channels (limits: 1 to ", kMaxPixels, " pixels, 1-4 channels)");
  // stb converts 1 (gray), 2 (gray+alpha), 3 (RGB) and 4 (RGBA) to `channels`: gray is
  // replicated, RGB -> gray uses stb's luma weights, alpha is dropped (not composited).
  decode_limit = std::min(kMaxDecodeAlloc, decode_limit + 8 * size_t(w + 32) * size_t(h + 32));
  unsigned char* img = stbi_load_from_memory(data, int(bytes.size()), &w, &h, &c, int(channels));
  if (!img && decode_out_of_memory) throw OutOfMemory(str("decoding image '", f, "' (", w, " x ", h, " pixels)"));
  if (!img || w < 1 || h < 1) {
    stbi_image_free(img);
    return img ? "no pixels" : stbi_failure_reason();
  }
  try {
    out.pixels.assign(img, img + size_t(w) * size_t(h) * size_t(channels));
  } catch (const std::bad_alloc&) {
    stbi_image_free(img);
    throw OutOfMemory(str("holding decoded image '", f, "' (", w, " x ", h, " pixels)"));
  }
  stbi_image_free(img);
  out.h = h, out.w = w, out.channels = channels;
  return "";
}

Tensor load_image(const std::string& path, int64_t channels, const EvalGeometry& g) {
  DecodedImage img;
  const std::string why = decode_image(path, channels, img);
  DG_CHECK(why.empty(), "image '", path, "': ", why);
  Tensor t = Tensor::empty({channels, g.size, g.size});
  resize_center_crop(img.pixels.data(), img.h, img.w, channels, g, t.data<float>());
  return t;
}

ImageSet load_image_folder(const std::string& root, int64_t size, int64_t channels) {
  EvalGeometry g;
  g.size = size;
  return load_image_folder(root, channels, g);
}

ImageSet load_image_folder(const std::string& root, int64_t channels, const EvalGeometry& g,
                           const std::vector<std::string>& known_classes) {
  const int64_t size = g.size;
  DG_CHECK(fs::is_directory(root), "image folder '", root, "': not a directory");
  DG_CHECK(channels == 1 || channels == 3, "image folder '", root, "': channels must be 1 or 3, got ", channels);
  DG_CHECK(size >= 1 && size <= 4096, "image folder '", root, "': image size must be in 1..4096, got ", size);
  int64_t skipped = 0;
  auto skip = [&](const std::string& path, const std::string& why) {
    std::fprintf(stderr, "image folder: skipping '%s': %s\n", printable(path).c_str(), printable(why).c_str());
    ++skipped;
  };
  const std::vector<std::string> classes = list_class_folders(root, skip);
  // Another split of the same dataset (val beside train): labels are the training split's indices.
  std::vector<int64_t> label_of(classes.size());
  for (size_t k = 0; k < classes.size(); ++k) {
    label_of[k] = int64_t(k);
    if (known_classes.empty()) continue;
    const auto it = std::find(known_classes.begin(), known_classes.end(), classes[k]);
    DG_CHECK(it != known_classes.end(), "image folder '", root, "': class folder '", classes[k],
             "' is not a class of the training split (", known_classes.size(), " classes)");
    label_of[k] = it - known_classes.begin();
  }

  const int64_t per = channels * size * size;
  std::vector<float> pix;  // [N, C, size, size], grown per image
  std::vector<int64_t> labels;
  std::vector<std::string> sources;
  for (size_t k = 0; k < classes.size(); ++k) {
    const fs::path dir = fs::path(root) / classes[k];
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (const char* why = unreadable_entry(e, false)) skip(e.path().string(), why);
      else if (e.is_regular_file() && has_image_extension(e.path())) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    DG_CHECK(!files.empty(), "image folder '", root, "': class folder '", dir.string(),
             "' has no images (.png, .jpg, .jpeg, .bmp)");
    int64_t kept = 0;
    for (const std::string& f : files) {
      DecodedImage img;
      if (const std::string why = decode_image(f, channels, img); !why.empty()) {
        skip(f, why);
        continue;
      }
      const size_t base = pix.size();
      try {
        pix.resize(base + size_t(per));
      } catch (const std::bad_alloc&) {
        throw OutOfMemory(str("image folder '", root, "': holding ", labels.size() + 1, " decoded images of ",
                              channels, " x ", size, " x ", size, " floats"));
      }
      resize_center_crop(img.pixels.data(), img.h, img.w, channels, g, pix.data() + base);
      labels.push_back(label_of[k]);
      sources.push_back(f);
      ++kept;
    }
    DG_CHECK(kept > 0, "image folder '", root, "': none of the ", files.size(), " images in class folder '", dir.string(),
             "' could be read");
  }
  if (skipped)
    std::fprintf(stderr, "image folder '%s': %lld unreadable entries skipped\n", printable(root).c_str(), (long long)skipped);
  ImageSet s;
  const int64_t n = int64_t(labels.size());
  s.images = Tensor::from_vector(pix, {n, channels, size, size});
  s.labels = Tensor::from_vector(labels, {n});
  s.num_classes = known_classes.empty() ? int64_t(classes.size()) : int64_t(known_classes.size());
  s.class_names = known_classes.empty() ? classes : known_classes;
  s.skipped = skipped;
  s.files = std::move(sources);
  return s;
}

}  // namespace dg::data
