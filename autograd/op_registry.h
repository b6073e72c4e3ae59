// Every differentiable op declares one OpDef (a name the tape prints) and one gradient
// check next to its forward and backward. The registry test runs every check and fails
// when an OpDef has none, so an op cannot land without its float64 gradient check.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dg {

struct OpDef {
  const char* name;
  explicit OpDef(const char* name);  // registers itself
};

// A gradient-check case: make float64 inputs (which ones require grad is set on them),
// and a function from inputs to an output tensor. gradcheck() compares the tape's
// gradients of sum(out * w) (w fixed random) against central differences.
struct GradCheckCase {
  std::string label;
  std::function<std::vector<Tensor>()> make_inputs;
  std::function<Tensor(const std::vector<Tensor>&)> fn;
  double tol = 1e-5;  // relative tolerance (gradcheck adds an absolute 1e-7)
};

struct GradCheckEntry {
  const char* op;
  std::function<std::vector<GradCheckCase>()> cases;
};

std::vector<const OpDef*>& all_ops();
std::vector<GradCheckEntry>& all_gradchecks();

struct GradCheckRegistrar {
  GradCheckRegistrar(const char* op, std::function<std::vector<GradCheckCase>()> cases);
};

}  // namespace dg

// DG_GRADCHECK(matmul) { return {cases...}; }  -- place beside the op's backward.
#define DG_GRADCHECK(opname)                                                                   \
  static std::vector<::dg::GradCheckCase> dg_gradcheck_##opname();                             \
  static ::dg::GradCheckRegistrar dg_gradcheck_reg_##opname(#opname, dg_gradcheck_##opname);   \
  static std::vector<::dg::GradCheckCase> dg_gradcheck_##opname()
