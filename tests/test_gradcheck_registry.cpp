// Every OpDef must have a gradient check, and every check must pass in float64.
#include <set>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tests/test_util.h"

using namespace dg;

TEST_CASE("registry: every differentiable op has a float64 gradient check") {
  std::set<std::string> checked;
  for (const GradCheckEntry& e : all_gradchecks()) checked.insert(e.op);
  REQUIRE(all_ops().size() >= 10);
  for (const OpDef* op : all_ops()) {
    INFO("op '", op->name, "' has no DG_GRADCHECK beside its backward");
    CHECK(checked.count(op->name) == 1);
  }
  // and no check names an op that does not exist
  std::set<std::string> ops;
  for (const OpDef* op : all_ops()) ops.insert(op->name);
  for (const std::string& c : checked) {
    INFO("gradient check '", c, "' names no registered OpDef");
    CHECK(ops.count(c) == 1);
  }
}

TEST_CASE("registry: all gradient checks pass") {
  int ncases = 0;
  for (const GradCheckEntry& e : all_gradchecks()) {
    for (const GradCheckCase& c : e.cases()) {
      GradCheckResult r = gradcheck(c);
      INFO(e.op, " / ", c.label, ": max abs err ", r.max_abs_err, ", max rel err ", r.max_rel_err, "\n", r.report);
      CHECK(r.ok);
      CHECK(r.checked > 0);
      ++ncases;
    }
  }
  MESSAGE("gradient checks run: ", ncases);
  CHECK(ncases >= int(all_ops().size()));
}

TEST_CASE("gradcheck catches a wrong backward") {
  // f(x) = x * detach(x): the tape's derivative is x, the true one (what central
  // differences see, since detach(x) moves with x) is 2x. The harness must fail it.
  GradCheckCase c{"wrong derivative", [] { return std::vector<Tensor>{randn64({4}, 3)}; },
                  [](const std::vector<Tensor>& x) { return mul(x[0], x[0].detach().clone()); }};
  GradCheckResult r = gradcheck(c);
  CHECK_FALSE(r.ok);
}
