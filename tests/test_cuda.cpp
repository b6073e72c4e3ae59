// GPU against CPU: every op forward and backward, the backend primitives the ops do not
// reach directly, and a whole ViT training step with LoRA. Each case skips with one line
// when no GPU (or no CUDA build) is present.
#include <functional>

#include <nlohmann/json.hpp>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "core/backend.h"
#include "core/random.h"
#include "cuda/cuda_api.h"
#include "nn/device.h"
#include "nn/optim.h"
#include "peft/peft_model.h"
#include "tests/test_util.h"

using namespace dg;
using nlohmann::json;

namespace {
bool gpu() {
  if (backend_available(Device::CUDA)) return true;
  test::skip("no CUDA device (or a build without CUDA)");
  return false;
}
Tensor rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  Tensor t = Tensor::empty(s);
  Generator(seed).uniform_(t, lo, hi);
  return t;
}
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
// Run fn on CPU and GPU copies of the inputs (all trainable floats), compare the output and
// every input gradient (relative error of the whole tensor).
void both(const char* what, std::vector<Tensor> in, const Fn& fn, double tol = 1e-5) {
  INFO(what);
  std::vector<Tensor> c, g;
  for (const Tensor& t : in) {
    Tensor a = t.clone(), b = t.to(Device::CUDA);
    if (is_float(t.dtype())) a.set_requires_grad(true), b.set_requires_grad(true);
    c.push_back(a);
    g.push_back(b);
  }
  tape().clear();
  Tensor yc = fn(c);
  Tensor w = rnd(yc.shape(), 99);
  tape().backward(yc, w);
  Tensor yg = fn(g);
  CHECK(yg.device() == Device::CUDA);
  tape().backward(yg, w.to(Device::CUDA));
  CHECK(test::rel_err(yg.to(Device::CPU), yc) < tol);
  for (size_t i = 0; i < in.size(); ++i)
    if (c[i].grad().defined()) {
      INFO("gradient of input ", i);
      REQUIRE(g[i].grad().defined());
      CHECK(test::rel_err(g[i].grad().to(Device::CPU), c[i].grad()) < tol);
    }
}
}  // namespace

TEST_CASE("cuda: every op matches the CPU, forward and backward") {
  if (!gpu()) return;
  std::printf("GPU: %s\n", cuda::device_name());
  both("matmul", {rnd({3, 5, 7}, 1), rnd({7, 4}, 2)}, [](auto& x) { return matmul(x[0], x[1]); });
  both("matmul batched ta tb", {rnd({2, 7, 5}, 3), rnd({2, 4, 7}, 4)}, [](auto& x) { return matmul(x[0], x[1], true, true); });
  both("linear", {rnd({2, 9, 16}, 5), rnd({24, 16}, 6), rnd({24}, 7)}, [](auto& x) { return linear(x[0], x[1], x[2]); });
  both("add broadcast", {rnd({2, 3, 4}, 8), rnd({4}, 9)}, [](auto& x) { return add(x[0], x[1]); });
  both("sub", {rnd({3, 4}, 10), rnd({3, 1}, 11)}, [](auto& x) { return sub(x[0], x[1]); });
  both("mul", {rnd({2, 1, 4}, 12), rnd({3, 1}, 13)}, [](auto& x) { return mul(x[0], x[1]); });
  both("div", {rnd({3, 4}, 14), rnd({3, 4}, 15, 0.5, 2)}, [](auto& x) { return div(x[0], x[1]); });
  for (auto [name, f] : std::vector<std::pair<const char*, Tensor (*)(const Tensor&)>>{
           {"neg", neg}, {"exp", exp}, {"tanh", tanh}, {"erf", erf}, {"gelu", gelu}, {"relu", relu}, {"sigmoid", sigmoid},
           {"abs", abs}})
    both(name, {rnd({5, 33}, 16)}, [f = f](auto& x) { return f(x[0]); });
  both("log", {rnd({4, 4}, 17, 0.2, 2)}, [](auto& x) { return log(x[0]); });
  both("sqrt", {rnd({4, 4}, 18, 0.2, 2)}, [](auto& x) { return sqrt(x[0]); });
  both("pow_scalar", {rnd({4, 4}, 19, 0.2, 2)}, [](auto& x) { return pow_scalar(x[0], 2.5); });
  both("add/mul scalar", {rnd({4, 4}, 20)}, [](auto& x) { return mul_scalar(add_scalar(x[0], 1.5), -0.7); });
  both("sum dims", {rnd({3, 40, 5}, 21)}, [](auto& x) { return sum(x[0], {0, 2}, true); });
  both("sum last", {rnd({7, 300}, 22)}, [](auto& x) { return sum(x[0], {-1}); });
  both("mean", {rnd({3, 4, 5}, 23)}, [](auto& x) { return mean(x[0], {1}); });
  both("max", {rnd({4, 9, 3}, 24)}, [](auto& x) { return max(x[0], 1); });
  both("softmax", {rnd({6, 197}, 25)}, [](auto& x) { return softmax(x[0], -1); });
  both("softmax dim 1", {rnd({2, 5, 3}, 26)}, [](auto& x) { return softmax(x[0], 1); });
  both("log_softmax", {rnd({6, 10}, 27)}, [](auto& x) { return log_softmax(x[0], -1); });
  both("layer_norm", {rnd({4, 50, 48}, 28), rnd({48}, 29), rnd({48}, 30)},
       [](auto& x) { return layer_norm(x[0], x[1], x[2], 1e-6); }, 1e-4);
  Tensor labels = Tensor::from_vector(std::vector<int64_t>{3, 0, -1, 9, 2}, {5});
  both("cross_entropy", {rnd({5, 10}, 31), labels}, [](auto& x) { return cross_entropy(x[0], x[1], 0.1); });
  both("dropout", {rnd({8, 64}, 32)}, [](auto& x) { return dropout(x[0], 0.3, true, 1234); });
  both("shape ops", {rnd({2, 3, 4}, 33)}, [](auto& x) {
    return reshape(contiguous(permute(slice(unsqueeze(transpose(x[0], 0, 2), 0), 2, 1, 3), {0, 2, 1, 3})), {-1});
  });
  both("expand", {rnd({3, 1}, 34)}, [](auto& x) { return expand(x[0], {2, 3, 5}); });
  both("concat", {rnd({2, 1, 3}, 35), rnd({2, 4, 3}, 36)}, [](auto& x) { return concat({x[0], x[1]}, 1); });
  both("index_select", {rnd({6, 5}, 37), Tensor::from_vector(std::vector<int64_t>{5, 0, 5, 2}, {4})},
       [](auto& x) { return index_select(x[0], x[1]); });
  both("patchify", {rnd({2, 3, 8, 12}, 38)}, [](auto& x) { return patchify(x[0], 4); });
}

TEST_CASE("cuda: backend primitives (random streams, copies, AdamW with masks, sum of squares)") {
  if (!gpu()) return;
  Backend& g = backend(Device::CUDA);
  Backend& c = backend(Device::CPU);
  Tensor a = Tensor::empty({1000}), b = Tensor::empty({1000}, DType::F32, Device::CUDA);
  c.random_normal(a, 7, 11, 0, 1);
  g.random_normal(b, 7, 11, 0, 1);
  CHECK(test::rel_err(b.to(Device::CPU), a) < 1e-6);  // same Philox stream on both devices
  c.random_uniform(a, 3, 0, -2, 2);
  g.random_uniform(b, 3, 0, -2, 2);
  CHECK(test::rel_err(b.to(Device::CPU), a) < 1e-6);
  // strided + dtype-converting copies on the device
  Tensor x = rnd({4, 6}, 40);
  Tensor xg = x.to(Device::CUDA);
  CHECK(view::transpose(xg, 0, 1).contiguous().to(Device::CPU).to_vector() == view::transpose(x, 0, 1).contiguous().to_vector());
  CHECK(test::rel_err(xg.to(DType::F64).to(Device::CPU), x.to(DType::F64)) == 0);
  // AdamW with a mask and weight decay
  Tensor p = rnd({300}, 41), gr = rnd({300}, 42), mask = rnd({300}, 43, 0, 1);
  std::vector<double> mv = mask.to_vector();
  for (double& v : mv) v = v < 0.5 ? 0 : 1;
  mask = Tensor::from_vector(mv, {300}).to(DType::F32);
  Tensor m = Tensor::zeros({300}), v = Tensor::zeros({300});
  Tensor pg = p.to(Device::CUDA), gg = gr.to(Device::CUDA), mg = m.to(Device::CUDA), vg = v.to(Device::CUDA);
  for (int64_t s = 1; s <= 3; ++s) {
    Backend::AdamW h{1e-2, 0.9, 0.999, 1e-8, 0.1, s};
    c.adamw(h, p, gr, m, v, mask);
    g.adamw(h, pg, gg, mg, vg, mask.to(Device::CUDA));
  }
  CHECK(test::rel_err(pg.to(Device::CPU), p) < 1e-6);
  CHECK(test::rel_err(vg.to(Device::CPU), v) < 1e-6);
  CHECK(g.sum_squares(pg) == doctest::Approx(c.sum_squares(p)).epsilon(1e-6));
  CHECK(cuda::peak_bytes() > 0);
}

TEST_CASE("cuda: a ViT training step with LoRA on the GPU matches the CPU step") {
  if (!gpu()) return;
  json mc = {{"img_size", 32}, {"patch_size", 8}, {"in_chans", 3}, {"embed_dim", 48}, {"depth", 3}, {"num_heads", 4},
             {"num_classes", 7}};
  json pc = {{"deltas", {{{"name", "lora"}, {"method", "lora"}, {"r", 4}, {"init", "random"}}}}, {"trainable", {"head.*"}}};
  std::vector<double> losses[2];
  std::map<std::string, std::vector<double>> after[2];
  Tensor x = rnd({4, 3, 32, 32}, 50);
  Tensor y = Tensor::from_vector(std::vector<int64_t>{1, 6, 0, 3}, {4});
  for (int d = 0; d < 2; ++d) {
    const Device dev = d ? Device::CUDA : Device::CPU;
    tape().clear();
    nn::VisionTransformer m(nn::vit_config_from_json(mc));
    peft::PeftModel pm(m, peft::parse_peft_config(pc), 3);
    nn::move_to(m, dev);
    m.eval();
    nn::AdamW opt(pm.trainable_parameters(), 1e-2, 0.05);
    for (int s = 0; s < 3; ++s) {
      opt.zero_grad();
      Tensor loss = cross_entropy(pm.forward(x.to(dev)), y.to(dev));
      losses[d].push_back(loss.item());
      backward(loss);
      opt.step();
    }
    for (auto& [n, t] : pm.trainable_parameters()) after[d][n] = t.to(Device::CPU).to_vector();
  }
  for (int s = 0; s < 3; ++s) CHECK(losses[1][size_t(s)] == doctest::Approx(losses[0][size_t(s)]).epsilon(1e-5));
  for (auto& [n, v] : after[0]) {
    INFO(n);
    Tensor a = Tensor::from_vector(v, {int64_t(v.size())}), b = Tensor::from_vector(after[1][n], {int64_t(v.size())});
    CHECK(test::rel_err(b, a) < 1e-4);
  }
}
