// Module: a node of the model tree with named parameters, buffers and children, and
// sites where deltas attach. Parameter names are hierarchical and match timm's
// ("blocks.0.attn.qkv.weight"). Trainability (requires_grad) is a per-tensor flag set by
// name globs; train()/eval() switch dropout and never touch it.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "nn/delta.h"

namespace dg::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  virtual ~Module() = default;

  // Run the module through its own site: enabled Pre deltas in reverse insertion order
  // transform the input, forward() runs, enabled Post deltas in insertion order transform
  // the output (OpenDelta's convention).
  Tensor operator()(const Tensor& x);
  virtual Tensor forward(const Tensor& x) = 0;

  // Parameters (and delta parameters, named "<site>.<delta>.<tensor>"), recursively.
  NamedTensors named_parameters(bool with_deltas = true) const;
  NamedTensors named_buffers() const;
  std::vector<std::pair<std::string, Module*>> named_modules();
  Module* find_module(const std::string& path);  // nullptr if absent
  // Every place a delta can attach: module paths ("" is the root) and inner points
  // ("blocks.0.mlp_branch").
  std::vector<std::string> sites();

  void train(bool mode = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  // requires_grad on parameters whose name matches the glob; returns how many matched.
  int set_trainable(const std::string& glob, bool trainable);
  void freeze_all();

  // Deltas at a site: `site` is a module path, or "<module path>.<point>".
  void add_delta(const std::string& site, std::shared_ptr<Delta> d);
  std::shared_ptr<Delta> remove_delta(const std::string& site, const std::string& name);
  std::vector<std::pair<std::string, std::shared_ptr<Delta>>> all_deltas();  // (site, delta)
  // The same on this module's own site (its input/output).
  void add_delta(std::shared_ptr<Delta> d) { add_delta("", std::move(d)); }
  std::shared_ptr<Delta> remove_delta(const std::string& name) { return remove_delta("", name); }
  std::shared_ptr<Delta> find_delta(const std::string& name) const;  // nullptr if absent
  std::vector<std::shared_ptr<Delta>> deltas() const;                // insertion order
  // The enabled Pre delta at this module's own site that sees its input first (operator()
  // applies them in reverse insertion order); nullptr if none.
  Delta* first_pre_delta() const;

 protected:
  Tensor& register_parameter(const std::string& name, Tensor t);
  Tensor& register_buffer(const std::string& name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }
  void declare_point(const std::string& point) { points_.push_back(point); }
  // Apply the Post deltas attached at one of this module's inner points.
  Tensor point(const std::string& name, const Tensor& input, const Tensor& output);
  // Whether an enabled delta at that point reads the point's input (Delta::reads_site_input).
  bool point_reads_input(const std::string& name) const;

 private:
  friend class ModuleAccess;
  NamedTensors params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  std::vector<std::string> points_;
  std::map<std::string, std::vector<std::shared_ptr<Delta>>> deltas_;  // "" = the module itself
  bool training_ = true;
  void collect(const std::string& prefix, NamedTensors& out, bool buffers, bool with_deltas) const;
  Module* resolve_site(const std::string& site, std::string& point);
};

}  // namespace dg::nn
