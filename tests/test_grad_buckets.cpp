// The gradient buckets of a data-parallel step (train/grad_bucket.h, train/grad_reducer.h): the
// weighting, the start of each bucket as its gradients become final, the rebuild in the order
// backward finished them, and, run by mpirun with 2, 3 and 4 ranks, that an element's sum does
// not depend on the bucket it travels in. The trainer's runs are in tests/test_dist.cpp.
#include <cmath>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/comm.h"
#include "nn/vit.h"
#include "nn/vit_config.h"
#include "peft/config.h"
#include "peft/peft_model.h"
#include "peft/training_loss.h"
#include "tests/dist_util.h"
#include "tests/test_util.h"
#include "train/grad_bucket.h"
#include "train/grad_reducer.h"

using namespace dg;
using nlohmann::json;
namespace fs = std::filesystem;
using test::mpi_missing, test::mpirun, test::Ran, test::sh;

TEST_CASE("dist: the gradient bucket weights, sums and restores every trainable gradient") {
  Tensor a = Tensor::from_vector(std::vector<float>{1, -2, 3, 4}, {2, 2}), b = Tensor::zeros({3});
  a.set_requires_grad(true), b.set_requires_grad(true);
  a.impl()->grad = Tensor::from_vector(std::vector<float>{0.5f, 1, -1, 2}, {2, 2}).impl_ptr();
  const nn::NamedTensors params{{"a", a}, {"b", b}};  // b has no gradient (no sample reached it)
  train::GradientBucket bucket(params, Device::CPU);
  CHECK(bucket.floats() == 7);
  CHECK(bucket.bytes() == 28);
  CHECK(train::GradientBucket::bytes_for(params) == 28);
  bucket.all_reduce(world(), 0.25);  // one rank: the sum is this rank's weighted gradient
  CHECK(a.grad().to_vector() == std::vector<double>{0.125, 0.25, -0.25, 0.5});
  REQUIRE(b.grad().defined());
  CHECK(b.grad().to_vector() == std::vector<double>{0, 0, 0});
  CHECK(a.to_vector() == std::vector<double>{1, -2, 3, 4});  // the parameters are untouched
}

namespace {
// A comm of one process that acts as if a second rank held the same gradients (sum = 2x) and
// notes the size of each all-reduce it is asked to start, in order.
class TwinComm final : public Comm {
 public:
  std::vector<int64_t> started;
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string backend_name() const override { return "twin"; }
  void all_reduce_sum(Tensor& t) override { t.copy_(add(t, t)); }
  std::unique_ptr<CommRequest> start_all_reduce_sum(Tensor& t) override {
    started.push_back(t.numel());
    return Comm::start_all_reduce_sum(t);
  }
  void all_reduce_sum(std::vector<double>& v) override {
    for (double& x : v) x += x;
  }
  void broadcast(std::string&, int) override {}
  void barrier() override {}
  [[noreturn]] void abort_all(const std::string& m, int) override { throw Error(m); }
};
}  // namespace

TEST_CASE("dist: buckets start in order as their gradients become final, with the bits of one bucket after backward") {
  tape().clear();
  Tensor x = Tensor::from_vector(std::vector<float>{0.3f, -1.1f, 2.f, 0.7f}, {4});
  Tensor z = Tensor::from_vector(std::vector<float>{1.5f, -0.2f, 0.9f}, {3});
  // registered p0, p3 (never used), p1, p2: in reverse, with a cap of 5 floats, the buckets are
  // [p2] [p1] [p3] [p0]; backward finishes p1, then p2, then p0 (recorded in the other order)
  nn::NamedTensors params;
  for (auto [name, n] : {std::pair{"p0", 4}, {"p3", 2}, {"p1", 4}, {"p2", 3}}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[size_t(i)] = 0.1f * float(i + 1) * (name[1] == '1' ? -1.f : 1.f) + 0.37f;
    Tensor p = Tensor::from_vector(v, {n});
    p.set_requires_grad(true), p.set_name(name);
    params.emplace_back(name, p);
  }
  const std::map<std::string, Tensor> masks{{"p1", Tensor::from_vector(std::vector<float>{1, 0, 1, 0}, {4})}};
  auto loss_of = [&] {
    Tensor h = mul(params[0].second, x);
    Tensor t2 = sum(mul(params[3].second, z));
    Tensor t1 = sum(mul(exp(h), params[2].second));
    return add(t1, t2);
  };
  const double w = 3.0 / 7.0;
  TwinComm comm;
  train::GradientReducer red(params, Device::CPU, 5 * 4, masks);
  REQUIRE(red.buckets() == 4);
  CHECK(red.floats() == 13);
  red.begin(comm, w);
  tape().backward(loss_of(), Tensor(), &red);
  CHECK(comm.started == std::vector<int64_t>{3, 4});  // p2's and p1's, during backward; [p3] holds p0's back
  const train::GradientReducer::Overlap o = red.finish();
  CHECK(o.started == 2);
  CHECK(o.held == 2);  // [p1] waited for [p2]; [p0], complete at the last record, for [p3] until finish()
  CHECK(comm.started == std::vector<int64_t>{3, 4, 2, 4});  // every rank starts them in this order
  std::vector<std::vector<double>> overlapped;
  for (auto& [n, p] : params) overlapped.push_back(p.grad().to_vector()), Tensor(p).zero_grad();
  CHECK(overlapped[1] == std::vector<double>{0, 0});  // p3: no gradient, adds zeros
  CHECK(overlapped[2][1] == 0);  // p1's mask
  CHECK(overlapped[2][0] != 0);
  // the path without overlap: backward, masks, one bucket of everything
  backward(loss_of());
  Tensor g1 = params[2].second.grad();
  g1.copy_(mul(g1, masks.at("p1")));
  train::GradientBucket one(params, Device::CPU);
  one.all_reduce(comm, w);
  for (size_t k = 0; k < params.size(); ++k) {
    INFO(params[k].first);
    CHECK(params[k].second.grad().to_vector() == overlapped[k]);
    Tensor(params[k].second).zero_grad();
  }
  // rebuilt in the order reported, the never-reported p3 last: [p1] [p2] [p0] [p3]
  CHECK(red.observed_order() == std::vector<size_t>{2, 3, 0, 1});
  REQUIRE(red.rebuild_from_rank0(comm));
  comm.started.clear();
  red.begin(comm, w);
  tape().backward(loss_of(), Tensor(), &red);
  CHECK(comm.started == std::vector<int64_t>{4, 3, 4});  // each as its gradient is final, [p0] within the backward
  CHECK(red.finish().held == 0);
  CHECK(comm.started == std::vector<int64_t>{4, 3, 4, 2});
  for (size_t k = 0; k < params.size(); ++k) {
    INFO(params[k].first);
    CHECK(params[k].second.grad().to_vector() == overlapped[k]);  // the same sums, in other buckets
  }
}

TEST_CASE("dist: after the first step the buckets follow the order backward finished the gradients, and start earlier") {
  tape().clear();
  nn::VisionTransformer m(nn::vit_config_from_json(
      json{{"img_size", 12}, {"patch_size", 4}, {"in_chans", 1}, {"embed_dim", 16}, {"depth", 3}, {"num_heads", 2},
           {"num_classes", 3}, {"mean", {0.3}}, {"std", {0.3}}}));
  // per block: VPT-deep's prompts, LoRA on qkv, Adapter+ after the MLP; registered in an order
  // backward does not follow (the adapter before the LoRA, the prompts before both)
  peft::PeftModel pm(m, peft::parse_peft_config(json{
                            {"deltas", {{{"name", "vpt"}, {"method", "vpt_deep"}, {"num_tokens", 2}},
                                        {{"name", "lora"}, {"method", "lora"}, {"r", 2}},
                                        {{"name", "aplus"}, {"method", "adapter_plus"}, {"dim", 2}, {"drop_path", 0}}}},
                            {"trainable", {"head.*"}}}));
  const nn::NamedTensors params = pm.trainable_parameters();
  std::vector<float> px(4 * 144);
  for (size_t i = 0; i < px.size(); ++i) px[i] = float((i * 7919) % 101) / 100.f;
  const Tensor x = Tensor::from_vector(px, {4, 1, 12, 12}), y = Tensor::from_vector(std::vector<int64_t>{0, 2, 1, 2}, {4});
  TwinComm comm;
  train::GradientReducer red(params, Device::CPU, 4, pm.masks());  // a cap of one float: a bucket per tensor
  REQUIRE(red.buckets() == params.size());
  // a step's gradients as the reducer leaves them (the twin's sum: twice the weighted gradient)
  auto step = [&](std::vector<std::vector<double>>& grads) {
    red.begin(comm, 0.5);
    tape().backward(peft::training_loss(pm, x, y).loss, Tensor(), &red);
    const train::GradientReducer::Overlap o = red.finish();
    grads.clear();
    for (auto& [n, p] : params) grads.push_back(p.grad().to_vector()), Tensor(p).zero_grad();
    return o;
  };
  std::vector<std::vector<double>> g1, g2;
  const train::GradientReducer::Overlap first = step(g1);
  const std::vector<size_t> order = red.observed_order();
  std::vector<size_t> reverse(params.size());
  for (size_t i = 0; i < reverse.size(); ++i) reverse[i] = reverse.size() - 1 - i;
  REQUIRE(order != reverse);  // the model this test is for
  CHECK(red.rebuild_from_rank0(comm));
  REQUIRE(red.buckets() == params.size());
  for (size_t b = 0; b < red.buckets(); ++b) {  // bucket b holds the b-th gradient backward finished
    INFO(b);
    CHECK(red.bucket(b).params()[0].first == params[order[b]].first);
  }
  const train::GradientReducer::Overlap second = step(g2);
  CHECK(red.observed_order() == order);  // the same backward, the same order
  CHECK(!red.rebuild_from_rank0(comm));   // nothing to change
  MESSAGE(params.size() << " buckets; in the registration order " << first.started << " started during backward, "
                        << first.held << " held back by an earlier bucket for " << first.held_records
                        << " backward records in all; rebuilt: " << second.started << ", " << second.held << ", "
                        << second.held_records);
  CHECK(first.held > 0);
  CHECK(first.held_records > 0);
  CHECK(second.held == 0);  // each bucket starts as soon as its gradients are final
  CHECK(second.held_records == 0);
  CHECK(second.started >= first.started);
  CHECK(second.started + 1 >= params.size());  // all but what the last record finishes
  // the same sums in other buckets: every gradient back in its own tensor
  CHECK(g2 == g1);
  backward(peft::training_loss(pm, x, y).loss);
  train::GradientBucket one(params, Device::CPU);
  one.all_reduce(comm, 0.5);
  for (size_t k = 0; k < params.size(); ++k) {
    INFO(params[k].first);
    CHECK(params[k].second.grad().to_vector() == g2[k]);
  }
  CHECK_THROWS_WITH_AS(red.rebuild({0, 0}), doctest::Contains("name each of the"), Error);
}

// Run by the next test under mpirun (skipped in a plain run): each rank's gradients, of wide
// range so that the order of a sum shows in its bits, summed in one bucket after backward
// (--no-overlap) and in buckets of other sizes, before and after a rebuild in rank 0's order.
TEST_CASE("dist (under mpirun): an element's sum does not depend on its bucket" * doctest::skip()) {
  Comm& w = world();
  REQUIRE(w.size() > 1);
  nn::NamedTensors params;
  // 117 KB in all: there Open MPI 4.1's blocking MPI_Allreduce of 3 ranks adds in another order
  // than its non-blocking one (this test failed when --no-overlap's path called it)
  for (int64_t n : {20000, 7, 300, 9000}) {
    Tensor p = Tensor::zeros({n});
    p.set_requires_grad(true);
    params.emplace_back("p" + std::to_string(params.size()), p);
  }
  // this rank's gradients: values from 1e-4 to 1e4 in magnitude, different on every rank
  auto set_grads = [&] {
    for (size_t k = 0; k < params.size(); ++k) {
      Tensor p = params[k].second;
      std::vector<float> g(static_cast<size_t>(p.numel()));
      const size_t r = size_t(w.rank());
      for (size_t i = 0; i < g.size(); ++i)
        g[i] = float(std::sin(double(i) * 0.7 + double(r + 1) * 1.3 + double(k)) *
                     std::pow(10.0, double((i * 7 + r * 3 + k) % 9) - 4.0));
      p.impl()->grad = Tensor::from_vector(g, p.shape()).impl_ptr();
    }
  };
  auto grads = [&] {
    std::vector<std::vector<double>> out;
    for (auto& [n, p] : params) out.push_back(p.grad().to_vector());
    return out;
  };
  const double weight = 0.37;
  set_grads();
  train::GradientBucket whole(params, Device::CPU);
  whole.all_reduce(w, weight);
  const auto want = grads();
  const std::map<std::string, Tensor> no_masks;  // (the reducer keeps a reference)
  for (int64_t cap : {4, 100 * 1024, 1 << 20}) {
    train::GradientReducer red(params, Device::CPU, cap, no_masks);
    for (int pass = 0; pass < 2; ++pass) {  // the second after a rebuild in the order reported
      set_grads();
      red.begin(w, weight);
      for (size_t k : {size_t(2), size_t(0), size_t(3), size_t(1)}) {
        Tensor p = params[k].second;
        red.leaf_final(p);
      }
      red.finish();
      INFO("cap " << cap << " bytes, " << red.buckets() << " buckets, pass " << pass);
      CHECK(grads() == want);
      if (pass == 0) red.rebuild_from_rank0(w);
    }
  }
  finalize_world();
}

TEST_CASE("dist: with 3 and 4 ranks an element's sum does not depend on the bucket it travels in") {
  if (const std::string why = mpi_missing(); !why.empty()) return test::skip(why);
  const fs::path dir = test::fresh_dir("dist", "sum_order");
  for (int ranks : {3, 4}) {
    const Ran r = sh(mpirun(60) + "-np " + std::to_string(ranks) + " " + DG_BUILD_DIR +
                         "/tests/deltagrad_tests --no-skip -tc='dist (under mpirun)*'",
                     dir / ("np" + std::to_string(ranks) + ".log"));
    INFO(r.out);
    CHECK(r.code == 0);
    size_t passed = 0;
    for (size_t at = 0; (at = r.out.find("tests: 1 passed, 0 failed", at)) != std::string::npos; ++at) ++passed;
    CHECK(passed == size_t(ranks));  // each rank ran the test case and passed it
  }
}
