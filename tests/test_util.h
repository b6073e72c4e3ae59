// Shared helpers for the doctest suite.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dg::test {

// Test cases that cannot run here (no GPU) call skip(): they print one line and are
// counted as skipped, not passed, in the final "tests:" line.
extern unsigned g_skipped;
inline void skip(const std::string& why) {
  ++g_skipped;
  std::printf("[skipped] %s: %s\n", doctest::getContextOptions()->currentTest
                                       ? doctest::getContextOptions()->currentTest->m_name : "?",
              why.c_str());
}

// A fresh, empty folder under the system temp dir, unique per process: <tmp>/dg_<group>_<pid>/<name>.
inline std::filesystem::path fresh_dir(const std::string& group, const std::string& name) {
  std::filesystem::path d = std::filesystem::temp_directory_path() / ("dg_" + group + "_" + std::to_string(::getpid())) / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

// A whole file's text ("" when it cannot be read).
inline std::string slurp(const std::filesystem::path& p) {
  std::ostringstream os;
  os << std::ifstream(p).rdbuf();
  return os.str();
}

struct Cli {
  int code;
  std::string out, err;
};
// The built CLI with `args` (a shell word list), its exit code, stdout and stderr (kept in
// fresh_dir(group, "cli<n>")).
inline Cli run_cli(const std::string& args, const std::string& group) {
  static int n = 0;
  const std::filesystem::path d = fresh_dir(group, "cli" + std::to_string(n++));
  const int rc = std::system((std::string(DG_BUILD_DIR) + "/tools/deltagrad " + args + " > " + (d / "out").string() +
                              " 2> " + (d / "err").string()).c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(d / "out"), slurp(d / "err")};
}

// max |a - b| / max(|b|, floor) over all elements
inline double max_rel_err(const Tensor& a, const Tensor& b, double floor = 1e-6) {
  REQUIRE(a.shape() == b.shape());
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]) / std::max(std::abs(y[i]), floor));
  return m;
}

// relative error of the whole tensor: ||a - b|| / ||b||
inline double rel_err(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

}  // namespace dg::test
