#include "core/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/user_files.h"

namespace dg {

using nlohmann::json;

// The data buffer is little-endian and we memcpy it straight into tensors.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MB of JSON is not a real header
constexpr uint64_t kMaxElems = 1ull << 48;     // bound on a shape's product: keeps strides/bytes in int64

const char* kSupported = "F32, F64, F16, BF16, I64, I32";

bool parse_dtype(const std::string& s, DType& out) {
  static const std::map<std::string, DType> m{{"F32", DType::F32}, {"F64", DType::F64}, {"F16", DType::F16},
                                              {"BF16", DType::BF16}, {"I64", DType::I64}, {"I32", DType::I32}};
  auto it = m.find(s);
  if (it == m.end()) return false;
  out = it->second;
  return true;
}

const char* dtype_tag(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
  }
  return "?";
}

// Parse the header text. nlohmann's DOM parser keeps the last of duplicate keys without a
// word, which would let two entries claim one name; a parser callback keeps one key set per
// open object and remembers the first repeat.
json parse_header(const std::string& text, const std::string& what) {
  std::vector<std::set<std::string>> open;  // keys seen, one set per object being parsed
  std::string dup;
  size_t dup_depth = 0;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      open.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (ev == json::parse_event_t::key && !open.empty() && dup.empty()) {
      std::string k = parsed.get<std::string>();
      if (!open.back().insert(k).second) dup = k, dup_depth = open.size();
    }
    return true;
  };
  json h;
  try {
    h = json::parse(text, cb);
  } catch (const json::exception& e) {
    throw Error(str(what, ": header is not valid JSON (", printable(e.what()), ")"));  // it quotes the bytes
  }
  DG_CHECK(h.is_object(), what, ": header is not a JSON object (found ", h.type_name(), ")");
  DG_CHECK(dup.empty() || dup_depth != 1, what, ": duplicate tensor name '", dup, "' in the header");
  DG_CHECK(dup.empty(), what, ": duplicate key '", dup, "' inside a header entry");
  return h;
}

// One validated header entry; nothing is allocated until every entry has passed.
struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

Entry check_entry(const std::string& name, const json& e, uint64_t buf_size, const std::string& what) {
  const std::string where = what + ": tensor '" + name + "'";
  DG_CHECK(e.is_object(), where, ": entry must be an object {dtype, shape, data_offsets}, found ", e.type_name());
  for (const char* k : {"dtype", "shape", "data_offsets"})
    DG_CHECK(e.contains(k), where, ": entry has no \"", k, "\"");

  Entry out{name, DType::F32, {}, 0, 0};
  const json& dt = e.at("dtype");
  DG_CHECK(dt.is_string(), where, ": dtype must be a string, found ", dt.dump());
  const std::string tag = dt.get<std::string>();
  DG_CHECK(parse_dtype(tag, out.dtype), where, ": unsupported dtype '", tag, "' (supported: ", kSupported, ")");

  const json& sh = e.at("shape");
  DG_CHECK(sh.is_array(), where, ": shape must be an array, found ", sh.dump());
  uint64_t numel = 1, nonzero = 1;  // `nonzero` skips zero dims so [0, 2^62] is still refused
  for (const json& d : sh) {
    // nlohmann stores non-negative integer literals as unsigned; -2 is signed, 2.0 is a float
    DG_CHECK(d.is_number_unsigned(), where, ": shape entries must be non-negative integers, got ", sh.dump());
    const uint64_t v = d.get<uint64_t>();
    DG_CHECK(v <= kMaxElems && (v == 0 || nonzero <= kMaxElems / v), where, ": shape ", sh.dump(),
             " is too large (more than 2^48 elements)");
    if (v) nonzero *= v;
    numel *= v;
    out.shape.push_back(int64_t(v));
  }

  const json& off = e.at("data_offsets");
  DG_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
           ": data_offsets must be [begin, end] of non-negative integers, found ", off.dump());
  out.begin = off[0].get<uint64_t>();
  out.end = off[1].get<uint64_t>();
  DG_CHECK(out.begin <= out.end, where, ": data_offsets [", out.begin, ", ", out.end, "] are reversed (begin > end)");
  DG_CHECK(out.end <= buf_size, where, ": data_offsets [", out.begin, ", ", out.end, "] exceed the data buffer of ",
           buf_size, " bytes (file truncated?)");
  const uint64_t want = numel * dtype_size(out.dtype);  // <= 2^51, no overflow
  DG_CHECK(out.end - out.begin == want, where, ": data_offsets [", out.begin, ", ", out.end, "] hold ",
           out.end - out.begin, " bytes, but ", tag, " with shape ", sh.dump(), " needs ", want, " bytes");
  return out;
}

}  // namespace

SafeTensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what) {
  DG_CHECK(size >= 8, what, ": file is ", size, " bytes, too short for a safetensors file (8-byte header length)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | data[i];
  DG_CHECK(n <= kMaxHeader, what, ": header length ", n, " exceeds the 100 MB limit; not a safetensors file?");
  DG_CHECK(n <= size - 8, what, ": header length ", n, " exceeds the file (", size, " bytes, so at most ", size - 8,
           "); the file is truncated or not safetensors");
  const json h = parse_header(std::string(reinterpret_cast<const char*>(data + 8), size_t(n)), what);

  const uint8_t* base = data + 8 + n;
  const uint64_t buf_size = size - 8 - n;
  SafeTensors out;
  std::vector<Entry> entries;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      const json& m = it.value();
      DG_CHECK(m.is_object(), what, ": __metadata__ must be an object of strings, found ", m.type_name());
      for (auto kv = m.begin(); kv != m.end(); ++kv) {
        DG_CHECK(kv.value().is_string(), what, ": __metadata__ entry '", kv.key(), "' is not a string (found ",
                 kv.value().dump(), ")");
        out.metadata[kv.key()] = kv.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(check_entry(it.key(), it.value(), buf_size, what));
  }

  // The format requires the buffer to be covered exactly: no overlaps, no holes, nothing
  // after the last tensor. Checking this before allocating also means a header of many
  // entries aliasing one big span cannot make us allocate many times the file size.
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;  // empty spans first
  });
  uint64_t at = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : order) {
    DG_CHECK(e->begin >= at, what, ": tensor '", e->name, "' data [", e->begin, ", ", e->end,
             ") overlaps tensor '", prev ? prev->name : "", "' [", prev ? prev->begin : 0, ", ", at, ")");
    DG_CHECK(e->begin == at, what, ": a hole of ", e->begin - at, " bytes in the data buffer before tensor '",
             e->name, "' (offset ", at, " to ", e->begin, ")");
    at = e->end;
    prev = e;
  }
  DG_CHECK(at == buf_size, what, ": ", buf_size - at, " trailing bytes after the last tensor's data (buffer is ",
           buf_size, " bytes, tensors cover ", at, ")");

  // Every size is now validated and bounded by the file: copy the data out.
  for (const Entry& e : entries) {
    const uint8_t* src = base + e.begin;
    if (e.dtype == DType::F16 || e.dtype == DType::BF16) {  // storage-only types become F32
      Tensor t = Tensor::empty(e.shape, DType::F32);
      float* p = t.data<float>();
      const int64_t numel = t.numel();
      for (int64_t i = 0; i < numel; ++i) {
        const uint16_t v = uint16_t(src[2 * i] | src[2 * i + 1] << 8);
        p[i] = e.dtype == DType::F16 ? f16_to_f32(v) : bf16_to_f32(v);
      }
      out.tensors[e.name] = t;
    } else {
      Tensor t = Tensor::empty(e.shape, e.dtype);
      if (e.end > e.begin) std::memcpy(t.raw(), src, e.end - e.begin);
      out.tensors[e.name] = t;
    }
  }
  return out;
}

SafeTensors load_safetensors(const std::string& path) {
  const std::string bytes = read_regular_file(path, "safetensors file");
  return parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "'" + path + "'");
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  // Write a sibling temp file, fsync it, rename it over `path`: a reader (or a crash)
  // sees the old file or the new one, never half of one.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DG_CHECK(fd >= 0, "cannot write '", tmp, "': ", std::strerror(errno));
  auto fail = [&](const char* doing) {
    const int e = errno;  // before close/unlink can change it
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(str(doing, " '", tmp, "' failed: ", std::strerror(e)));
  };
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("writing");
    done += size_t(w);
  }
  if (::fsync(fd) != 0) fail("fsync of");
  if (::close(fd) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw Error(str("closing '", tmp, "' failed: ", std::strerror(e)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    throw Error(str("cannot replace '", path, "' with '", tmp, "': ", std::strerror(e)));
  }
  // Make the rename itself durable (best effort: some filesystems refuse fsync on a dir).
  std::string dir = std::filesystem::path(path).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  std::vector<Tensor> cpu;  // contiguous CPU copies, in name order (std::map is sorted)
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {
    DG_CHECK(t.defined(), "save_safetensors '", path, "': tensor '", name, "' is undefined");
    DG_CHECK(name != "__metadata__", "save_safetensors '", path, "': '__metadata__' is not a tensor name");
    Tensor c = t.to(Device::CPU).contiguous();
    h[name] = {{"dtype", dtype_tag(c.dtype())}, {"shape", c.shape()}, {"data_offsets", {off, off + c.nbytes()}}};
    off += c.nbytes();
    cpu.push_back(c);
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string head;
  try {
    head = h.dump();  // throws on names or metadata that are not valid UTF-8
  } catch (const json::exception& e) {
    throw Error(str("save_safetensors '", path, "': cannot encode the header: ", e.what()));
  }
  head.append((8 - head.size() % 8) % 8, ' ');  // keep the data buffer 8-byte aligned

  std::string bytes(8, '\0');
  const uint64_t n = head.size();
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((n >> (8 * i)) & 0xff);
  bytes.reserve(8 + head.size() + off);
  bytes += head;
  for (const Tensor& c : cpu) bytes.append(static_cast<const char*>(c.raw()), c.nbytes());
  write_file_atomic(path, bytes);
}

}  // namespace dg
