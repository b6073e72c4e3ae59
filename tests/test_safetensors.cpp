// safetensors: round trips, half-precision loads, byte-exact layout, and one test per
// kind of corrupt file (each must raise a dg::Error naming what is wrong).
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "tests/test_util.h"

using namespace dg;
namespace fs = std::filesystem;

namespace {
fs::path tmpdir() {
  fs::path d = fs::temp_directory_path() / ("dg_st_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}
// A file from a header JSON string and a data blob.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return out + header + data;
}
SafeTensors parse(const std::string& bytes) {
  return parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "test.safetensors");
}
std::string f32_bytes(std::vector<float> v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }
}  // namespace

TEST_CASE("safetensors: round trip of every stored dtype, views, scalars, empty tensors and metadata") {
  fs::path p = tmpdir() / "rt.safetensors";
  Tensor a = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor at = view::transpose(a, 0, 1);  // non-contiguous
  Tensor d = Tensor::from_vector(std::vector<double>{1.5, -2.25}, {2});
  Tensor i64 = Tensor::from_vector(std::vector<int64_t>{7, -8, 9}, {3});
  Tensor i32 = i64.to(DType::I32);
  save_safetensors(p.string(), {{"a", a}, {"at", at}, {"d", d}, {"i64", i64}, {"i32", i32},
                                {"s", Tensor::scalar(3.5)}, {"empty", Tensor::zeros({0, 4})}},
                   {{"k", "v"}, {"peft", "{\"x\": 1}"}});
  SafeTensors st = load_safetensors(p.string());
  CHECK(st.tensors.size() == 7);
  CHECK(st.tensors["a"].to_vector() == a.to_vector());
  CHECK(st.tensors["at"].shape() == Shape{3, 2});
  CHECK(st.tensors["at"].to_vector() == std::vector<double>{1, 4, 2, 5, 3, 6});
  CHECK(st.tensors["d"].dtype() == DType::F64);
  CHECK(st.tensors["d"].to_vector() == d.to_vector());
  CHECK(st.tensors["i64"].dtype() == DType::I64);
  CHECK(st.tensors["i32"].dtype() == DType::I32);
  CHECK(st.tensors["i32"].to_vector() == std::vector<double>{7, -8, 9});
  CHECK(st.tensors["s"].dim() == 0);
  CHECK(st.tensors["s"].item() == 3.5);
  CHECK(st.tensors["empty"].shape() == Shape{0, 4});
  CHECK(st.metadata["k"] == "v");
  CHECK(st.metadata["peft"] == "{\"x\": 1}");
}

TEST_CASE("safetensors: byte-exact layout") {
  fs::path p = tmpdir() / "exact.safetensors";
  save_safetensors(p.string(), {{"b", Tensor::from_vector(std::vector<float>{2}, {1})},
                                {"a", Tensor::from_vector(std::vector<float>{1, 3}, {2})}});
  std::ifstream f(p, std::ios::binary);
  std::string got((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::string header = R"({"a":{"data_offsets":[0,8],"dtype":"F32","shape":[2]},"b":{"data_offsets":[8,12],"dtype":"F32","shape":[1]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  CHECK(got == raw_file(header, f32_bytes({1, 3, 2})));
}

TEST_CASE("safetensors: F16 and BF16 load as F32") {
  // f16: 1.0 = 0x3c00, -2.5 = 0xc100, 65504 = 0x7bff, smallest subnormal 0x0001
  uint16_t h[4] = {0x3c00, 0xc100, 0x7bff, 0x0001};
  uint16_t b[2] = {0x3f80, 0xc020};  // bf16: 1.0, -2.5
  std::string data(reinterpret_cast<const char*>(h), 8);
  data.append(reinterpret_cast<const char*>(b), 4);
  SafeTensors st = parse(raw_file(
      R"({"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}})",
      data));
  CHECK(st.tensors["h"].dtype() == DType::F32);
  std::vector<double> hv = st.tensors["h"].to_vector();
  CHECK(hv[0] == 1.0);
  CHECK(hv[1] == -2.5);
  CHECK(hv[2] == 65504.0);
  CHECK(hv[3] == doctest::Approx(5.960464477539063e-08));
  CHECK(st.tensors["b"].to_vector() == std::vector<double>{1.0, -2.5});
}

TEST_CASE("safetensors: corrupt files are refused with a clear error") {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string two = f32_bytes({1, 2});
  auto refuse = [](const std::string& bytes, const char* what) {
    CHECK_THROWS_WITH_AS(parse(bytes), doctest::Contains(what), Error);
  };
  refuse("abc", "too short");
  refuse(std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8) + "{}", "exceeds the file");
  refuse(raw_file("{not json", ""), "not valid JSON");
  refuse(raw_file("[1,2]", ""), "not a JSON object");
  refuse(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f32_bytes({1})), "exceed the data buffer");
  refuse(raw_file(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", two), "expected 12");
  refuse(raw_file(R"({"t":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", two), "unsupported dtype 'U8'");
  refuse(raw_file(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", two), "non-negative integers");
  refuse(raw_file(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", two), "reversed");
  refuse(raw_file(R"({"t":{"dtype":"F32","shape":[2]}})", two), "data_offsets");
  refuse(raw_file("{" + ok_entry + "," + ok_entry + "}", two), "duplicate tensor name 't'");
  refuse(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  two),
         "overlaps");
  refuse(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", two), "hole of 4 bytes");
  refuse(raw_file("{" + ok_entry + "}", two + "xx"), "trailing bytes");
  refuse(raw_file(R"({"__metadata__":{"k":1}})", ""), "not a string");
  refuse(raw_file(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", two), "too large");
  CHECK_THROWS_WITH_AS(load_safetensors("/nonexistent/x.safetensors"), doctest::Contains("no such file"), Error);
}

TEST_CASE("safetensors: a truncated real file is refused") {
  fs::path p = tmpdir() / "trunc.safetensors";
  save_safetensors(p.string(), {{"w", Tensor::ones({16, 16})}});
  fs::resize_file(p, fs::file_size(p) - 100);
  CHECK_THROWS_WITH_AS(load_safetensors(p.string()), doctest::Contains("exceed the data buffer"), Error);
}

TEST_CASE("safetensors: writes are atomic and leave no temporary files") {
  fs::path d = tmpdir() / "atomic";
  fs::create_directories(d);
  fs::path p = d / "x.safetensors";
  save_safetensors(p.string(), {{"w", Tensor::ones({4})}});
  save_safetensors(p.string(), {{"w", Tensor::full({4}, 2.0)}});
  CHECK(load_safetensors(p.string()).tensors["w"].to_vector() == std::vector<double>{2, 2, 2, 2});
  int files = 0;
  for (const auto& e : fs::directory_iterator(d)) files += 1 + 0 * int(e.path().string().size());
  CHECK(files == 1);
  // a failed write (unwritable directory) leaves the old file untouched
  CHECK_THROWS_AS(save_safetensors((d / "missing_dir" / "y.safetensors").string(), {{"w", Tensor::ones({1})}}), Error);
}
