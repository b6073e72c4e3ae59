// Reads a delta's options from its JSON object: typed keys, remembered as used, so that every
// key left over is reported as unknown (with its path). Method parsers (method_registry.h) get one.
#pragma once
#include <set>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dg::peft {

struct OptionReader {
  const nlohmann::json& j;
  std::string where;
  std::set<std::string> used;

  template <class T>
  void get(const char* key, T& out) {
    used.insert(key);
    if (!j.contains(key)) return;
    // 1e300 has no int64 value: converting it was undefined behaviour (found by fuzz/fuzz_config)
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
      DG_CHECK(!j.at(key).is_number_float(), where, ": key '", key, "' must be an integer, got ", j.at(key).dump());
    if constexpr (std::is_unsigned_v<T> && !std::is_same_v<T, bool>)  // a seed of -1 would wrap to 2^64 - 1
      DG_CHECK(!j.at(key).is_number_integer() || j.at(key) >= 0, where, ": key '", key, "' must be >= 0, got ",
               j.at(key).dump());
    try {
      out = j.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      throw Error(str(where, ": key '", key, "' has the wrong type (", j.at(key).dump(), ")"));
    }
  }
  bool has(const char* key) const { return j.contains(key); }
  void finish() const {
    for (auto it = j.begin(); it != j.end(); ++it)
      DG_CHECK(used.count(it.key()), where, ": unknown key '", it.key(), "'");
  }
};

}  // namespace dg::peft
