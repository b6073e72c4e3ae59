#include "autograd/op_registry.h"

namespace dg {

std::vector<const OpDef*>& all_ops() {
  static std::vector<const OpDef*> v;
  return v;
}
std::vector<GradCheckEntry>& all_gradchecks() {
  static std::vector<GradCheckEntry> v;
  return v;
}
OpDef::OpDef(const char* n) : name(n) { all_ops().push_back(this); }
GradCheckRegistrar::GradCheckRegistrar(const char* op, std::function<std::vector<GradCheckCase>()> cases) {
  all_gradchecks().push_back({op, std::move(cases)});
}

}  // namespace dg
