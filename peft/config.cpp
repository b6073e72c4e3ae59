#include "peft/config.h"

#include <set>

#include "core/error.h"
#include "core/user_files.h"
#include "peft/method_registry.h"
#include "peft/sensitivity.h"
#include "peft/option_reader.h"

namespace dg::peft {

using nlohmann::json;

namespace {

ScaleConfig parse_scale(const json& j, const std::string& where) {
  ScaleConfig s;
  DG_CHECK(j.is_object(), where, ": 'scale' must be an object like {\"kind\": \"channel\", \"init\": 1.0, \"trainable\": true}");
  OptionReader r{j, where + ".scale", {}};
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

}  // namespace

PeftConfig parse_peft_config(const json& j, const std::string& what) {
  DG_CHECK(j.is_object(), what, ": expected a JSON object with 'deltas', 'trainable', 'masks'");
  PeftConfig cfg;
  cfg.raw = j;
  OptionReader top{j, what, {}};
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
      OptionReader r{d, where, {}};
      r.get("name", dc.name);
      r.get("method", dc.method);
      DG_CHECK(!dc.method.empty(), where, ": missing 'method'");
      if (dc.name.empty()) dc.name = dc.method;
      DG_CHECK(dc.name.find('.') == std::string::npos && dc.name.find('*') == std::string::npos, where, ": name '",
               dc.name, "' must not contain '.' or '*'");
      DG_CHECK(names.insert(dc.name).second, where, ": duplicate delta name '", dc.name, "'");
      where = str(what, ": delta '", dc.name, "'");
      r.where = where;
      // the method's own parser may rename it (lora with use_dora: true is dora, as in peft)
      const MethodDef* def = &find_method(dc.method, where);
      def->parse(r, dc);
      def = &find_method(dc.method, where);
      r.used.insert("scale");
      if (d.contains("scale") && !(def->numeric_scale && d["scale"].is_number())) {
        DG_CHECK(def->no_scale.empty(), where, ": ", def->no_scale);
        dc.scale = parse_scale(d["scale"], where);
      }
      r.finish();
      cfg.deltas.push_back(std::move(dc));
    }
  }
  if (j.contains("masks")) {
    DG_CHECK(j["masks"].is_array(), what, ": 'masks' must be an array");
    for (size_t i = 0; i < j["masks"].size(); ++i) {
      OptionReader r{j["masks"][i], str(what, ": masks[", i, "]"), {}};
      DG_CHECK(r.j.is_object(), r.where, " must be an object");
      MaskConfig m;
      r.get("tensor", m.tensor);
      r.get("density", m.density);
      r.get("seed", m.seed);
      r.get("file", m.file);
      if (r.has("from")) {
        DG_CHECK(m.file.empty(), r.where, ": give 'from' or 'file' (the same thing), not both");
        r.get("from", m.file);
      }
      r.used.insert("select");
      if (r.has("select")) {
        OptionReader s{r.j.at("select"), r.where + ".select", {}};
        DG_CHECK(s.j.is_object(), s.where, " must be an object");
        MaskSelect sel;
        std::string scope = "global";
        s.get("criterion", sel.criterion);
        s.get("budget", sel.budget);
        s.get("batches", sel.batches);
        s.get("scope", scope);
        s.get("seed", sel.seed);
        s.finish();
        parse_criterion(sel.criterion, s.where);
        DG_CHECK(sel.budget > 0 && sel.budget <= 1, s.where, ": budget must be in (0, 1], got ", sel.budget);
        DG_CHECK(sel.batches > 0, s.where, ": batches must be >= 1");
        DG_CHECK(scope == "global" || scope == "tensor", s.where, ": scope must be 'global' or 'tensor', got '", scope, "'");
        sel.global = scope == "global";
        m.select = sel;
      }
      r.finish();
      DG_CHECK(!m.tensor.empty(), r.where, ": missing 'tensor'");
      DG_CHECK(int(!m.file.empty()) + int(m.density != 0.0) + int(m.select.has_value()) == 1, r.where,
               ": give exactly one of 'density' (0 < d <= 1), 'from' (a mask file) or 'select'");
      DG_CHECK(m.density == 0.0 || (m.density > 0 && m.density <= 1), r.where, ": density must be in (0, 1]");
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
