// A small command-line parser: --key value and --flag, with the allowed options listed
// per command so an unknown option is one clear line and exit code 2.
#pragma once
#include <charconv>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"

namespace dg::cli {

struct UsageError : Error {
  using Error::Error;
};

struct Args {
  std::map<std::string, std::string> opts;
  std::vector<std::string> positional;
  bool has(const std::string& k) const { return opts.count(k) > 0; }
  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = opts.find(k);
    return it == opts.end() ? def : it->second;
  }
  std::string need(const std::string& k) const {
    auto it = opts.find(k);
    if (it == opts.end()) throw UsageError(str("missing required option --", k));
    return it->second;
  }
  double num(const std::string& k, double def) const {
    auto it = opts.find(k);
    if (it == opts.end()) return def;
    try {
      size_t used = 0;
      double v = std::stod(it->second, &used);
      if (used != it->second.size()) throw std::invalid_argument("");
      return v;
    } catch (const std::exception&) {
      throw UsageError(str("option --", k, ": '", it->second, "' is not a number"));
    }
  }
  // A comma-separated list ("a,b,c"; empty items dropped), or `def` when the option is absent.
  std::vector<std::string> list(const std::string& k, const std::string& def = "") const {
    std::vector<std::string> out;
    for (std::string g = get(k, def), rest; !g.empty(); g = rest) {
      const size_t c = g.find(',');
      rest = c == std::string::npos ? "" : g.substr(c + 1);
      if (c != 0) out.push_back(g.substr(0, c));
    }
    return out;
  }
  // A whole number in [lo, hi]: "--seed -1" was stored as 18446744073709551615 and "--epochs 1.5"
  // silently became 1.
  int64_t integer(const std::string& k, int64_t def, int64_t lo, int64_t hi = INT64_MAX) const {
    auto it = opts.find(k);
    if (it == opts.end()) return def;
    const std::string& v = it->second;
    int64_t x = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size() || x < lo || x > hi)
      throw UsageError(str("option --", k, ": '", v, "' is not a whole number ",
                           hi == INT64_MAX ? str(">= ", lo) : str("in ", lo, "..", hi)));
    return x;
  }
};

// `flags` take no value; `valued` take one.
inline Args parse_args(int argc, char** argv, int first, const std::set<std::string>& valued,
                       const std::set<std::string>& flags = {}) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      std::string k = s.substr(2);
      if (flags.count(k)) {
        a.opts[k] = "1";
      } else if (valued.count(k)) {
        if (i + 1 >= argc) throw UsageError(str("option --", k, " needs a value"));
        a.opts[k] = argv[++i];
      } else {
        throw UsageError(str("unknown option --", k));
      }
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

}  // namespace dg::cli
