// Reading Hugging Face peft's adapter folder for the methods' hf_import (method_registry.h):
// adapter_config.json's options, with errors that name the file and key, and the tensors of
// adapter_model.safetensors grouped by module ("base_model.model.<module>.<suffix>").
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "peft/method_registry.h"

namespace dg::peft {

std::string hf_config_file(const HfAdapter& a);   // "<dir>/adapter_config.json"
std::string hf_tensors_file(const HfAdapter& a);  // "<dir>/adapter_model.safetensors"

// adapter_config.json's `key`, or `dflt` when absent or null; a wrong type names the file and key.
template <class T>
T hf_option(const HfAdapter& a, const char* key, T dflt) {
  if (!a.config.contains(key) || a.config.at(key).is_null()) return dflt;
  try {
    return a.config.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(str("import-peft: '", hf_config_file(a), "': '", key, "' has the wrong type (",
                    a.config.at(key).dump(), ")"));
  }
}

// A peft option deltagrad does not implement: an error unless the key is absent, null, an
// empty object or list, or equal to `accepted`. `why` says what deltagrad does instead.
void hf_refuse(const HfAdapter& a, const char* key, const nlohmann::json& accepted, const std::string& why);

// module -> suffix -> tensor for keys "base_model.model.<module>.<suffix>" with one of
// `suffixes`; keys in `shared` are left for the caller; any other key is an error naming it.
using HfModules = std::map<std::string, std::map<std::string, Tensor>>;
HfModules hf_module_tensors(const HfAdapter& a, const std::vector<std::string>& suffixes,
                            const std::set<std::string>& shared = {});
// The module's tensor `suffix`: missing is an error naming the module and file.
const Tensor& hf_need(const HfAdapter& a, const HfModules& mods, const std::string& module, const std::string& suffix);
// The rank a factor's dimension says must equal adapter_config's r.
void hf_check_rank(const HfAdapter& a, const std::string& module, const std::string& suffix, int64_t got, int64_t r);
std::vector<std::string> hf_module_names(const HfModules& mods);

}  // namespace dg::peft
