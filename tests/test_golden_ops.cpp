// Parity with PyTorch: every op's forward value and gradients, and one MLP training
// step, against fixtures written by scripts/make_op_golden.py (torch 1.13, float32).
#include <functional>
#include <map>

#include "autograd/ops.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

using namespace dg;

namespace {

const SafeTensors& golden() {
  static SafeTensors st = load_safetensors(DG_SOURCE_DIR "/tests/fixtures/ops_golden.safetensors");
  return st;
}
Tensor G(const std::string& k) {
  auto it = golden().tensors.find(k);
  REQUIRE_MESSAGE(it != golden().tensors.end(), "fixture tensor '", k, "' missing");
  return it->second;
}
bool has(const std::string& k) { return golden().tensors.count(k) > 0; }

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

void check_case(const std::string& name, int n_in, const Fn& fn) {
  INFO("case ", name);
  tape().clear();
  std::vector<Tensor> in;
  for (int i = 0; i < n_in; ++i) {
    Tensor t = G(name + ".in" + std::to_string(i)).clone();
    if (has(name + ".grad" + std::to_string(i))) t.set_requires_grad(true);
    in.push_back(t);
  }
  Tensor out = fn(in);
  Tensor want = G(name + ".out");
  REQUIRE(out.shape() == want.shape());
  CHECK(test::rel_err(out, want) < 1e-5);
  tape().backward(out, G(name + ".w"));
  for (int i = 0; i < n_in; ++i) {
    const std::string k = name + ".grad" + std::to_string(i);
    if (!has(k)) continue;
    INFO("gradient of input ", i);
    REQUIRE(in[size_t(i)].grad().defined());
    CHECK(test::rel_err(in[size_t(i)].grad(), G(k)) < 1e-5);
  }
}

}  // namespace

TEST_CASE("golden: every op matches PyTorch, forward and gradients") {
  const std::map<std::string, std::pair<int, Fn>> cases = {
      {"matmul", {2, [](auto& x) { return matmul(x[0], x[1]); }}},
      {"matmul_batched_bt", {2, [](auto& x) { return matmul(x[0], x[1], false, true); }}},
      {"linear", {3, [](auto& x) { return linear(x[0], x[1], x[2]); }}},
      {"add_broadcast", {2, [](auto& x) { return add(x[0], x[1]); }}},
      {"sub", {2, [](auto& x) { return sub(x[0], x[1]); }}},
      {"mul_broadcast", {2, [](auto& x) { return mul(x[0], x[1]); }}},
      {"div", {2, [](auto& x) { return div(x[0], x[1]); }}},
      {"neg", {1, [](auto& x) { return neg(x[0]); }}},
      {"exp", {1, [](auto& x) { return exp(x[0]); }}},
      {"tanh", {1, [](auto& x) { return tanh(x[0]); }}},
      {"erf", {1, [](auto& x) { return erf(x[0]); }}},
      {"sigmoid", {1, [](auto& x) { return sigmoid(x[0]); }}},
      {"abs", {1, [](auto& x) { return abs(x[0]); }}},
      {"relu", {1, [](auto& x) { return relu(x[0]); }}},
      {"log", {1, [](auto& x) { return log(x[0]); }}},
      {"sqrt", {1, [](auto& x) { return sqrt(x[0]); }}},
      {"gelu", {1, [](auto& x) { return gelu(x[0]); }}},
      {"add_scalar", {1, [](auto& x) { return add_scalar(x[0], 1.5); }}},
      {"mul_scalar", {1, [](auto& x) { return mul_scalar(x[0], -0.7); }}},
      {"pow_scalar", {1, [](auto& x) { return pow_scalar(x[0], 2.5); }}},
      {"sum_dims", {1, [](auto& x) { return sum(x[0], {0, 2}, true); }}},
      {"mean_dim", {1, [](auto& x) { return mean(x[0], {1}); }}},
      {"max_dim", {1, [](auto& x) { return max(x[0], 1); }}},
      {"softmax", {1, [](auto& x) { return softmax(x[0], -1); }}},
      {"softmax_dim1", {1, [](auto& x) { return softmax(x[0], 1); }}},
      {"log_softmax", {1, [](auto& x) { return log_softmax(x[0], -1); }}},
      {"layer_norm", {3, [](auto& x) { return layer_norm(x[0], x[1], x[2], 1e-6); }}},
      {"cross_entropy", {2, [](auto& x) { return cross_entropy(x[0], x[1]); }}},
      {"cross_entropy_smooth", {2, [](auto& x) { return cross_entropy(x[0], x[1], 0.1); }}},
      {"transpose", {1, [](auto& x) { return transpose(x[0], 0, 2); }}},
      {"permute", {1, [](auto& x) { return permute(x[0], {2, 0, 1}); }}},
      {"reshape", {1, [](auto& x) { return reshape(x[0], {6, 4}); }}},
      {"expand", {1, [](auto& x) { return expand(x[0], {2, 3, 4}); }}},
      {"slice", {1, [](auto& x) { return slice(x[0], 1, 1, 3); }}},
      {"concat", {2, [](auto& x) { return concat({x[0], x[1]}, 1); }}},
      {"index_select", {2, [](auto& x) { return index_select(x[0], x[1]); }}},
      {"patch_embed", {3, [](auto& x) { return linear(patchify(x[0], 4), reshape(x[1], {5, -1}), x[2]); }}},
  };
  for (const auto& [name, c] : cases) check_case(name, c.first, c.second);
  // every case in the fixture is exercised
  int fixture_cases = 0;
  for (const auto& [k, t] : golden().tensors)
    if (k.size() > 4 && k.compare(k.size() - 4, 4, ".out") == 0) ++fixture_cases;
  CHECK(fixture_cases == int(cases.size()));
}

TEST_CASE("golden: a 2-layer MLP training step matches PyTorch") {
  tape().clear();
  std::map<std::string, Tensor> p;
  for (const char* k : {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"})
    p[k] = G(std::string("mlp.") + k).clone().set_requires_grad(true);
  Tensor logits = linear(gelu(linear(G("mlp.x"), p["fc1.weight"], p["fc1.bias"])), p["fc2.weight"], p["fc2.bias"]);
  Tensor loss = cross_entropy(logits, G("mlp.y"));
  CHECK(loss.item() == doctest::Approx(G("mlp.loss").item()).epsilon(1e-6));
  backward(loss);
  NoGradGuard ng;
  for (auto& [k, t] : p) {
    INFO(k);
    CHECK(test::rel_err(t.grad(), G("mlp.grad." + k)) < 1e-5);
    t.copy_(sub(t, mul_scalar(t.grad(), 0.1)));
    CHECK(test::rel_err(t, G("mlp.after_sgd." + k)) < 1e-6);
  }
}
