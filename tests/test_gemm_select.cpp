// The choice of the CPU GEMM library: the pure rule on made-up timings, the cache file
// (round trip, other machines' lines kept, corrupt files ignored and rewritten), the
// calibration run itself (one correct, timed entry per built library), and the check that
// flags OpenBLAS running kernels older than the CPU.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/cpu/cpu_info.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_select.h"
#include "test_util.h"

using namespace dg;
using cpu::GemmTiming;

TEST_CASE("gemm choice: the fastest correct library; near ties go to the earlier one") {
  CHECK(cpu::choose_gemm({{"onednn", 0.010}, {"openblas", 0.030}, {"eigen", 0.020}}) == "onednn");
  CHECK(cpu::choose_gemm({{"onednn", 0.020}, {"openblas", 0.008}, {"eigen", 0.012}}) == "openblas");
  // within 3% of the fastest: the preference order decides, so noise does not flip it
  CHECK(cpu::choose_gemm({{"onednn", 0.0102}, {"openblas", 0.0100}}) == "onednn");
  CHECK(cpu::choose_gemm({{"onednn", 0.0102}, {"openblas", 0.0100}}, 0.0) == "openblas");
  CHECK(cpu::choose_gemm({{"onednn", 0.0110}, {"openblas", 0.0100}}) == "openblas");
  // wrong results, zero, negative, NaN or infinite times never win
  CHECK(cpu::choose_gemm({{"onednn", 0.001, false}, {"eigen", 0.020}}) == "eigen");
  CHECK(cpu::choose_gemm({{"onednn", 0.0}, {"openblas", -1.0}, {"onednn-mt", NAN}, {"x", INFINITY}, {"eigen", 0.5}}) ==
        "eigen");
  CHECK(cpu::choose_gemm({{"onednn", 0.001, false}}).empty());
  CHECK(cpu::choose_gemm({}).empty());
}

TEST_CASE("gemm choice: per kind of product, from the same timings") {
  // oneDNN fastest overall and on forward and heads; OpenBLAS on weight gradients; Eigen on input gradients
  const std::vector<GemmTiming> t = {{"onednn", 0.010, true, {0.001, 0.003, 0.005, 0.001}},
                                     {"openblas", 0.012, true, {0.002, 0.0032, 0.0025, 0.0043}},
                                     {"eigen", 0.020, true, {0.004, 0.002, 0.012, 0.002}}};
  CHECK(cpu::choose_gemm(t) == "onednn");
  CHECK(cpu::choose_gemm_per_kind(t, "onednn") == std::vector<std::string>{"onednn", "eigen", "openblas", "onednn"});
  // the overall winner keeps a kind unless another library is over 10% faster on it
  CHECK(cpu::choose_gemm_per_kind({{"onednn", 1, true, {0.0093, 1, 1, 1}}, {"openblas", 1, true, {0.0100, 2, 2, 2}}},
                                  "openblas") == std::vector<std::string>{"openblas", "onednn", "onednn", "onednn"});
  CHECK(cpu::choose_gemm_per_kind({{"onednn", 1, true, {0.0089, 1, 1, 1}}, {"openblas", 1, true, {0.0100, 2, 2, 2}}},
                                  "openblas") == std::vector<std::string>{"onednn", "onednn", "onednn", "onednn"});
  // wrong results never win a kind
  CHECK(cpu::choose_gemm_per_kind({{"onednn", 1, false, {0.001, 0.001, 0.001, 0.001}}, {"eigen", 1, true, {1, 1, 1, 1}}},
                                  "eigen") == std::vector<std::string>{"eigen", "eigen", "eigen", "eigen"});
  // timings without per-kind figures (or NaN) choose nothing for that kind
  CHECK(cpu::choose_gemm_per_kind({{"eigen", 1, true, {}}}, "eigen") == std::vector<std::string>{"", "", "", ""});
  // which kind a product is
  CHECK(cpu::gemm_kind(false, true, 1) == cpu::GemmKind::Forward);
  CHECK(cpu::gemm_kind(false, false, 1) == cpu::GemmKind::InputGrad);
  CHECK(cpu::gemm_kind(true, false, 1) == cpu::GemmKind::WeightGrad);
  CHECK(cpu::gemm_kind(true, true, 1) == cpu::GemmKind::WeightGrad);
  CHECK(cpu::gemm_kind(false, true, 96) == cpu::GemmKind::Heads);
  // the cache field: one name for every kind, or one per kind; anything else is malformed
  CHECK(cpu::parse_gemm_libs("eigen") == std::vector<cpu::GemmLib>(cpu::kGemmKinds, cpu::GemmLib::Eigen));
  CHECK(cpu::parse_gemm_libs("eigen,eigen,eigen,eigen").has_value());
  CHECK_FALSE(cpu::parse_gemm_libs("eigen,eigen,eigen").has_value());
  CHECK_FALSE(cpu::parse_gemm_libs("eigen,eigen,eigen,eigen,eigen").has_value());
  CHECK_FALSE(cpu::parse_gemm_libs("eigen,bogus,eigen,eigen").has_value());
  CHECK_FALSE(cpu::parse_gemm_libs("").has_value());
  // and in the cache file: "overall;kind,kind,kind,kind" round-trips, a malformed kind list is no entry
  const std::string path = (test::fresh_dir("gemm_select", "kinds") / "cpu_gemm.tsv").string();
  REQUIRE(cpu::write_gemm_cache(path, "machine K", {"eigen;eigen,eigen,eigen,eigen", "timings"}));
  CHECK(cpu::read_gemm_cache(path, "machine K")->library == "eigen;eigen,eigen,eigen,eigen");
  REQUIRE(cpu::write_gemm_cache(path, "machine K", {"eigen;eigen,bogus", "timings"}));
  CHECK_FALSE(cpu::read_gemm_cache(path, "machine K").has_value());
}

TEST_CASE("gemm choice: the backend's kernel choice round-trips (what a checkpoint records and a resume restores)") {
  Backend& be = backend(Device::CPU);
  const std::string saved = be.kernel_choice();
  CHECK(saved.rfind("gemm ", 0) == 0);
  REQUIRE(be.set_kernel_choice("gemm eigen;eigen,eigen,eigen,eigen"));
  CHECK(be.kernel_choice() == "gemm eigen;eigen,eigen,eigen,eigen");
  CHECK(cpu::gemm_lib_for(cpu::GemmKind::WeightGrad) == cpu::GemmLib::Eigen);
  CHECK(cpu::gemm_choice_reason().find("restored from a checkpoint") != std::string::npos);
  // malformed or unbuilt choices are refused and change nothing
  for (const char* bad : {"", "eigen", "gemm eigen", "gemm eigen;eigen,eigen", "gemm bogus;eigen,eigen,eigen,eigen",
                          "gemm eigen;eigen,eigen,eigen,bogus", "cuda whatever"})
    CHECK_FALSE(be.set_kernel_choice(bad));
  CHECK(be.kernel_choice() == "gemm eigen;eigen,eigen,eigen,eigen");
  REQUIRE(be.set_kernel_choice(saved));
  CHECK(be.kernel_choice() == saved);
}

TEST_CASE("gemm choice: the cache file round-trips, keeps other keys, survives corruption") {
  const std::filesystem::path dir = test::fresh_dir("gemm_select", "cache");
  const std::string path = (dir / "sub" / "cpu_gemm.tsv").string();  // the folder is created
  CHECK_FALSE(cpu::read_gemm_cache(path, "machine A").has_value());
  REQUIRE(cpu::write_gemm_cache(path, "machine A", {"onednn", "onednn 5 ms, eigen 9 ms"}));
  REQUIRE(cpu::write_gemm_cache(path, "machine B", {"eigen", "eigen 3 ms"}));
  auto a = cpu::read_gemm_cache(path, "machine A"), b = cpu::read_gemm_cache(path, "machine B");
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK(a->library == "onednn");
  CHECK(a->note == "onednn 5 ms, eigen 9 ms");
  CHECK(b->library == "eigen");
  // rewriting one key replaces its line only
  REQUIRE(cpu::write_gemm_cache(path, "machine A", {"openblas", "new"}));
  CHECK(cpu::read_gemm_cache(path, "machine A")->library == "openblas");
  CHECK(cpu::read_gemm_cache(path, "machine B")->library == "eigen");
  // tabs or newlines in a note cannot break the format
  REQUIRE(cpu::write_gemm_cache(path, "machine C", {"eigen", "two\tparts\nand a line"}));
  CHECK(cpu::read_gemm_cache(path, "machine C")->note == "two parts and a line");
  CHECK(cpu::read_gemm_cache(path, "machine A")->library == "openblas");
  // no temp files left behind
  for (const auto& e : std::filesystem::directory_iterator(dir / "sub")) CHECK(e.path().filename() == "cpu_gemm.tsv");

  // garbage, an unknown library name, a truncated line: read as no entry, then rewritten
  {
    std::ofstream f(path, std::ios::trunc | std::ios::binary);
    f << "machine A\tmkl\tfrom the future\nmachine B\n\x01\x02\xff garbage\tonednn";
  }
  CHECK_FALSE(cpu::read_gemm_cache(path, "machine A").has_value());
  CHECK_FALSE(cpu::read_gemm_cache(path, "machine B").has_value());
  REQUIRE(cpu::write_gemm_cache(path, "machine A", {"eigen", "again"}));
  CHECK(cpu::read_gemm_cache(path, "machine A")->library == "eigen");
  // a path that cannot be written (its parent is a file) is false, not an exception
  CHECK_FALSE(cpu::write_gemm_cache(path + "/below_a_file.tsv", "k", {"eigen", ""}));
  CHECK_FALSE(cpu::read_gemm_cache(path + "/below_a_file.tsv", "k").has_value());
}

TEST_CASE("gemm choice: the calibration times every built one-thread library and checks its results") {
  const std::vector<GemmTiming> t = cpu::calibrate_gemm(1);
  std::vector<std::string> libs;  // onednn-mt (oneDNN's own threads) is only ever forced
  for (const std::string& l : cpu::gemm_libraries())
    if (l != "onednn-mt") libs.push_back(l);
  REQUIRE(t.size() == libs.size());
  std::string line;
  for (size_t i = 0; i < t.size(); ++i) {
    CHECK(t[i].library == libs[i]);
    CHECK(t[i].ok);
    CHECK(t[i].seconds > 0);
    REQUIRE(t[i].per_kind.size() == size_t(cpu::kGemmKinds));  // one product per kind
    for (double k : t[i].per_kind) CHECK(k > 0);
    line.append(t[i].library).append(" ").append(std::to_string(t[i].seconds * 1e3)).append(" ms (per kind");
    for (double k : t[i].per_kind) line.append(" ").append(std::to_string(k * 1e3));
    line.append(")  ");
  }
  MESSAGE("calibration: ", line, "-> ", cpu::choose_gemm(t), "; in use: ", std::string(cpu::gemm_library()), " (",
          cpu::gemm_choice_reason(), ")");
  CHECK_FALSE(cpu::choose_gemm(t).empty());
  CHECK_FALSE(cpu::gemm_choice_reason().empty());
  // the key names this CPU and thread count, on one line
  const std::string key = cpu::gemm_cache_key();
  CHECK(key.find(cpu::cpu_identity(cpu::cpu_info())) != std::string::npos);
  CHECK(key.find("threads") != std::string::npos);
  CHECK(key.find('\t') == std::string::npos);
  CHECK(key.find('\n') == std::string::npos);
}

TEST_CASE("cpu info: OpenBLAS kernels older than the CPU are flagged") {
  CHECK(cpu::openblas_kernel_warning("Prescott", true, true).find("AVX-512") != std::string::npos);
  CHECK(cpu::openblas_kernel_warning("Prescott", true, false).find("AVX2") != std::string::npos);
  CHECK(cpu::openblas_kernel_warning("Sandybridge", true, false).find("Sandybridge") != std::string::npos);
  CHECK(cpu::openblas_kernel_warning("Haswell", true, true).find("AVX2") != std::string::npos);
  CHECK(cpu::openblas_kernel_warning("Prescott", false, false).empty());  // an old CPU: fitting kernels
  CHECK(cpu::openblas_kernel_warning("Haswell", true, false).empty());
  CHECK(cpu::openblas_kernel_warning("SkylakeX", true, true).empty());
  CHECK(cpu::openblas_kernel_warning("Zen", true, false).empty());
  CHECK(cpu::openblas_kernel_warning("", true, true).empty());  // no OpenBLAS
  const cpu::CpuInfo& c = cpu::cpu_info();
  MESSAGE("this CPU: ", cpu::cpu_identity(c), "; ", cpu::isa_summary(c), "; OpenBLAS core '", cpu::openblas_corename(),
          "'");
  CHECK_FALSE(cpu::isa_summary(c).empty());
  if (c.avx512f) CHECK(c.avx2);  // every AVX-512 CPU has AVX2
}
