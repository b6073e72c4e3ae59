#include "core/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dg {

using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // 100 MB of JSON is not a real header

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

// Duplicate keys are silently merged by nlohmann's DOM parser: catch them in a SAX pass
// over the top-level object first.
std::string find_duplicate_key(const std::string& text) {
  std::string dup;
  int depth = 0;
  std::set<std::string> seen;
  json::parser_callback_t cb = [&](int d, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && d == 1) {
      std::string k = parsed.get<std::string>();
      if (!seen.insert(k).second && dup.empty()) dup = k;
    }
    (void)depth;
    return true;
  };
  json discarded = json::parse(text, cb, false);
  (void)discarded;
  return dup;
}

}  // namespace

SafeTensors parse_safetensors(const uint8_t* data, size_t size, const std::string& what) {
  DG_CHECK(size >= 8, what, ": file is ", size, " bytes, too short for a safetensors header (8-byte length)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | data[i];
  DG_CHECK(n <= kMaxHeader && n <= size - 8, what, ": header length ", n, " exceeds the file (", size,
           " bytes) or the 100 MB limit; the file is truncated or not safetensors");
  const std::string text(reinterpret_cast<const char*>(data + 8), size_t(n));
  json h = json::parse(text, nullptr, false);
  DG_CHECK(!h.is_discarded(), what, ": header is not valid JSON");
  DG_CHECK(h.is_object(), what, ": header is not a JSON object");
  std::string dup = find_duplicate_key(text);
  DG_CHECK(dup.empty(), what, ": duplicate tensor name '", dup, "' in the header");

  const uint8_t* base = data + 8 + n;
  const uint64_t buf_size = size - 8 - n;
  SafeTensors out;
  struct Span { uint64_t begin, end; std::string name; };
  std::vector<Span> spans;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      DG_CHECK(e.is_object(), what, ": __metadata__ must be an object of strings");
      for (auto m = e.begin(); m != e.end(); ++m) {
        DG_CHECK(m.value().is_string(), what, ": __metadata__ entry '", m.key(), "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = what + ": tensor '" + name + "'";
    DG_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"), where,
             ": entry must be an object with dtype, shape and data_offsets");
    DG_CHECK(e["dtype"].is_string(), where, ": dtype is not a string");
    DType dt;
    DG_CHECK(parse_dtype(e["dtype"].get<std::string>(), dt), where, ": unsupported dtype '",
             e["dtype"].get<std::string>(), "' (supported: F32, F64, F16, BF16, I64, I32)");
    DG_CHECK(e["shape"].is_array(), where, ": shape is not an array");
    Shape shape;
    uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      DG_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where,
               ": shape entries must be non-negative integers, got ", e["shape"].dump());
      const uint64_t v = d.get<uint64_t>();
      DG_CHECK(v == 0 || numel <= (uint64_t(1) << 48) / v, where, ": shape ", e["shape"].dump(), " is too large");
      numel *= v;
      shape.push_back(int64_t(v));
    }
    const json& off = e["data_offsets"];
    DG_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
             ": data_offsets must be [begin, end] of non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    DG_CHECK(b <= en, where, ": data_offsets [", b, ", ", en, "] are reversed");
    DG_CHECK(en <= buf_size, where, ": data_offsets [", b, ", ", en, "] exceed the data buffer of ", buf_size,
             " bytes (file truncated?)");
    DG_CHECK(en - b == numel * dtype_size(dt), where, ": ", en - b, " bytes for shape ", shape_str(shape), " of ",
             e["dtype"].get<std::string>(), ", expected ", numel * dtype_size(dt));
    spans.push_back({b, en, name});
    // Read into a tensor; half types become F32.
    const uint8_t* src = base + b;
    if (dt == DType::F16 || dt == DType::BF16) {
      Tensor t = Tensor::empty(shape, DType::F32);
      float* p = t.data<float>();
      for (uint64_t i = 0; i < numel; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        p[i] = dt == DType::F16 ? f16_to_f32(v) : bf16_to_f32(v);
      }
      out.tensors[name] = t;
    } else {
      Tensor t = Tensor::empty(shape, dt);
      if (numel) std::memcpy(t.raw(), src, en - b);
      out.tensors[name] = t;
    }
  }
  // The buffer must be covered exactly: no overlaps, no holes (as the format requires).
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  uint64_t at = 0;
  for (const Span& s : spans) {
    DG_CHECK(s.begin >= at, what, ": tensor '", s.name, "' overlaps the previous tensor's data (offset ", s.begin,
             " < ", at, ")");
    DG_CHECK(s.begin == at, what, ": a hole of ", s.begin - at, " bytes before tensor '", s.name, "'");
    at = s.end;
  }
  DG_CHECK(at == buf_size, what, ": ", buf_size - at, " trailing bytes after the last tensor's data");
  return out;
}

SafeTensors load_safetensors(const std::string& path) {
  std::error_code ec;
  DG_CHECK(std::filesystem::is_regular_file(path, ec), "cannot open '", path, "': no such file");
  const uint64_t size = std::filesystem::file_size(path, ec);
  DG_CHECK(!ec, "cannot read the size of '", path, "': ", ec.message());
  std::ifstream f(path, std::ios::binary);
  DG_CHECK(f, "cannot open '", path, "'");
  std::vector<uint8_t> bytes(size);
  f.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
  DG_CHECK(uint64_t(f.gcount()) == size, "'", path, "': read ", f.gcount(), " of ", size, " bytes");
  return parse_safetensors(bytes.data(), bytes.size(), "'" + path + "'");
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  DG_CHECK(fd >= 0, "cannot write '", tmp, "': ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw Error(str("writing '", tmp, "' failed: ", std::strerror(e)));
    }
    done += size_t(w);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || std::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error(str("cannot replace '", path, "': ", std::strerror(e)));
  }
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  std::vector<Tensor> cpu;  // in name order (std::map is sorted)
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
  std::string head = h.dump();
  head.append((8 - head.size() % 8) % 8, ' ');
  std::string bytes(8, '\0');
  const uint64_t n = head.size();
  for (int i = 0; i < 8; ++i) bytes[size_t(i)] = char((n >> (8 * i)) & 0xff);
  bytes += head;
  bytes.reserve(bytes.size() + off);
  for (const Tensor& c : cpu) bytes.append(static_cast<const char*>(c.raw()), c.nbytes());
  write_file_atomic(path, bytes);
}

}  // namespace dg
