#include "nn/module.h"

#include <algorithm>

#include "autograd/cost_meter.h"
#include "core/error.h"
#include "nn/glob.h"

namespace dg::nn {

static std::string join(const std::string& a, const std::string& b) {
  return a.empty() ? b : b.empty() ? a : a + "." + b;
}

Tensor& Module::register_parameter(const std::string& name, Tensor t) {
  t.set_name(name);
  params_.emplace_back(name, t);
  return params_.back().second;
}

Tensor& Module::register_buffer(const std::string& name, Tensor t) {
  buffers_.emplace_back(name, t);
  return buffers_.back().second;
}

// The delta's ops are recorded (and their FLOPs counted) as the delta's: `deltagrad cost`.
static Tensor apply_scoped(Delta& d, const Tensor& input, const Tensor& output) {
  CostScopeGuard scope(&d);
  return d.apply(input, output);
}

Tensor Module::operator()(const Tensor& x) {
  auto it = deltas_.find("");
  if (it == deltas_.end() || it->second.empty()) return forward(x);
  const auto& ds = it->second;
  Tensor in = x;
  for (auto d = ds.rbegin(); d != ds.rend(); ++d)
    if ((*d)->enabled && (*d)->position() == Delta::Position::Pre) in = apply_scoped(**d, in, Tensor());
  Tensor out = forward(in);
  for (const auto& d : ds)
    if (d->enabled && d->position() == Delta::Position::Post) out = apply_scoped(*d, in, out);
  return out;
}

Delta* Module::first_pre_delta() const {
  auto it = deltas_.find("");
  if (it == deltas_.end()) return nullptr;
  for (auto d = it->second.rbegin(); d != it->second.rend(); ++d)
    if ((*d)->enabled && (*d)->position() == Delta::Position::Pre) return d->get();
  return nullptr;
}

Tensor Module::point(const std::string& name, const Tensor& input, const Tensor& output) {
  auto it = deltas_.find(name);
  if (it == deltas_.end()) return output;
  Tensor out = output;
  for (const auto& d : it->second)
    if (d->enabled) out = apply_scoped(*d, input, out);
  return out;
}

bool Module::point_reads_input(const std::string& name) const {
  auto it = deltas_.find(name);
  if (it == deltas_.end()) return false;
  for (const auto& d : it->second)
    if (d->enabled && d->reads_site_input()) return true;
  return false;
}

void Module::collect(const std::string& prefix, NamedTensors& out, bool buffers, bool with_deltas) const {
  for (const auto& [n, t] : buffers ? buffers_ : params_) out.emplace_back(join(prefix, n), t);
  if (!buffers && with_deltas)
    for (const auto& [pt, ds] : deltas_)
      for (const auto& d : ds)
        for (const auto& [n, t] : d->named_parameters()) out.emplace_back(join(join(join(prefix, pt), d->name), n), t);
  for (const auto& [n, c] : children_) c->collect(join(prefix, n), out, buffers, with_deltas);
}

NamedTensors Module::named_parameters(bool with_deltas) const {
  NamedTensors out;
  collect("", out, false, with_deltas);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", out, true, false);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() {
  std::vector<std::pair<std::string, Module*>> out{{"", this}};
  for (const auto& [n, c] : children_)
    for (auto& [cn, cm] : c->named_modules()) out.emplace_back(join(n, cn), cm);
  return out;
}

Module* Module::find_module(const std::string& path) {
  for (auto& [n, m] : named_modules())
    if (n == path) return m;
  return nullptr;
}

std::vector<std::string> Module::sites() {
  std::vector<std::string> out;
  for (auto& [n, m] : named_modules()) {
    out.push_back(n);
    for (const std::string& p : m->points_) out.push_back(join(n, p));
  }
  return out;
}

void Module::train(bool mode) {
  training_ = mode;
  for (auto& [pt, ds] : deltas_)
    for (auto& d : ds) d->train(mode);
  for (auto& [n, c] : children_) c->train(mode);
}

int Module::set_trainable(const std::string& glob, bool trainable) {
  int n = 0;
  for (auto& [name, t] : named_parameters())
    if (glob_match(glob, name)) {
      Tensor p = t;
      p.set_requires_grad(trainable);
      ++n;
    }
  return n;
}

void Module::freeze_all() {
  for (auto& [name, t] : named_parameters()) {
    Tensor p = t;
    p.set_requires_grad(false);
  }
}

Module* Module::resolve_site(const std::string& site, std::string& point) {
  if (Module* m = find_module(site)) {
    point.clear();
    return m;
  }
  const size_t dot = site.rfind('.');
  const std::string parent = dot == std::string::npos ? "" : site.substr(0, dot);
  point = dot == std::string::npos ? site : site.substr(dot + 1);
  Module* m = find_module(parent);
  if (m && std::find(m->points_.begin(), m->points_.end(), point) != m->points_.end()) return m;
  throw Error(str("no site '", site, "' in the model (sites are module paths such as 'blocks.0.attn.qkv' ",
                  "and inner points such as 'blocks.0.mlp_branch')"));
}

void Module::add_delta(const std::string& site, std::shared_ptr<Delta> d) {
  std::string pt;
  Module* m = resolve_site(site, pt);
  DG_CHECK(pt.empty() || d->position() == Delta::Position::Post, "delta '", d->name, "' at inner point '", site,
           "': only Post deltas attach to inner points");
  auto& list = m->deltas_[pt];
  for (const auto& e : list) DG_CHECK(e->name != d->name, "site '", site, "' already has a delta named '", d->name, "'");
  d->train(m->training_);
  list.push_back(std::move(d));
}

std::shared_ptr<Delta> Module::remove_delta(const std::string& site, const std::string& name) {
  std::string pt;
  Module* m = resolve_site(site, pt);
  auto& list = m->deltas_[pt];
  for (auto it = list.begin(); it != list.end(); ++it)
    if ((*it)->name == name) {
      auto d = *it;
      list.erase(it);
      return d;
    }
  throw Error(str("site '", site, "' has no delta named '", name, "'"));
}

std::shared_ptr<Delta> Module::find_delta(const std::string& name) const {
  auto it = deltas_.find("");
  if (it != deltas_.end())
    for (const auto& d : it->second)
      if (d->name == name) return d;
  return nullptr;
}

std::vector<std::shared_ptr<Delta>> Module::deltas() const {
  auto it = deltas_.find("");
  return it == deltas_.end() ? std::vector<std::shared_ptr<Delta>>{} : it->second;
}

std::vector<std::pair<std::string, std::shared_ptr<Delta>>> Module::all_deltas() {
  std::vector<std::pair<std::string, std::shared_ptr<Delta>>> out;
  for (auto& [n, m] : named_modules())
    for (auto& [pt, ds] : m->deltas_)
      for (auto& d : ds) out.emplace_back(join(n, pt), d);
  return out;
}

}  // namespace dg::nn
