// IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or plain, and the
// Fashion-MNIST loader for Debian's dataset-fashion-mnist.
//
// Layout (big endian): u32 magic 0x000008NN (0x08 = u8 data, NN = number of dims), one u32
// per dim, then the u8 payload. The header is read and validated first, so a file that
// claims absurd dims is refused before anything is allocated, and the payload is read
// straight into its final buffer: a truncated file is reported with the bytes expected
// and the bytes found, and trailing garbage is refused as well.
#include <zlib.h>

#include "core/error.h"
#include "core/user_files.h"
#include "data/dataset.h"

namespace dg::data {

const char* default_fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

namespace {

// Largest payload we accept: 1e9 u8 elements (4 GB as F32). Fashion-MNIST is 47 M.
constexpr uint64_t kMaxElements = 1000000000ull;

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

std::string str_dims(const std::vector<uint64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// A gzip (or plain: gzread passes those through) file read in pieces; closes itself.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    check_regular_file(path, "IDX file");  // gzopen would wait forever on a FIFO
    f_ = gzopen(path.c_str(), "rb");
    DG_CHECK(f_, "IDX '", path, "': cannot open");
  }
  ~GzReader() { gzclose(f_); }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Up to n bytes into dst; returns how many were read (fewer only at the end of the data).
  uint64_t read(uint8_t* dst, uint64_t n) {
    uint64_t got = 0;
    while (got < n) {
      const unsigned want = unsigned(std::min<uint64_t>(n - got, 1u << 30));
      const int r = gzread(f_, dst + got, want);
      if (r < 0) fail();
      if (r == 0) break;
      got += uint64_t(r);
    }
    // gzread reports a cut-off gzip stream as a short read plus an error code.
    int err = Z_OK;
    gzerror(f_, &err);
    if (err != Z_OK && err != Z_STREAM_END) fail();
    return got;
  }
  bool at_end() {
    uint8_t b;
    return read(&b, 1) == 0;
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
  [[noreturn]] void fail() {
    int err = 0;
    const char* msg = gzerror(f_, &err);
    throw Error(str("IDX '", path_, "': corrupt or truncated gzip data (", msg ? msg : "?", ")"));
  }
};

struct Idx {
  std::vector<uint64_t> dims;
  std::vector<uint8_t> data;
};

// Reads an IDX u8 file with `ndim` dims; `what` names the expected kind in errors.
Idx read_idx(const std::string& path, uint32_t ndim, const char* what) {
  GzReader r(path);
  uint8_t head[4 + 4 * 3];
  const uint64_t head_len = 4 + 4 * uint64_t(ndim);
  uint64_t got = r.read(head, 4);
  const uint32_t magic = got == 4 ? be32(head) : 0, want = 0x00000800u | ndim;
  if (got == 4 && magic != want) {  // the magic first: a label file passed as images says so
    std::ostringstream os;
    os << std::hex << "0x" << magic << " is not an IDX u8 " << what << " file (0x0000080" << ndim << ")";
    throw Error(str("IDX '", path, "': magic ", os.str()));
  }
  got += r.read(head + 4, head_len - 4);
  DG_CHECK(got == head_len, "IDX '", path, "': ", got, " bytes, too short for an IDX ", what, " header (", head_len,
           " bytes)");
  Idx idx;
  // `item` (the product of the dims after the first) is bounded too: with 0 images, [0, 2^32-1,
  // 2^32-1] holds no data but its shape would overflow int64 strides (found by fuzz/fuzz_idx).
  uint64_t total = 1, item = 1;
  for (uint32_t d = 0; d < ndim; ++d) {
    idx.dims.push_back(be32(head + 4 + 4 * d));
    total *= idx.dims.back();  // each dim < 2^32 and the products are checked per step: no overflow
    if (d > 0) item *= idx.dims.back();
    DG_CHECK(total <= kMaxElements && item <= kMaxElements, "IDX '", path, "': implausible dims (",
             str_dims(idx.dims), "...): more than ", kMaxElements, " elements");
  }
  for (size_t d = 1; d < idx.dims.size(); ++d)
    DG_CHECK(idx.dims[d] > 0, "IDX '", path, "': implausible dims ", str_dims(idx.dims), " (an image side of 0)");
  // Grow the buffer as the data arrives (16 MiB at a time), not to what the header claims:
  // a 30-byte file declaring 10^9 pixels must not allocate a gigabyte (found by fuzz/fuzz_idx).
  uint64_t found = 0;
  while (found < total) {
    const uint64_t chunk = std::min<uint64_t>(total - found, uint64_t(16) << 20);
    idx.data.resize(found + chunk);
    const uint64_t n = r.read(idx.data.data() + found, chunk);
    found += n;
    if (n < chunk) break;
  }
  DG_CHECK(found == total, "IDX '", path, "': truncated: expected ", total, " data bytes for dims ", str_dims(idx.dims),
           ", found ", found);
  DG_CHECK(r.at_end(), "IDX '", path, "': trailing bytes after the ", total, " data bytes for dims ",
           str_dims(idx.dims));
  return idx;
}

}  // namespace

Tensor read_idx_images(const std::string& path) {
  Idx idx = read_idx(path, 3, "image");
  const int64_t n = int64_t(idx.dims[0]), r = int64_t(idx.dims[1]), c = int64_t(idx.dims[2]);
  Tensor t = Tensor::empty({n, 1, r, c});  // F32 [n, 1, rows, cols]
  float* p = t.data<float>();
  for (size_t i = 0; i < idx.data.size(); ++i) p[i] = float(idx.data[i]) / 255.0f;
  return t;
}

Tensor read_idx_labels(const std::string& path) {
  Idx idx = read_idx(path, 1, "label");
  std::vector<int64_t> v(idx.data.begin(), idx.data.end());
  return Tensor::from_vector(v, {int64_t(idx.dims[0])});  // I64 [n]
}

ImageSet load_fashion_mnist(const std::string& dir, bool train) {
  const std::string pre = dir + (train ? "/train" : "/t10k");
  const std::string ip = pre + "-images-idx3-ubyte.gz", lp = pre + "-labels-idx1-ubyte.gz";
  ImageSet s;
  s.images = read_idx_images(ip);
  s.labels = read_idx_labels(lp);
  DG_CHECK(s.images.size(0) == s.labels.size(0), "Fashion-MNIST: '", ip, "' has ", s.images.size(0), " images but '",
           lp, "' has ", s.labels.size(0), " labels");
  s.num_classes = 10;
  s.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
  const int64_t* l = s.labels.data<int64_t>();
  for (int64_t i = 0; i < s.labels.size(0); ++i)
    DG_CHECK(l[i] >= 0 && l[i] < 10, "Fashion-MNIST: '", lp, "': label ", l[i], " at index ", i, " is not in 0..9");
  return s;
}

}  // namespace dg::data
