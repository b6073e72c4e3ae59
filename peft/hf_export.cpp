// `export-peft`: one delta of a PeftModel as a Hugging Face peft adapter folder
// (adapter_model.safetensors + adapter_config.json); the method's hf_export writes its
// tensors and options, trained base tensors go as modules_to_save. The inverse is hf_import.cpp.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "autograd/tape.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "peft/peft_model.h"

namespace dg::peft {

using nlohmann::json;

void PeftModel::export_hf(const std::string& dir, const std::string& delta_name) const {
  const std::pair<std::string, Attachments>* pick = nullptr;
  for (const auto& e : deltas_) {
    if (!methods_.at(e.first)->hf_export || (!delta_name.empty() && e.first != delta_name)) continue;
    DG_CHECK(!pick, "export_hf: several deltas peft can hold; name the one to export");
    pick = &e;
  }
  const std::string exportable = method_names([](const MethodDef& m) { return bool(m.hf_export); });
  DG_CHECK(pick, "export_hf: no delta", delta_name.empty() ? "" : " named '" + delta_name + "'", " of a method peft has (",
           exportable, ")");
  std::filesystem::create_directories(dir);
  HfAdapter hf;
  methods_.at(pick->first)->hf_export(pick->second, hf);
  std::map<std::string, Tensor>& t = hf.tensors;
  // Trained base tensors (a head, BitFit biases, LayerNorms) and kept ones (a fresh head) go
  // as peft's modules_to_save: whole modules, every tensor of each.
  std::set<std::string> modules;
  auto base_params = base_.named_parameters(false);
  for (auto& [n, p] : base_params)
    if (p.requires_grad() || kept_.count(n)) modules.insert(n.substr(0, n.rfind('.')));
  NoGradGuard ng;
  for (const std::string& m : modules) {
    DG_CHECK(std::find(hf.targets.begin(), hf.targets.end(), m) == hf.targets.end(), "export_hf: '", m,
             "' carries a delta and trained base tensors; peft cannot hold both (modules_to_save and a target)");
    for (auto& [n, p] : base_params)
      if (n.rfind(m + ".", 0) == 0 && n.find('.', m.size() + 1) == std::string::npos) t["base_model.model." + n] = p;
  }
  for (const auto& [name, list] : deltas_)
    if (name != pick->first)
      std::fprintf(stderr, "export-peft: delta '%s' (%s) is not exported (a peft adapter file holds one delta)\n",
                   name.c_str(), methods_.at(name)->name.c_str());
  save_safetensors(dir + "/adapter_model.safetensors", t, {{"format", "pt"}});
  json c = hf.config;
  c.update({{"task_type", nullptr}, {"target_modules", hf.targets}, {"inference_mode", true},
            {"modules_to_save", modules.empty() ? json(nullptr) : json(std::vector<std::string>(modules.begin(), modules.end()))},
            {"base_model_name_or_path", nullptr}, {"revision", nullptr}});
  write_file_atomic(dir + "/adapter_config.json", c.dump(2) + "\n");
}

}  // namespace dg::peft
