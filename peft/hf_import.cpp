// `import-peft`: a Hugging Face peft adapter folder to a deltagrad delta file. The folder's
// peft_type (and a flag such as use_dora) picks the registered method whose hf_import turns
// its tensors and options into a delta config; modules_to_save tensors (a head, LayerNorms)
// become trained base tensors, as export-peft writes them. Also the helpers of hf_format.h and
// the LoRA family's import (lora, dora).
#include <algorithm>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "peft/deltas.h"
#include "peft/hf_format.h"
#include "peft/peft_model.h"

namespace dg::peft {

using nlohmann::json;

namespace {
const std::string kModelPrefix = "base_model.model.";

// Older peft files keep the adapter name in keys ("lora_A.default.weight"); save_pretrained
// drops it.
std::string without_adapter_name(std::string k) {
  for (size_t p; (p = k.find(".default.")) != std::string::npos;) k.erase(p, 8);
  if (k.size() > 8 && k.compare(k.size() - 8, 8, ".default") == 0) k.resize(k.size() - 8);
  return k;
}
}  // namespace

std::string hf_config_file(const HfAdapter& a) { return a.dir + "/adapter_config.json"; }
std::string hf_tensors_file(const HfAdapter& a) { return a.dir + "/adapter_model.safetensors"; }

void hf_refuse(const HfAdapter& a, const char* key, const json& accepted, const std::string& why) {
  if (!a.config.contains(key)) return;
  const json& v = a.config.at(key);
  if (v.is_null() || ((v.is_object() || v.is_array()) && v.empty()) || v == accepted) return;
  throw Error(str("import-peft: '", hf_config_file(a), "': '", key, "' is ", v.dump(), ", expected ",
                  accepted.is_null() ? "null" : accepted.dump(), " (deltagrad does not implement it: ", why, ")"));
}

HfModules hf_module_tensors(const HfAdapter& a, const std::vector<std::string>& suffixes, const std::set<std::string>& shared) {
  HfModules out;
  for (const auto& [k, t] : a.tensors) {
    if (shared.count(k)) continue;
    bool placed = false;
    if (k.rfind(kModelPrefix, 0) == 0)
      for (const std::string& s : suffixes)
        if (k.size() > kModelPrefix.size() + s.size() + 1 && k.compare(k.size() - s.size(), s.size(), s) == 0 &&
            k[k.size() - s.size() - 1] == '.') {
          out[k.substr(kModelPrefix.size(), k.size() - kModelPrefix.size() - s.size() - 1)][s] = t;
          placed = true;
          break;
        }
    if (!placed) {
      std::string want;
      for (const std::string& s : suffixes) want += (want.empty() ? "" : ", ") + s;
      for (const std::string& s : shared) want += ", or " + s;
      throw Error(str("import-peft: '", hf_tensors_file(a), "': unexpected key '", k, "' for peft_type ",
                      a.config.value("peft_type", "?"), " (expected base_model.model.<module>.<one of ", want,
                      ">, or a tensor of this model for modules_to_save)"));
    }
  }
  return out;
}

const Tensor& hf_need(const HfAdapter& a, const HfModules& mods, const std::string& module, const std::string& suffix) {
  auto& m = mods.at(module);
  auto it = m.find(suffix);
  DG_CHECK(it != m.end(), "import-peft: '", hf_tensors_file(a), "': module '", module, "' has no '", suffix,
           "' (the adapter's other tensors of it: ", m.begin()->first, ")");
  return it->second;
}

void hf_check_rank(const HfAdapter& a, const std::string& module, const std::string& suffix, int64_t got, int64_t r) {
  DG_CHECK(got == r, "import-peft: '", hf_tensors_file(a), "': '", module, ".", suffix, "' has rank ", got, ", '",
           hf_config_file(a), "' says r = ", r);
}

std::vector<std::string> hf_module_names(const HfModules& mods) {
  std::vector<std::string> out;
  for (const auto& [m, t] : mods) out.push_back(m);
  return out;
}

// peft's LoRA format: lora_A.weight [r, in], lora_B.weight [out, r] per module (and with
// use_dora, lora_magnitude_vector [out]); one joint LoRA per module.
HfImported lora_family_hf_import(const HfAdapter& a, bool dora) {
  hf_refuse(a, "bias", "none", "its LoRA trains no biases");
  hf_refuse(a, "fan_in_fan_out", false, "timm's Linear layers keep W as [out, in]");
  hf_refuse(a, "rank_pattern", json::object(), "one r for every module");
  hf_refuse(a, "alpha_pattern", json::object(), "one lora_alpha for every module");
  hf_refuse(a, "lora_bias", false, "LoRA-B's bias");
  hf_refuse(a, "layer_replication", nullptr, "layer replication");
  hf_refuse(a, "target_parameters", nullptr, "LoRA on parameters rather than modules");
  hf_refuse(a, "trainable_token_indices", nullptr, "trainable tokens");
  hf_refuse(a, "use_qalora", false, "QA-LoRA");
  const int64_t r = hf_option<int64_t>(a, "r", 8);
  std::vector<std::string> suffixes{"lora_A.weight", "lora_B.weight"};
  if (dora) suffixes.push_back("lora_magnitude_vector");
  const HfModules mods = hf_module_tensors(a, suffixes);
  DG_CHECK(!mods.empty(), "import-peft: '", hf_tensors_file(a), "' holds no LoRA tensors");
  HfImported out;
  for (const auto& [m, t] : mods) {
    const Tensor &A = hf_need(a, mods, m, "lora_A.weight"), &B = hf_need(a, mods, m, "lora_B.weight");
    DG_CHECK(A.dim() == 2 && B.dim() == 2, "import-peft: '", hf_tensors_file(a), "': '", m,
             "' lora_A and lora_B must be matrices (a Linear's LoRA), got ", shape_str(A.shape()), " and ",
             shape_str(B.shape()));
    hf_check_rank(a, m, "lora_A.weight", A.size(0), r);
    hf_check_rank(a, m, "lora_B.weight", B.size(1), r);
    out.tensors[m] = {{"lora_A", A}, {"lora_B", B}};
    if (dora) out.tensors[m]["lora_magnitude_vector"] = hf_need(a, mods, m, "lora_magnitude_vector");
  }
  out.delta = {{"method", dora ? "dora" : "lora"},
               {"r", r},
               {"lora_alpha", hf_option<double>(a, "lora_alpha", 8.0)},
               {"lora_dropout", hf_option<double>(a, "lora_dropout", 0.0)},
               {"use_rslora", hf_option<bool>(a, "use_rslora", false)},
               {"target_modules", hf_module_names(mods)}};
  return out;
}

int64_t hf_head_classes(const std::string& dir) {
  SafeTensors st = load_safetensors(dir + "/adapter_model.safetensors");
  auto it = st.tensors.find(kModelPrefix + "head.weight");
  return it == st.tensors.end() || it->second.dim() != 2 ? -1 : it->second.size(0);
}

namespace {
// The registered method for the adapter's peft_type: the one whose hf_flag is true, else the
// one without a flag.
const MethodDef& method_for(const HfAdapter& a) {
  const std::string type = hf_option<std::string>(a, "peft_type", "");
  const MethodDef* plain = nullptr;
  for (const MethodDef* m : all_methods()) {
    if (!m->hf_import || m->hf_peft_type != type) continue;
    if (m->hf_flag.empty()) {
      plain = plain ? plain : m;
    } else if (hf_option<bool>(a, m->hf_flag.c_str(), false)) {
      return *m;
    }
  }
  if (plain) return *plain;
  std::set<std::string> known;
  for (const MethodDef* m : all_methods())
    if (m->hf_import) known.insert(m->hf_peft_type);
  std::string list;
  for (const std::string& t : known) list += (list.empty() ? "" : ", ") + t;
  throw Error(str("import-peft: '", hf_config_file(a), "': peft_type '", type, "' is not one deltagrad imports (",
                  "expected one of ", list, ")"));
}
}  // namespace

namespace {
// The imported values into the model's delta and base tensors (every adapter tensor must find
// its place, every delta tensor its value), then the delta file.
void fill_and_save(PeftModel& pm, const std::string& name, HfImported& imp, const HfAdapter& a,
                   const nn::NamedTensors& base_params, const std::map<std::string, Tensor>& saved,
                   const std::string& out_file) {
  for (auto& [n, p] : base_params)
    if (saved.count(n)) Tensor(p).copy_(saved.at(n));
  std::set<std::string> used_shared;
  for (auto& [site, d] : pm.attachments(name)) {
    auto own = imp.tensors.find(site);
    for (auto& [pn, t] : d->named_parameters()) {
      const Tensor* src = nullptr;
      if (own != imp.tensors.end() && own->second.count(pn)) src = &own->second.at(pn);
      else if (imp.shared.count(pn)) src = &imp.shared.at(pn), used_shared.insert(pn);
      DG_CHECK(src, "import-peft: '", hf_tensors_file(a), "' has no value for ", name, " tensor '", pn, "' of '",
               site, "'");
      DG_CHECK(src->shape() == t.shape(), "import-peft: '",
               hf_tensors_file(a), "': ", name, " tensor '", pn, "' of '", site, "' has shape ",
               shape_str(src->shape()), ", this model's is ", shape_str(t.shape()));
      Tensor(t).copy_(*src);
    }
    if (own != imp.tensors.end()) imp.tensors.erase(own);
  }
  DG_CHECK(imp.tensors.empty(), "import-peft: '", hf_tensors_file(a), "': module '",
           imp.tensors.empty() ? "" : imp.tensors.begin()->first, "' names no Linear layer of this model");
  DG_CHECK(used_shared.size() == imp.shared.size(), "import-peft: '", hf_tensors_file(a),
           "': a shared tensor has no place in this model's ", name, " delta");
  pm.save(out_file);
}
}  // namespace

void import_hf(const std::string& dir, const std::string& out_file, nn::VisionTransformer& base) {
  HfAdapter a;
  a.dir = dir;
  a.config = read_json_file(hf_config_file(a), "import-peft: adapter config");
  DG_CHECK(a.config.is_object(), "import-peft: '", hf_config_file(a), "' is not a JSON object");
  const MethodDef& method = method_for(a);
  // modules_to_save (a head, LayerNorms): keys naming a tensor of the model
  std::map<std::string, Tensor> saved;
  auto base_params = base.named_parameters(false);
  const SafeTensors file = load_safetensors(hf_tensors_file(a));
  for (auto& [k0, t] : file.tensors) {
    const std::string k = without_adapter_name(k0);
    auto it = std::find_if(base_params.begin(), base_params.end(),
                           [&](auto& np) { return k.rfind(kModelPrefix, 0) == 0 && np.first == k.substr(kModelPrefix.size()); });
    if (it == base_params.end()) {
      a.tensors[k] = t;
      continue;
    }
    DG_CHECK(t.shape() == it->second.shape(), "import-peft: '", hf_tensors_file(a), "': '", k0, "' has shape ",
             shape_str(t.shape()), ", the model's '", it->first, "' ", shape_str(it->second.shape()),
             " (for a head: the model config's num_classes)");
    saved[it->first] = t;
  }
  HfImported imp = method.hf_import(a);
  imp.delta["name"] = method.name;
  json pc = {{"deltas", json::array({imp.delta})}};
  if (!saved.empty()) {
    json names = json::array();
    for (auto& [n, t] : saved) names.push_back(n);
    pc["trainable"] = names;
  }
  std::map<std::string, Tensor> original;
  for (auto& [n, p] : base_params)
    if (saved.count(n)) original[n] = p.clone();
  PeftModel pm(base, parse_peft_config(pc, "import-peft: the config made of '" + hf_config_file(a) + "'"));
  NoGradGuard ng;
  auto restore_base = [&] {  // leave the base as it was (its tensors too), also when the import fails
    pm.remove(method.name);
    for (auto& [n, p] : base_params)
      if (saved.count(n)) {
        Tensor dst = p;
        dst.copy_(original.at(n));
        dst.set_requires_grad(false);
      }
  };
  try {
    fill_and_save(pm, method.name, imp, a, base_params, saved, out_file);
  } catch (...) {
    restore_base();
    throw;
  }
  restore_base();
}

}  // namespace dg::peft
