#include "peft/config.h"

#include <set>
#include <type_traits>

#include "core/error.h"
#include "core/user_files.h"

namespace dg::peft {

using nlohmann::json;

namespace {

// Reads typed keys from one JSON object and remembers which were used, so that every
// key left over is reported as unknown (with its path).
struct Reader {
  const json& j;
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
    } catch (const json::exception&) {
      throw Error(str(where, ": key '", key, "' has the wrong type (", j.at(key).dump(), ")"));
    }
  }
  bool has(const char* key) const { return j.contains(key); }
  void finish() const {
    for (auto it = j.begin(); it != j.end(); ++it)
      DG_CHECK(used.count(it.key()), where, ": unknown key '", it.key(), "'");
  }
};

ScaleConfig parse_scale(const json& j, const std::string& where) {
  ScaleConfig s;
  DG_CHECK(j.is_object(), where, ": 'scale' must be an object like {\"kind\": \"channel\", \"init\": 1.0, \"trainable\": true}");
  Reader r{j, where + ".scale", {}};
  std::string kind = "scalar";
  r.get("kind", kind);
  r.get("init", s.init);
  r.get("trainable", s.trainable);
  r.finish();
  if (kind == "scalar") s.kind = ScaleConfig::Kind::Scalar;
  else if (kind == "channel") s.kind = ScaleConfig::Kind::Channel;
  else throw Error(str(where, ".scale: unknown kind '", kind, "' (expected scalar or channel)"));
  return s;
}

// adapter-plus's `scaling`: a number (fixed), "learned" (trainable scalar), "channel".
ScaleConfig scaling_to_scale(const json& v, const std::string& where) {
  ScaleConfig s;
  if (v.is_number()) {
    s.init = v.get<double>();
    s.trainable = false;
    s.kind = s.init == 1.0 ? ScaleConfig::Kind::None : ScaleConfig::Kind::Scalar;
  } else if (v == "learned") {
    s.kind = ScaleConfig::Kind::Scalar;
  } else if (v == "channel") {
    s.kind = ScaleConfig::Kind::Channel;
  } else {
    throw Error(str(where, ": 'scaling' must be a number, \"learned\" or \"channel\", got ", v.dump()));
  }
  return s;
}

void parse_lora(Reader& r, LoraConfig& c) {
  r.get("r", c.r);
  r.get("lora_alpha", c.lora_alpha);
  r.get("lora_dropout", c.lora_dropout);
  r.get("target_modules", c.target_modules);
  r.get("use_rslora", c.use_rslora);
  r.get("qkv_mode", c.qkv_mode);
  r.get("qkv_parts", c.qkv_parts);
  r.get("init", c.init);
  DG_CHECK(c.r >= 1, r.where, ": r must be >= 1, got ", c.r);
  DG_CHECK(c.lora_dropout >= 0 && c.lora_dropout < 1, r.where, ": lora_dropout must be in [0, 1)");
  DG_CHECK(!c.target_modules.empty(), r.where, ": target_modules is empty");
  DG_CHECK(c.qkv_mode == "joint" || c.qkv_mode == "separate", r.where, ": qkv_mode must be joint or separate, got '",
           c.qkv_mode, "'");
  for (const std::string& p : c.qkv_parts)
    DG_CHECK(p == "q" || p == "k" || p == "v", r.where, ": qkv_parts entries must be q, k or v, got '", p, "'");
  DG_CHECK(c.init == "kaiming" || c.init == "random", r.where, ": init must be kaiming or random");
}

void parse_adapter(Reader& r, AdapterConfig& c, ScaleConfig& scale) {
  r.get("config", c.config);
  r.get("act_layer", c.act_layer);
  r.get("norm_layer", c.norm_layer);
  r.get("bias", c.bias);
  r.get("init", c.init);
  r.get("dim", c.dim);
  r.get("attn_adapter", c.attn_adapter);
  r.get("dropout", c.dropout);
  r.get("drop_path", c.drop_path);
  r.get("blocks", c.blocks);
  r.used.insert("scaling");
  if (r.has("scaling")) {
    DG_CHECK(!r.has("scale"), r.where, ": give either adapter-plus's 'scaling' or a 'scale' object, not both");
    scale = scaling_to_scale(r.j.at("scaling"), r.where);
  }
  static const std::set<std::string> configs{"post", "houlsby", "parallel", "intermediate"};
  DG_CHECK(configs.count(c.config), r.where, ": config '", c.config,
           "' is not one of post, houlsby, parallel, intermediate");
  static const std::set<std::string> inits{"houlsby", "lora", "bert", "zero"};
  DG_CHECK(inits.count(c.init), r.where, ": init '", c.init, "' is not one of houlsby, lora, bert, zero");
  DG_CHECK(c.dim >= 1, r.where, ": dim must be >= 1");
  DG_CHECK(c.dropout >= 0 && c.dropout < 1 && c.drop_path >= 0 && c.drop_path < 1, r.where,
           ": dropout and drop_path must be in [0, 1)");
}

}  // namespace

PeftConfig parse_peft_config(const json& j, const std::string& what) {
  DG_CHECK(j.is_object(), what, ": expected a JSON object with 'deltas', 'trainable', 'masks'");
  PeftConfig cfg;
  cfg.raw = j;
  Reader top{j, what, {}};
  top.get("trainable", cfg.trainable);
  top.used.insert("deltas");
  top.used.insert("masks");
  top.finish();
  std::set<std::string> names;
  if (j.contains("deltas")) {
    DG_CHECK(j["deltas"].is_array(), what, ": 'deltas' must be an array");
    for (size_t i = 0; i < j["deltas"].size(); ++i) {
      const json& d = j["deltas"][i];
      std::string where = str(what, ": deltas[", i, "]");
      DG_CHECK(d.is_object(), where, " must be an object");
      DeltaConfig dc;
      dc.raw = d;
      Reader r{d, where, {}};
      r.get("name", dc.name);
      r.get("method", dc.method);
      DG_CHECK(!dc.method.empty(), where, ": missing 'method'");
      if (dc.name.empty()) dc.name = dc.method;
      DG_CHECK(dc.name.find('.') == std::string::npos && dc.name.find('*') == std::string::npos, where, ": name '",
               dc.name, "' must not contain '.' or '*'");
      DG_CHECK(names.insert(dc.name).second, where, ": duplicate delta name '", dc.name, "'");
      where = str(what, ": delta '", dc.name, "'");
      r.where = where;
      AdapterConfig& a = dc.adapter;
      if (dc.method == "lora") {
        parse_lora(r, dc.lora);
      } else if (dc.method == "houlsby") {
        a.config = "houlsby";
        a.attn_adapter = true;
        a.drop_path = 0.1;
        parse_adapter(r, a, dc.scale);
      } else if (dc.method == "pfeiffer") {
        a.config = "post";  // z + A(norm(z)) after the block: see README "Adapters"
        a.norm_layer = true;
        a.drop_path = 0.1;
        parse_adapter(r, a, dc.scale);
      } else if (dc.method == "parallel") {
        a.config = "parallel";
        a.drop_path = 0.1;
        parse_adapter(r, a, dc.scale);
      } else if (dc.method == "adapter_plus") {
        a.config = "post";
        a.drop_path = 0.1;
        dc.scale.kind = ScaleConfig::Kind::Channel;  // Adapter+: channel-wise scaling, ones
        parse_adapter(r, a, dc.scale);
      } else if (dc.method == "vpt_shallow" || dc.method == "vpt_deep") {
        dc.prompt.deep = dc.method == "vpt_deep";
        r.get("num_tokens", dc.prompt.num_tokens);
        r.get("dropout", dc.prompt.dropout);
        DG_CHECK(dc.prompt.num_tokens >= 1, where, ": num_tokens must be >= 1");
        DG_CHECK(dc.prompt.dropout >= 0 && dc.prompt.dropout < 1, where, ": dropout must be in [0, 1)");
      } else {
        throw Error(str(where, ": unknown method '", dc.method,
                        "' (expected lora, houlsby, pfeiffer, parallel, adapter_plus, vpt_shallow, vpt_deep)"));
      }
      r.used.insert("scale");
      if (d.contains("scale")) {
        DG_CHECK(dc.method.rfind("vpt", 0) != 0, where, ": prompts take no 'scale'");
        dc.scale = parse_scale(d["scale"], where);
      }
      r.finish();
      cfg.deltas.push_back(std::move(dc));
    }
  }
  if (j.contains("masks")) {
    DG_CHECK(j["masks"].is_array(), what, ": 'masks' must be an array");
    for (size_t i = 0; i < j["masks"].size(); ++i) {
      Reader r{j["masks"][i], str(what, ": masks[", i, "]"), {}};
      DG_CHECK(r.j.is_object(), r.where, " must be an object");
      MaskConfig m;
      r.get("tensor", m.tensor);
      r.get("density", m.density);
      r.get("seed", m.seed);
      r.get("file", m.file);
      r.finish();
      DG_CHECK(!m.tensor.empty(), r.where, ": missing 'tensor'");
      DG_CHECK(m.file.empty() != (m.density == 0.0), r.where, ": give exactly one of 'density' (0 < d <= 1) or 'file'");
      DG_CHECK(!m.file.empty() || (m.density > 0 && m.density <= 1), r.where, ": density must be in (0, 1]");
      cfg.masks.push_back(m);
    }
  }
  return cfg;
}

PeftConfig load_peft_config(const std::string& path) {
  return parse_peft_config(read_json_file(path, "peft config"), "peft config '" + path + "'");
}

json to_json(const PeftConfig& c) { return c.raw; }

}  // namespace dg::peft
