// The PEFT wiring: freeze the base, attach each configured delta at its sites, make the
// `trainable` globs and masked tensors trainable, and merge / unmerge / report them. Delta files
// are delta_file.cpp; Hugging Face peft export and import are hf_export.cpp and hf_import.cpp.
#include "peft/peft_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/backend.h"
#include "core/safetensors.h"
#include "nn/device.h"
#include "nn/glob.h"
#include "peft/sensitivity.h"

namespace dg::peft {

using nlohmann::json;

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
    std::vector<std::string> names;
    for (auto& [name, t] : base_params)
      if (nn::glob_match(m.tensor, name)) names.push_back(name);
    DG_CHECK(!names.empty(), "peft config: mask tensor glob '", m.tensor, "' matches no base tensor");
    std::map<std::string, Tensor> chosen;
    if (m.select && needs_gradients(parse_criterion(m.select->criterion, "mask select"))) {
      pending_selects_.push_back(m);  // needs data: select_masks() runs it before training
      for (auto& [name, t] : base_params)
        if (std::count(names.begin(), names.end(), name)) chosen[name] = Tensor::zeros(t.shape());
    } else if (m.select) {
      chosen = select(m, {});
    } else if (!m.file.empty()) {
      std::map<std::string, Tensor> file = load_safetensors(m.file).tensors;
      for (auto& [name, t] : base_params)
        if (std::count(names.begin(), names.end(), name)) chosen[name] = mask_from_file(file, m.file, name, t.shape());
    } else {
      for (auto& [name, t] : base_params) {
        if (!std::count(names.begin(), names.end(), name)) continue;
        Tensor u = Tensor::empty(t.shape());
        Generator mg(m.seed ^ std::hash<std::string>{}(name));
        mg.uniform_(u);
        std::vector<double> uv = u.to_vector();
        for (double& v : uv) v = v < m.density ? 1.0 : 0.0;
        chosen[name] = Tensor::from_vector(uv, t.shape()).to(DType::F32);
      }
    }
    for (auto& [name, t] : base_params)
      if (chosen.count(name)) {
        masks_[name] = chosen[name].to(t.dtype()).to(t.device());
        Tensor(t).set_requires_grad(true);
      }
  }
}

std::map<std::string, Tensor> PeftModel::select(const MaskConfig& m, const BatchSource& data) {
  std::vector<std::string> names;
  for (auto& [name, t] : base_.named_parameters(false))
    if (nn::glob_match(m.tensor, name)) names.push_back(name);
  const Criterion c = parse_criterion(m.select->criterion, "mask select");
  return top_k_masks(sensitivity_scores(base_, names, c, m.select->batches, data, m.select->seed), m.select->budget,
                     m.select->global);
}

void PeftModel::select_masks(const BatchSource& data) {
  for (const MaskConfig& m : pending_selects_)
    for (auto& [name, mask] : select(m, data)) masks_[name] = mask.to(masks_.at(name).dtype()).to(masks_.at(name).device());
  pending_selects_.clear();
}

int64_t PeftModel::pending_selection_count() const {
  int64_t count = 0;
  for (const MaskConfig& m : pending_selects_) {
    int64_t matched = 0;
    for (auto& [name, t] : base_.named_parameters(false))
      if (nn::glob_match(m.tensor, name)) {
        if (!m.select->global) count += std::llround(m.select->budget * double(t.numel()));
        matched += t.numel();
      }
    if (m.select->global) count += std::llround(m.select->budget * double(matched));
  }
  return count;
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

std::pair<int64_t, int64_t> PeftModel::base_trainable_counts() const {
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
  return {base_trainable, masked};
}

int64_t PeftModel::trainable_count() const {
  int64_t n = 0;
  for (const auto& [name, list] : deltas_)
    for (const auto& [site, d] : list) n += static_cast<MethodDelta&>(*d).trainable_count();
  const auto [base_trainable, masked] = base_trainable_counts();
  return n + base_trainable + masked;
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
  const auto [base_trainable, masked] = base_trainable_counts();
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

}  // namespace dg::peft
