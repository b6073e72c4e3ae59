#include "peft/method_registry.h"

#include <algorithm>

#include "autograd/tape.h"
#include "nn/glob.h"

namespace dg::peft {

void MethodDelta::merge() { throw Error(str("delta '", name, "' (", method(), ") cannot be merged into the base")); }
void MethodDelta::unmerge() { throw Error(str("delta '", name, "' (", method(), ") cannot be merged into the base")); }

int64_t MethodDelta::trainable_count() {
  int64_t n = 0;
  for (auto& [pn, t] : named_parameters())
    if (t.requires_grad()) n += t.numel();
  return n;
}

void MergeOriginals::keep(std::initializer_list<Tensor> live) {
  NoGradGuard ng;
  saved_.clear();
  for (const Tensor& t : live) saved_.push_back(t.defined() ? t.clone() : Tensor());
}

void MergeOriginals::restore(std::initializer_list<Tensor> live) {
  DG_CHECK(live.size() == saved_.size(), "MergeOriginals: restore of ", live.size(), " tensors, ", saved_.size(), " kept");
  NoGradGuard ng;
  size_t i = 0;
  for (Tensor t : live) {
    if (saved_[i].defined()) t.copy_(saved_[i]);
    ++i;
  }
  saved_.clear();
}

namespace {
std::vector<MethodDef>& storage() {
  static std::vector<MethodDef> defs;  // static-init order across files is unspecified: sorted on read
  return defs;
}
}  // namespace

MethodRegistrar::MethodRegistrar(MethodDef def) {
  for (const MethodDef& d : storage())
    DG_CHECK(d.name != def.name, "PEFT method '", def.name, "' is registered twice");
  storage().push_back(std::move(def));
}

const std::vector<const MethodDef*>& all_methods() {
  static std::vector<const MethodDef*> list = [] {
    std::vector<const MethodDef*> l;
    for (const MethodDef& d : storage()) l.push_back(&d);
    std::stable_sort(l.begin(), l.end(), [](const MethodDef* a, const MethodDef* b) {
      return a->order != b->order ? a->order < b->order : a->name < b->name;
    });
    return l;
  }();
  return list;
}

std::string method_names(const std::function<bool(const MethodDef&)>& keep) {
  std::string s;
  for (const MethodDef* d : all_methods())
    if (!keep || keep(*d)) s += (s.empty() ? "" : ", ") + d->name;
  return s;
}

const MethodDef& find_method(const std::string& name, const std::string& where) {
  for (const MethodDef* d : all_methods())
    if (d->name == name) return *d;
  throw Error(str(where, ": unknown method '", name, "' (known: ", method_names(), ")"));
}

bool is_fused_qkv(const std::string& path) {
  return path.size() >= 8 && path.compare(path.size() - 8, 8, "attn.qkv") == 0;
}

std::vector<std::pair<std::string, nn::Linear*>> linear_targets(nn::Module& base, const std::vector<std::string>& globs,
                                                                const std::string& who) {
  std::vector<std::pair<std::string, nn::Linear*>> out;
  for (auto& [path, m] : base.named_modules()) {
    if (!nn::glob_match_any(globs, path)) continue;
    auto* lin = dynamic_cast<nn::Linear*>(m);
    if (!lin) {
      const bool exact = std::find(globs.begin(), globs.end(), path) != globs.end();
      DG_CHECK(!exact, who, ": target '", path, "' is not a Linear layer");
      continue;
    }
    out.emplace_back(path, lin);
  }
  return out;
}

}  // namespace dg::peft
