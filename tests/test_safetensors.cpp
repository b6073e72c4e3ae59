// safetensors: round trips, half-precision loads, a byte-exact file, and one test per kind
// of corrupt file (each must raise a dg::Error naming the file, the tensor and the problem).
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/safetensors.h"
#include "tests/test_util.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test, removed afterwards.
struct TmpDir {
  fs::path path;
  TmpDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("dg_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TmpDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& f) const { return (path / f).string(); }
};

// Little-endian byte builders, so the expected files do not depend on the host.
std::string le(uint64_t v, int nbytes) {
  std::string s;
  for (int i = 0; i < nbytes; ++i) s += char((v >> (8 * i)) & 0xff);
  return s;
}
std::string f32s(std::initializer_list<float> v) {
  std::string s;
  for (float f : v) s += le(std::bit_cast<uint32_t>(f), 4);
  return s;
}
// A file from a header JSON string and a data blob.
std::string raw_file(const std::string& header, const std::string& data) { return le(header.size(), 8) + header + data; }

SafeTensors parse(const std::string& bytes) {
  return parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "test.safetensors");
}
// The dg::Error message parsing `bytes` raises ("(no error)" if it loads; other exception
// types propagate and fail the test).
std::string parse_error(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
bool has(const std::string& msg, const std::string& part) { return msg.find(part) != std::string::npos; }

// Check that a header + data is refused and that the message names each of `parts`.
void refuse(const std::string& header, const std::string& data, std::initializer_list<const char*> parts) {
  const std::string msg = parse_error(raw_file(header, data));
  INFO("header: ", header, "\nmessage: ", msg);
  CHECK(has(msg, "test.safetensors"));
  for (const char* p : parts) CHECK(has(msg, p));
}

const std::string kTwo = f32s({1, 2});  // 8 bytes: a valid F32[2] payload

}  // namespace

TEST_CASE("safetensors: round trip of F32, F64, I64, I32, views, a scalar, an empty tensor and metadata") {
  TmpDir d;
  const std::string p = d / "rt.safetensors";
  Tensor a = Tensor::from_vector(std::vector<float>{1, -0.0f, 3, std::numeric_limits<float>::infinity(), 1e-40f, 6},
                                 {2, 3});
  Tensor at = view::transpose(a, 0, 1);  // non-contiguous
  REQUIRE_FALSE(at.is_contiguous());
  Tensor sl = view::slice(Tensor::arange(10), 0, 3, 9, 2);  // offset 3, stride 2: {3, 5, 7}
  Tensor f64 = Tensor::from_vector(std::vector<double>{1.5, -2.25, 1e300}, {3});
  Tensor i64 = Tensor::from_vector(std::vector<int64_t>{std::numeric_limits<int64_t>::min(), -8, (1ll << 53) + 1}, {3});
  Tensor i32 = Tensor::from_vector(std::vector<int64_t>{7, -8, 2147483647}, {3, 1}).to(DType::I32);
  save_safetensors(p,
                   {{"a", a}, {"at", at}, {"sl", sl}, {"f64", f64}, {"i64", i64}, {"i32", i32},
                    {"s", Tensor::scalar(3.5)}, {"empty", Tensor::zeros({0, 4})}},
                   {{"k", "v"}, {"json", "{\"x\": [1, 2]}"}, {"unicode", "ünï"}});

  SafeTensors st = load_safetensors(p);
  CHECK(st.tensors.size() == 8);
  Tensor la = st.tensors.at("a");
  CHECK(la.dtype() == DType::F32);
  CHECK(la.shape() == Shape{2, 3});
  CHECK(std::memcmp(la.data<float>(), a.data<float>(), 6 * 4) == 0);  // bit-exact, -0 and subnormal too
  CHECK(st.tensors.at("at").shape() == Shape{3, 2});
  CHECK(st.tensors.at("at").to_vector() == at.to_vector());
  CHECK(st.tensors.at("at").is_contiguous());
  CHECK(st.tensors.at("sl").to_vector() == std::vector<double>{3, 5, 7});
  CHECK(st.tensors.at("f64").dtype() == DType::F64);
  CHECK(st.tensors.at("f64").to_vector() == f64.to_vector());
  CHECK(st.tensors.at("i64").dtype() == DType::I64);
  const int64_t* pi = st.tensors.at("i64").data<int64_t>();
  CHECK(pi[0] == std::numeric_limits<int64_t>::min());
  CHECK(pi[2] == (1ll << 53) + 1);
  CHECK(st.tensors.at("i32").dtype() == DType::I32);
  CHECK(st.tensors.at("i32").shape() == Shape{3, 1});
  CHECK(st.tensors.at("i32").to_vector() == std::vector<double>{7, -8, 2147483647});
  CHECK(st.tensors.at("s").dim() == 0);
  CHECK(st.tensors.at("s").item() == 3.5);
  CHECK(st.tensors.at("empty").shape() == Shape{0, 4});
  CHECK(st.tensors.at("empty").numel() == 0);
  CHECK(st.metadata == std::map<std::string, std::string>{{"k", "v"}, {"json", "{\"x\": [1, 2]}"}, {"unicode", "ünï"}});
  // layout: header length a multiple of 8, then exactly the packed payloads (no padding)
  const std::string bytes = read_all(p);
  REQUIRE(bytes.size() >= 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | uint8_t(bytes[size_t(i)]);
  CHECK(n % 8 == 0);
  CHECK(bytes.size() == 8 + n + (24 + 24 + 12 + 24 + 24 + 12 + 4 + 0));  // a at sl f64 i64 i32 s empty
}

TEST_CASE("safetensors: an empty file round trips") {
  TmpDir d;
  save_safetensors(d / "e.safetensors", {});
  CHECK(read_all(d / "e.safetensors") == le(8, 8) + "{}      ");
  SafeTensors st = load_safetensors(d / "e.safetensors");
  CHECK(st.tensors.empty());
  CHECK(st.metadata.empty());
}

TEST_CASE("safetensors: byte-exact file") {
  TmpDir d;
  const std::string p = d / "exact.safetensors";
  save_safetensors(p,
                   {{"b", Tensor::from_vector(std::vector<float>{2}, {1})},
                    {"a", Tensor::from_vector(std::vector<int64_t>{1, -1}, {2}).to(DType::I32)}},
                   {{"k", "v"}});
  // Keys in sorted order (nlohmann sorts objects); data in tensor-name order: a then b.
  std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"data_offsets":[0,8],"dtype":"I32","shape":[2]},)"
      R"("b":{"data_offsets":[8,12],"dtype":"F32","shape":[1]}})";
  REQUIRE(header.size() == 133);
  header += "   ";  // padded with spaces to 136, a multiple of 8
  const std::string data("\x01\x00\x00\x00\xff\xff\xff\xff\x00\x00\x00\x40", 12);  // i32 1, -1; f32 2.0
  const std::string want = std::string("\x88\0\0\0\0\0\0\0", 8) + header + data;
  CHECK(read_all(p) == want);
}

TEST_CASE("safetensors: F16 and BF16 load as F32") {
  // f16: 1.0, -2.5, 65504 (max), 2^-24 (smallest subnormal), 1023 * 2^-24 (largest subnormal), -0, +inf, -inf
  const uint16_t h[8] = {0x3c00, 0xc100, 0x7bff, 0x0001, 0x03ff, 0x8000, 0x7c00, 0xfc00};
  // bf16: 1.0, -2.5, 2^-133 (smallest subnormal), largest finite
  const uint16_t b[4] = {0x3f80, 0xc020, 0x0001, 0x7f7f};
  std::string data;
  for (uint16_t v : b) data += le(v, 2);
  for (uint16_t v : h) data += le(v, 2);
  // bf16 first in the buffer, entries out of order in the header, header padded with spaces
  SafeTensors st = parse(raw_file(R"({"h":{"dtype":"F16","shape":[2,4],"data_offsets":[8,24]},)"
                                  R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}}   )",
                                  data));
  Tensor th = st.tensors.at("h"), tb = st.tensors.at("b");
  CHECK(th.dtype() == DType::F32);
  CHECK(th.shape() == Shape{2, 4});
  std::vector<double> hv = th.to_vector();
  CHECK(hv[0] == 1.0);
  CHECK(hv[1] == -2.5);
  CHECK(hv[2] == 65504.0);
  CHECK(hv[3] == std::ldexp(1.0, -24));
  CHECK(hv[4] == 1023 * std::ldexp(1.0, -24));
  CHECK(hv[5] == 0.0);
  CHECK(std::signbit(hv[5]));
  CHECK(hv[6] == std::numeric_limits<double>::infinity());
  CHECK(hv[7] == -std::numeric_limits<double>::infinity());
  CHECK(tb.dtype() == DType::F32);
  std::vector<double> bv = tb.to_vector();
  CHECK(bv[0] == 1.0);
  CHECK(bv[1] == -2.5);
  CHECK(bv[2] == std::ldexp(1.0, -133));
  CHECK(bv[3] == std::ldexp(255.0, 120));  // 0x7f7f: (1 + 127/128) * 2^127 = 255 * 2^120
}

TEST_CASE("safetensors: refuses a truncated file") {
  CHECK(has(parse_error("abc"), "too short"));
  CHECK(has(parse_error("abc"), "test.safetensors"));
  CHECK(has(parse_error(""), "too short"));
  // a real file cut inside its data
  TmpDir d;
  const std::string p = d / "trunc.safetensors";
  save_safetensors(p, {{"w", Tensor::ones({16, 16})}});
  fs::resize_file(p, fs::file_size(p) - 100);
  CHECK_THROWS_WITH_AS(load_safetensors(p), doctest::Contains("tensor 'w': data_offsets [0, 1024] exceed the data buffer"),
                       Error);
  // ... and inside its header
  fs::resize_file(p, 20);
  CHECK_THROWS_WITH_AS(load_safetensors(p), doctest::Contains("exceeds the file (20 bytes"), Error);
}

TEST_CASE("safetensors: refuses a header length beyond the file or absurd") {
  CHECK(has(parse_error(le(100, 8) + "{}"), "header length 100 exceeds the file"));
  CHECK(has(parse_error(le(0xffffffffffffffffull, 8) + "{}"), "exceeds the 100 MB limit"));
  CHECK(has(parse_error(le(200ull << 20, 8) + "{}"), "exceeds the 100 MB limit"));
}

TEST_CASE("safetensors: refuses a header that is not a JSON object") {
  refuse("{not json", "", {"not valid JSON"});
  refuse("", "", {"not valid JSON"});
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", kTwo, {"not valid JSON"});  // unclosed
  refuse("[1,2]", "", {"not a JSON object", "array"});
  refuse("\"str\"", "", {"not a JSON object"});
}

TEST_CASE("safetensors: refuses malformed entries") {
  refuse(R"({"t":5})", "", {"tensor 't'", "must be an object"});
  refuse(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", kTwo, {"tensor 't'", "no \"dtype\""});
  refuse(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", kTwo, {"tensor 't'", "no \"shape\""});
  refuse(R"({"t":{"dtype":"F32","shape":[2]}})", kTwo, {"tensor 't'", "no \"data_offsets\""});
  refuse(R"({"t":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", kTwo, {"tensor 't'", "dtype must be a string"});
  refuse(R"({"t":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", kTwo, {"tensor 't'", "shape must be an array"});
  refuse(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", kTwo, {"tensor 't'", "non-negative integers"});
  refuse(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", kTwo, {"tensor 't'", "non-negative integers"});
  refuse(R"({"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", kTwo, {"tensor 't'", "non-negative integers"});
  refuse(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", kTwo,
         {"tensor 't'", "too large"});
  refuse(R"({"t":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", "", {"too large"});
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", kTwo, {"tensor 't'", "[begin, end]"});
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", kTwo, {"[begin, end]"});
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}})", kTwo, {"[begin, end]"});
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", kTwo, {"[begin, end]"});
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", kTwo, {"tensor 't'", "reversed"});
}

TEST_CASE("safetensors: refuses offsets beyond the data buffer") {
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f32s({1}),
         {"tensor 't'", "[0, 8] exceed the data buffer of 4 bytes"});
  refuse(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}})", kTwo, {"exceed the data buffer"});
}

TEST_CASE("safetensors: refuses a byte count that does not match the shape") {
  refuse(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", kTwo,
         {"tensor 't'", "hold 8 bytes", "needs 12 bytes"});
  refuse(R"({"t":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", kTwo, {"F64", "needs 16 bytes"});
}

TEST_CASE("safetensors: refuses unsupported dtypes by name") {
  for (const char* dt : {"U8", "BOOL", "I8", "I16", "U16", "F8_E4M3", "f32"}) {
    const std::string header =
        std::string(R"({"t":{"dtype":")") + dt + R"(","shape":[8],"data_offsets":[0,8]}})";
    refuse(header, kTwo, {"tensor 't'", (std::string("unsupported dtype '") + dt + "'").c_str(), "F32, F64"});
  }
}

TEST_CASE("safetensors: refuses overlapping data") {
  refuse(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
         kTwo, {"tensor 'b'", "overlaps tensor 'a'"});
  // many entries aliasing one span are refused before anything is allocated
  std::string header = "{";
  for (int i = 0; i < 1000; ++i) header += "\"t" + std::to_string(i) + R"(":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)";
  header.back() = '}';
  refuse(header, kTwo, {"overlaps"});
}

TEST_CASE("safetensors: refuses holes and trailing bytes in the data buffer") {
  refuse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", kTwo, {"hole of 4 bytes", "tensor 'a'"});
  refuse(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
         f32s({1, 2, 3}), {"hole of 4 bytes", "tensor 'b'"});
  refuse(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", kTwo + "xx", {"2 trailing bytes"});
  refuse("{}", "x", {"1 trailing bytes"});
}

TEST_CASE("safetensors: refuses duplicate names and keys") {
  const std::string e = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  refuse("{" + e + "," + e + "}", kTwo, {"duplicate tensor name 't'"});
  refuse(R"({"t":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})", kTwo, {"duplicate key 'dtype'"});
  refuse(R"({"__metadata__":{"k":"a","k":"b"}})", "", {"duplicate key 'k'"});
  refuse(R"({"__metadata__":{},"__metadata__":{}})", "", {"duplicate tensor name '__metadata__'"});
  // the same key in different objects is fine
  SafeTensors st = parse(raw_file(R"({"__metadata__":{"dtype":"x"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                  kTwo));
  CHECK(st.tensors.size() == 2);
  CHECK(st.metadata.at("dtype") == "x");
}

TEST_CASE("safetensors: refuses __metadata__ that is not string to string") {
  refuse(R"({"__metadata__":[1]})", "", {"__metadata__ must be an object of strings"});
  refuse(R"({"__metadata__":"x"})", "", {"__metadata__ must be an object of strings"});
  refuse(R"({"__metadata__":{"k":1}})", "", {"__metadata__ entry 'k' is not a string"});
  refuse(R"({"__metadata__":{"k":{"a":"b"}}})", "", {"entry 'k' is not a string"});
}

TEST_CASE("safetensors: load reports missing files and directories") {
  TmpDir d;
  CHECK_THROWS_WITH_AS(load_safetensors(d / "nope.safetensors"), doctest::Contains("cannot open"), Error);
  CHECK_THROWS_WITH_AS(load_safetensors(d / "nope.safetensors"), doctest::Contains("no such file"), Error);
  CHECK_THROWS_WITH_AS(load_safetensors(d.path.string()), doctest::Contains("not a regular file"), Error);
  // load errors name the path
  std::ofstream(d / "bad.safetensors") << "abc";
  CHECK_THROWS_WITH_AS(load_safetensors(d / "bad.safetensors"), doctest::Contains("bad.safetensors"), Error);
}

TEST_CASE("safetensors: save refuses names it cannot store") {
  TmpDir d;
  CHECK_THROWS_WITH_AS(save_safetensors(d / "x.safetensors", {{"__metadata__", Tensor::ones({1})}}),
                       doctest::Contains("not a tensor name"), Error);
  CHECK_THROWS_WITH_AS(save_safetensors(d / "x.safetensors", {{"u", Tensor()}}), doctest::Contains("'u' is undefined"),
                       Error);
  CHECK_THROWS_AS(save_safetensors(d / "x.safetensors", {{"\xff\xfe", Tensor::ones({1})}}), Error);  // not UTF-8
  CHECK_FALSE(fs::exists(d / "x.safetensors"));
}

TEST_CASE("safetensors: writes are atomic and leave no temporary files") {
  TmpDir d;
  const std::string p = d / "x.safetensors";
  auto tmp_files = [&] {
    int n = 0;
    for (const auto& e : fs::directory_iterator(d.path)) n += has(e.path().filename().string(), ".tmp.");
    return n;
  };
  save_safetensors(p, {{"w", Tensor::ones({4})}}, {{"v", "1"}});
  save_safetensors(p, {{"w", Tensor::full({2, 2}, 2.0)}, {"z", Tensor::zeros({1}, DType::I64)}}, {{"v", "2"}});
  SafeTensors st = load_safetensors(p);
  CHECK(st.tensors.size() == 2);
  CHECK(st.tensors.at("w").shape() == Shape{2, 2});
  CHECK(st.tensors.at("w").to_vector() == std::vector<double>{2, 2, 2, 2});
  CHECK(st.metadata.at("v") == "2");
  CHECK(tmp_files() == 0);
  int entries = 0;
  for (const auto& e : fs::directory_iterator(d.path)) entries += e.is_regular_file();
  CHECK(entries == 1);

  // A write into a missing directory fails cleanly.
  CHECK_THROWS_WITH_AS(save_safetensors(d / "missing/y.safetensors", {{"w", Tensor::ones({1})}}),
                       doctest::Contains("cannot write"), Error);
  // A rename that fails (the target is a non-empty directory) removes the temp file.
  fs::create_directories(d.path / "blocker.safetensors" / "inside");
  CHECK_THROWS_WITH_AS(save_safetensors(d / "blocker.safetensors", {{"w", Tensor::ones({1})}}),
                       doctest::Contains("cannot replace"), Error);
  CHECK(tmp_files() == 0);
  CHECK(load_safetensors(p).metadata.at("v") == "2");  // the good file is untouched
}
