#include "tools/model_args.h"

#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "core/user_files.h"

namespace dg::cli {

using nlohmann::json;

std::string absolute_if_file(const std::string& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec) ? std::filesystem::absolute(p).lexically_normal().string() : p;
}

std::string absolute_data_path(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string path = spec.substr(0, colon), rest = colon == std::string::npos ? "" : spec.substr(colon);
  std::error_code ec;
  if (path == "fashion-mnist" || !std::filesystem::exists(path, ec)) return spec;
  return std::filesystem::absolute(path).lexically_normal().string() + rest;
}

std::optional<nn::ViTConfig> delta_model_config(const std::string& path) {
  SafeTensors st = load_safetensors(path);
  auto it = st.metadata.find("model_config");
  if (it == st.metadata.end()) return std::nullopt;
  json j = json::parse(it->second, nullptr, false);
  DG_CHECK(!j.is_discarded(), "delta file '", path, "': its model_config metadata is not valid JSON");
  return nn::vit_config_from_json(j, "the model config in delta file '" + path + "'");
}

nn::ViTConfig model_config_for(const Args& a) {
  if (!a.has("deltas")) return nn::load_vit_config(a.need("model-config"));
  const std::string deltas = a.get("deltas");
  std::optional<nn::ViTConfig> dc = delta_model_config(deltas);
  if (!dc) {
    if (!a.has("model-config"))
      throw UsageError(str("delta file '", deltas, "' records no model config: give --model-config"));
    return nn::load_vit_config(a.get("model-config"));
  }
  if (a.has("model-config")) {
    const std::string path = a.get("model-config");
    const nn::ViTConfig given = nn::load_vit_config(path);
    const std::string diff = nn::backbone_differences(*dc, given);
    if (!diff.empty())
      throw Error(str("delta file '", deltas, "' was trained on another model than model config '", path, "' (", diff,
                      "; the delta file's value first): give the model config it was trained with, or leave out ",
                      "--model-config (the delta file carries its own)"));
    if (given.num_classes != dc->num_classes)
      std::fprintf(stderr, "deltagrad: the head has %lld classes, as in '%s' (model config '%s' says %lld)\n",
                   (long long)dc->num_classes, printable(deltas).c_str(), printable(path).c_str(),
                   (long long)given.num_classes);
  }
  return *dc;
}

std::unique_ptr<nn::VisionTransformer> load_model(const Args& a, const nn::ViTConfig& c) {
  auto m = std::make_unique<nn::VisionTransformer>(c);
  if (a.has("deltas") && !a.has("model"))
    std::fprintf(stderr, "deltagrad: no --model: the frozen backbone is a random initialisation, not the base "
                         "the deltas were trained on\n");
  if (a.has("model")) {
    SafeTensors st = load_safetensors(a.get("model"));
    nn::load_state_dict(*m, st.tensors, "'" + a.get("model") + "'");
  }
  return m;
}

std::unique_ptr<peft::PeftModel> attach_peft(nn::VisionTransformer& m, const Args& a) {
  if (a.has("deltas")) return peft::PeftModel::from_file(m, a.get("deltas"));
  if (a.has("peft")) return std::make_unique<peft::PeftModel>(m, peft::load_peft_config(a.get("peft")));
  return nullptr;
}

std::string list_names(const std::vector<std::string>& names, size_t max) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < max; ++i) s += (i ? ", " : "") + names[i];
  return names.size() > max ? s + ", ..." : s;
}

void check_data_classes(const data::ImageSet& set, const std::string& spec, const nn::ViTConfig& c,
                        const std::string& deltas) {
  auto named = [](const std::vector<std::string>& n) { return n.empty() ? std::string() : " (" + list_names(n) + ")"; };
  if (set.num_classes != c.num_classes)
    throw Error(str("data '", spec, "' has ", set.num_classes, " classes", named(set.class_names), " but delta file '",
                    deltas, "' was trained for ", c.num_classes, named(c.class_names),
                    ": give data with the classes it was trained on"));
  if (set.class_names.empty() || c.class_names.empty()) return;
  for (size_t i = 0; i < c.class_names.size() && i < set.class_names.size(); ++i)
    if (valid_utf8(set.class_names[i]) != c.class_names[i])  // train records names as valid UTF-8
      throw Error(str("data '", spec, "': class ", i, " is '", set.class_names[i], "' but delta file '", deltas,
                      "' was trained with class ", i, " = '", c.class_names[i], "' (its classes: ",
                      list_names(c.class_names), "): name the class folders as in training"));
}

}  // namespace dg::cli
