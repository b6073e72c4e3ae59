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

// device_check is what runs every op on CUDA against the CPU (tests/test_cuda.cpp); here it runs
// CPU against CPU, so every case must agree exactly, and a function that answers differently the
// second time (as a broken kernel would on the device) must be caught.
TEST_CASE("registry: device_check runs every case on two devices and catches a difference") {
  int cases = 0;
  for (const GradCheckEntry& e : all_gradchecks())
    for (const GradCheckCase& c : e.cases())
      for (DType dt : {DType::F32, DType::F64}) {
        const DeviceCheckResult r = device_check(c, Device::CPU, dt, 0.0);
        CHECK_MESSAGE(r.ok, e.op, " / ", c.label, ": ", r.report);
        ++cases;
      }
  CHECK(cases >= 2 * int(all_ops().size()));
  int calls = 0;
  GradCheckCase drifting{"scale drifts", [] { return std::vector<Tensor>{randn64({3, 4}, 1)}; },
                         [&calls](const std::vector<Tensor>& x) { return mul_scalar(x[0], ++calls == 1 ? 2.0 : 2.001); }};
  const DeviceCheckResult bad = device_check(drifting, Device::CPU, DType::F64, 1e-6);
  CHECK(!bad.ok);
  CHECK(bad.max_err == doctest::Approx(0.0005).epsilon(1e-6));
  CHECK(bad.report.find("output") != std::string::npos);
  CHECK(bad.report.find("gradient of input 0") != std::string::npos);
}
