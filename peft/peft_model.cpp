#include "peft/peft_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/backend.h"
#include "core/safetensors.h"
#include "core/user_files.h"
#include "nn/device.h"
#include "nn/glob.h"
#include "peft/packed_bits.h"

namespace dg::peft {

using nlohmann::json;

std::string base_identity(nn::Module& base) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  };
  for (auto& [n, t] : base.named_parameters(false)) mix(n + shape_str(t.shape()) + ";");
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

PeftModel::PeftModel(nn::VisionTransformer& base, const PeftConfig& cfg, uint64_t seed) : base_(base), cfg_(cfg) {
  DG_CHECK(base_.all_deltas().empty(), "PeftModel: the base model already carries deltas");
  base_.freeze_all();
  Generator gen(seed);
  for (const DeltaConfig& d : cfg_.deltas) attach(d, gen);
  auto base_params = base_.named_parameters(false);
  for (const std::string& g : cfg_.trainable) {
    int n = 0;
    for (auto& [name, t] : base_params)
      if (nn::glob_match(g, name)) {
        Tensor(t).set_requires_grad(true);
        ++n;
      }
    DG_CHECK(n > 0, "peft config: trainable glob '", g, "' matches no base tensor");
  }
  for (const MaskConfig& m : cfg_.masks) {
    int n = 0;
    std::map<std::string, Tensor> file;
    if (!m.file.empty()) file = load_safetensors(m.file).tensors;
    for (auto& [name, t] : base_params) {
      if (!nn::glob_match(m.tensor, name)) continue;
      Tensor mask;
      if (!m.file.empty()) {
        auto it = file.find(name);
        DG_CHECK(it != file.end(), "mask file '", m.file, "' has no tensor '", name, "'");
        DG_CHECK(it->second.shape() == t.shape(), "mask file '", m.file, "': '", name, "' has shape ",
                 shape_str(it->second.shape()), ", expected ", shape_str(t.shape()));
        mask = it->second.to(DType::F32);
        for (double v : mask.to_vector())
          DG_CHECK(v == 0.0 || v == 1.0, "mask file '", m.file, "': '", name, "' must hold only 0 and 1");
      } else {
        Tensor u = Tensor::empty(t.shape());
        Generator mg(m.seed ^ std::hash<std::string>{}(name));
        mg.uniform_(u);
        std::vector<double> uv = u.to_vector();
        for (double& v : uv) v = v < m.density ? 1.0 : 0.0;
        mask = Tensor::from_vector(uv, t.shape()).to(DType::F32);
      }
      masks_[name] = mask.to(t.dtype()).to(t.device());
      Tensor(t).set_requires_grad(true);
      ++n;
    }
    DG_CHECK(n > 0, "peft config: mask tensor glob '", m.tensor, "' matches no base tensor");
  }
}

void PeftModel::attach(const DeltaConfig& d, Generator& gen) {
  const MethodDef& def = find_method(d.method, "delta '" + d.name + "'");
  Attachments list;
  def.attach(d, base_, gen, [&](const std::string& site, std::shared_ptr<MethodDelta> delta) {
    base_.add_delta(site, delta);
    list.emplace_back(site, delta);
  });
  DG_CHECK(!list.empty(), "delta '", d.name, "' (", d.method, ") matched no site of the model");
  deltas_.emplace_back(d.name, std::move(list));
  methods_[d.name] = &def;
}

std::vector<std::string> PeftModel::delta_names() const {
  std::vector<std::string> out;
  for (const auto& [n, l] : deltas_) out.push_back(n);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<nn::Delta>>> PeftModel::attachments(const std::string& name) const {
  for (const auto& [n, l] : deltas_)
    if (n == name) return l;
  throw Error(str("no delta named '", name, "'"));
}

void PeftModel::set_enabled(const std::string& name, bool enabled) {
  for (auto& [site, d] : attachments(name)) d->enabled = enabled;
}

void PeftModel::remove(const std::string& name) {
  auto list = attachments(name);
  for (auto it = list.rbegin(); it != list.rend(); ++it) base_.remove_delta(it->first, name);
  for (auto it = deltas_.begin(); it != deltas_.end(); ++it)
    if (it->first == name) {
      deltas_.erase(it);
      break;
    }
  methods_.erase(name);
}

void PeftModel::to(Device dev) {
  nn::move_to(base_, dev);
  for (auto& [n, m] : masks_) m = m.to(dev);
}

nn::NamedTensors PeftModel::trainable_parameters() const {
  nn::NamedTensors out;
  for (auto& [n, t] : base_.named_parameters(true))
    if (t.requires_grad()) out.emplace_back(n, t);
  return out;
}

void PeftModel::mask_gradients() {
  NoGradGuard ng;
  for (auto& [name, mask] : masks_)
    for (auto& [n, t] : base_.named_parameters(false))
      if (n == name && t.grad().defined()) {
        Tensor g = t.grad();
        backend_of(g).binary(BinaryOp::Mul, g, mask, g);
      }
}

int64_t PeftModel::base_parameter_count() const {
  int64_t n = 0;
  for (auto& [name, t] : base_.named_parameters(false)) n += t.numel();
  return n;
}

std::string PeftModel::report() const {
  std::ostringstream os;
  const double base = double(base_parameter_count());
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %-12s %8s %12s %9s\n", "delta", "method", "sites", "params", "% base");
  os << line;
  int64_t total = 0;
  for (const auto& [name, list] : deltas_) {
    int64_t n = 0;
    for (const auto& [site, d] : list) n += static_cast<MethodDelta&>(*d).trainable_count();
    total += n;
    std::snprintf(line, sizeof line, "%-24s %-12s %8zu %12lld %8.3f%%\n", name.c_str(), methods_.at(name)->name.c_str(),
                  list.size(), static_cast<long long>(n), 100.0 * double(n) / base);
    os << line;
  }
  int64_t base_trainable = 0, masked = 0;
  for (auto& [n, t] : base_.named_parameters(false)) {
    if (!t.requires_grad()) continue;
    auto it = masks_.find(n);
    if (it == masks_.end()) {
      base_trainable += t.numel();
    } else {
      for (double v : it->second.to_vector()) masked += v != 0.0;
    }
  }
  std::snprintf(line, sizeof line, "%-24s %-12s %8s %12lld %8.3f%%\n", "base tensors", "trainable", "",
                static_cast<long long>(base_trainable), 100.0 * double(base_trainable) / base);
  os << line;
  if (!masks_.empty()) {
    std::snprintf(line, sizeof line, "%-24s %-12s %8zu %12lld %8.3f%%\n", "masked elements", "sparse", masks_.size(),
                  static_cast<long long>(masked), 100.0 * double(masked) / base);
    os << line;
  }
  total += base_trainable + masked;
  std::snprintf(line, sizeof line, "trainable params: %lld || all params: %lld || trainable%%: %.4f\n",
                static_cast<long long>(total), static_cast<long long>(base_parameter_count() + total - base_trainable - masked),
                100.0 * double(total) / base);
  os << line;
  return os.str();
}

void PeftModel::keep_base_tensor(const std::string& name) {
  bool found = false;
  for (auto& [n, t] : base_.named_parameters(false)) found |= n == name;
  DG_CHECK(found, "keep_base_tensor: the base has no tensor '", name, "'");
  kept_.insert(name);
}

void PeftModel::save(const std::string& path) const {
  std::map<std::string, Tensor> t;
  for (auto& [n, p] : trainable_parameters()) t[n] = p;
  for (auto& [n, p] : base_.named_parameters(false))
    if (kept_.count(n)) t[n] = p;
  for (const auto& [name, list] : deltas_)  // fixed (non-trainable) delta tensors too, e.g. a fixed scale
    for (const auto& [site, d] : list)
      for (auto& [pn, p] : d->named_parameters()) t[site + "." + name + "." + pn] = p;
  for (const auto& [n, m] : masks_) t["mask." + n] = m;
  pack_binary_tensors(deltas_, t);  // bits: 1 weights as packed signs + [mean, std]
  std::map<std::string, std::string> meta{{"format", "deltagrad.delta/1"},
                                          {"peft_config", cfg_.raw.dump()},
                                          {"base_identity", base_identity(base_)},
                                          {"model_config", nn::to_json(base_.cfg).dump()}};
  if (json dm = delta_metadata(); !dm.empty()) meta["delta_metadata"] = dm.dump();
  save_safetensors(path, t, meta);
}

json PeftModel::delta_metadata() const {
  json out = json::object();
  for (const auto& [name, list] : deltas_)
    for (const auto& [site, d] : list)
      if (json m = static_cast<const MethodDelta&>(*d).file_metadata(); !m.is_null()) out[site + "." + name] = m;
  return out;
}

void PeftModel::load(const std::string& path) {
  SafeTensors st = load_safetensors(path);
  auto meta = [&](const char* k) {
    auto it = st.metadata.find(k);
    DG_CHECK(it != st.metadata.end(), "delta file '", path, "': no '", k, "' in its metadata (not a deltagrad delta file)");
    return it->second;
  };
  DG_CHECK(meta("format") == "deltagrad.delta/1", "delta file '", path, "': unknown format '", meta("format"), "'");
  const std::string id = base_identity(base_);
  if (const json want = delta_metadata(); !want.empty()) {  // e.g. VeRA's regenerated projections
    auto it = st.metadata.find("delta_metadata");
    const json got = it == st.metadata.end() ? json::object() : json::parse(it->second, nullptr, false);
    for (auto e = want.begin(); e != want.end(); ++e) {
      const std::string& k = e.key();
      const json& v = e.value();
      const bool found = got.is_object() && got.contains(k);
      DG_CHECK(found && got.at(k) == v, "delta file '", path, "': delta_metadata of '", k, "' is ",
               found ? got.at(k).dump() : std::string("missing"), ", this build rebuilds it as ", v.dump(),
               " (a file made by another generator or config keeps its tensors: save_projection)");
    }
  }
  DG_CHECK(meta("base_identity") == id, "delta file '", path, "' was made for a different base model (identity ",
           meta("base_identity"), ", this base ", id, "): tensor names or shapes differ");
  std::map<std::string, Tensor> mine;
  for (auto& [n, p] : trainable_parameters()) mine[n] = p;
  for (const auto& [name, list] : deltas_)
    for (const auto& [site, d] : list)
      for (auto& [pn, p] : d->named_parameters()) mine[site + "." + name + "." + pn] = p;
  for (const auto& [n, m] : masks_) mine["mask." + n] = m;
  for (const std::string& k : unpack_binary_tensors(deltas_, st.tensors, path)) mine.erase(k);
  std::map<std::string, Tensor> base_tensors;  // a frozen base tensor the file keeps (keep_base_tensor)
  for (auto& [n, p] : base_.named_parameters(false)) base_tensors[n] = p;
  for (const auto& [n, t] : st.tensors) {
    if (!mine.count(n) && base_tensors.count(n)) mine[n] = base_tensors[n], kept_.insert(n);
    DG_CHECK(mine.count(n), "delta file '", path, "': tensor '", n, "' has no place in this PEFT model");
  }
  NoGradGuard ng;
  for (auto& [n, p] : mine) {
    auto it = st.tensors.find(n);
    DG_CHECK(it != st.tensors.end(), "delta file '", path, "': missing tensor '", n, "'");
    DG_CHECK(it->second.shape() == p.shape(), "delta file '", path, "': '", n, "' has shape ",
             shape_str(it->second.shape()), ", expected ", shape_str(p.shape()));
    for (double v : it->second.to_vector()) DG_CHECK(std::isfinite(v), "delta file '", path, "': '", n, "' contains NaN or Inf");
    Tensor dst = p;
    dst.copy_(it->second);
  }
}

std::unique_ptr<PeftModel> PeftModel::from_file(nn::VisionTransformer& base, const std::string& path) {
  SafeTensors st = load_safetensors(path);
  auto it = st.metadata.find("peft_config");
  DG_CHECK(it != st.metadata.end(), "delta file '", path, "': no peft_config in its metadata");
  json j = json::parse(it->second, nullptr, false);
  DG_CHECK(!j.is_discarded(), "delta file '", path, "': peft_config metadata is not valid JSON");
  // VeRA files written before the seed-only format (2026-12-02) hold vera_A and vera_B and
  // have no save_projection key (it now defaults to false): read them as they were written.
  if (j.is_object() && j.contains("deltas") && j["deltas"].is_array())
    for (json& d : j["deltas"]) {
      if (!d.is_object() || !d.contains("method") || d["method"] != "vera" || d.contains("save_projection")) continue;
      const std::string suffix = "." + (d.contains("name") && d["name"].is_string() ? d["name"].get<std::string>()
                                                                                    : std::string("vera")) + ".vera_A";
      for (const auto& [n, t] : st.tensors)
        if (n.size() > suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0) {
          d["save_projection"] = true;
          break;
        }
    }
  auto m = std::make_unique<PeftModel>(base, parse_peft_config(j, "peft_config in '" + path + "'"));
  m->load(path);
  return m;
}

void PeftModel::merge() {
  // Refused before anything merges: a combination whose merged weights would not compute the
  // unmerged forward (each delta judges, seeing its site's deltas in merge order).
  std::map<std::string, std::vector<const nn::Delta*>> sites;
  for (auto& [name, list] : deltas_)
    for (auto& [site, d] : list) sites[site].push_back(d.get());
  for (auto& [site, ds] : sites)
    for (size_t i = 0; i < ds.size(); ++i)
      if (methods_.at(ds[i]->name)->merges)
        if (std::string why = static_cast<const MethodDelta*>(ds[i])->merge_refusal(ds, i); !why.empty())
          throw Error(str("merge: at '", site, "': ", why));
  int n = 0;
  for (auto& [name, list] : deltas_)  // in attachment order: a later delta at a site sees the earlier merged
    if (methods_.at(name)->merges)
      for (auto& [site, d] : list) {
        static_cast<MethodDelta&>(*d).merge();
        ++n;
      }
  DG_CHECK(n > 0, "merge: this PEFT model has no deltas of a method that merges (",
           method_names([](const MethodDef& m) { return m.merges; }), ")");
}

void PeftModel::unmerge() {
  for (auto it = deltas_.rbegin(); it != deltas_.rend(); ++it)  // the reverse of merge: each restores its originals
    for (auto& [site, d] : it->second)
      if (auto& md = static_cast<MethodDelta&>(*d); md.merged()) md.unmerge();
}

bool PeftModel::mergeable(const std::string& name) const { return methods_.at(name)->merges; }
const MethodDef& PeftModel::method_of(const std::string& name) const {
  auto it = methods_.find(name);
  DG_CHECK(it != methods_.end(), "no delta named '", name, "'");
  return *it->second;
}

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
