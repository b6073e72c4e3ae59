// The tape records only what needs gradients and saves only what backward reads.
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "tests/test_util.h"

using namespace dg;

namespace {
Tensor randf(const Shape& s, uint64_t seed, bool rg) {
  Tensor t = randn64(s, seed, false).to(DType::F32);
  t.set_requires_grad(rg);
  return t;
}
}  // namespace

TEST_CASE("tape: 2-layer MLP with frozen weights and one trainable bias") {
  tape().clear();
  Tensor x = randf({8, 6}, 1, false);
  Tensor W1 = randf({5, 6}, 2, false).set_name("fc1.weight"), b1 = randf({5}, 3, false).set_name("fc1.bias");
  Tensor W2 = randf({3, 5}, 4, false).set_name("fc2.weight"), b2 = randf({3}, 5, true).set_name("fc2.bias");
  Tensor h = gelu(linear(x, W1, b1));
  CHECK(tape().records().empty());  // nothing trainable yet: nothing recorded
  Tensor y = linear(h, W2, b2);
  Tensor loss = mean(mul(y, y));
  const auto& recs = tape().records();
  REQUIRE(recs.size() == 3);  // linear(fc2), mul, mean
  CHECK(std::string(recs[0].op->name) == "linear");
  CHECK(recs[0].needs == std::vector<bool>{false, false, true});
  CHECK(recs[0].saved.empty());  // no dW (W2 frozen) -> x not saved; no dx (h frozen) -> W not saved
  INFO(tape().dump());
  CHECK(tape().dump().find("linear") != std::string::npos);
  backward(loss);
  CHECK(tape().records().empty());
  CHECK(b2.grad().defined());
  CHECK_FALSE(W1.grad().defined());
  CHECK_FALSE(W2.grad().defined());
  CHECK_FALSE(b1.grad().defined());
  // d mean(y^2) / d b2 = 2/N * sum_rows(y)
  std::vector<double> yv = y.to_vector(), g = b2.grad().to_vector();
  for (int j = 0; j < 3; ++j) {
    double s = 0;
    for (int i = 0; i < 8; ++i) s += 2.0 * yv[size_t(i * 3 + j)] / 24.0;
    CHECK(g[size_t(j)] == doctest::Approx(s).epsilon(1e-5));
  }
}

TEST_CASE("tape: trainable W saves the input, frozen input saves no weight") {
  tape().clear();
  Tensor x = randf({4, 3}, 1, false), W = randf({2, 3}, 2, true);
  Tensor y = linear(x, W);
  REQUIRE(tape().records().size() == 1);
  const Record& r = tape().records()[0];
  REQUIRE(r.saved.size() == 1);
  CHECK(r.saved[0].what == "x");
  CHECK(r.saved_bytes() == 4 * 3 * sizeof(float));
  tape().clear();
}

TEST_CASE("tape: in-place write to a saved tensor is detected") {
  tape().clear();
  Tensor x = randf({3}, 1, true), w = randf({3}, 2, false);
  Tensor y = sum(mul(x, w));  // mul saves w for dx
  w.fill_(2.0);               // modifies a saved tensor
  CHECK_THROWS_WITH_AS(backward(y), doctest::Contains("modified in place"), Error);
  tape().clear();
}

TEST_CASE("tape: gradients accumulate across backward calls; no_grad records nothing") {
  tape().clear();
  Tensor x = randf({3}, 1, true);
  backward(sum(mul_scalar(x, 2.0)));
  backward(sum(mul_scalar(x, 3.0)));
  for (double g : x.grad().to_vector()) CHECK(g == doctest::Approx(5.0));
  {
    NoGradGuard ng;
    Tensor y = mul_scalar(x, 2.0);
    CHECK_FALSE(y.requires_grad());
  }
  CHECK(tape().records().empty());
  CHECK_THROWS_AS(backward(sum(randf({2}, 3, false))), Error);
}

TEST_CASE("tape: outputs that do not reach the loss are skipped and freed") {
  tape().clear();
  Tensor x = randf({3}, 1, true);
  Tensor unused = exp(x);  // recorded, saves y, never reaches the loss
  Tensor loss = sum(x);
  CHECK(tape().saved_bytes() == 3 * sizeof(float));
  backward(loss);
  CHECK(tape().records().empty());
  for (double g : x.grad().to_vector()) CHECK(g == doctest::Approx(1.0));
}

TEST_CASE("split: pieces are slices whose gradients land in their own ranges") {
  tape().clear();
  Tensor x = randf({2, 7}, 3, true);
  std::vector<Tensor> p = split(x, {2, 5}, 1);
  REQUIRE(p.size() == 2);
  CHECK(p[1].shape() == Shape{2, 5});
  backward(add(sum(mul_scalar(p[0], 2.0)), sum(mul_scalar(p[1], 3.0))));
  std::vector<double> g = x.grad().to_vector();
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 7; ++c) CHECK(g[size_t(r * 7 + c)] == (c < 2 ? 2.0 : 3.0));
  CHECK_THROWS_WITH_AS(split(x, {3, 3}, 1), doctest::Contains("add up to 6"), Error);
}

TEST_CASE("tape: LayerNorm before a LoRA branch keeps one buffer for both (CPU), x where w has a zero") {
  // x -> LN -> frozen Linear + trainable A: the LoRA input is LN's output. Where h = (y - b) / w
  // is exact enough LN saves y, the same buffer A's record saves; with a zero in w it saves x.
  for (bool zero_w : {false, true}) {
    tape().clear();
    Tensor x = randf({10, 8}, 1, true), w = randf({8}, 2, false), b = randf({8}, 3, false);
    if (zero_w) w.data<float>()[4] = 0.0f;
    Tensor W = randf({12, 8}, 4, false), A = randf({2, 8}, 5, true);
    Tensor h = layer_norm(x, w, b, 1e-6);
    Tensor out = add(linear(h, W), linear(linear(h, A), randf({12, 2}, 6, false)));
    const auto& recs = tape().records();
    REQUIRE(std::string(recs[0].op->name) == "layer_norm");
    std::vector<std::string> what;
    for (const SavedTensor& s : recs[0].saved) what.push_back(s.what);
    INFO(tape().dump());
    if (!zero_w) {
      CHECK(what == std::vector<std::string>{"y", "b", "rstd", "w"});
      CHECK(recs[0].saved[0].t.raw() == h.raw());
      // the LoRA A linear saved the very same view
      CHECK(tape().held_bytes() < tape().saved_bytes());
      CHECK(tape().saved_bytes() - tape().held_bytes() == h.nbytes());
    } else {
      CHECK(what == std::vector<std::string>{"x", "mean", "rstd", "w"});
      CHECK(tape().held_bytes() == tape().saved_bytes());
    }
    // the gradient is the same as LayerNorm composed from primitives, either way
    Tensor loss = sum(mul(out, out));
    backward(loss);
    Tensor gx = x.grad(), gA = A.grad();
    x.zero_grad(), A.zero_grad();
    Tensor mu = mean(x, {1}, true), xc = sub(x, mu);
    Tensor var = mean(mul(xc, xc), {1}, true);
    Tensor h2 = add(mul(div(xc, sqrt(add_scalar(var, 1e-6))), w), b);
    Tensor out2 = add(linear(h2, W), linear(linear(h2, A), randf({12, 2}, 6, false)));
    backward(sum(mul(out2, out2)));
    CHECK(test::max_rel_err(gx, x.grad(), 1e-3) < 1e-4);
    CHECK(test::max_rel_err(gA, A.grad(), 1e-3) < 1e-4);
  }
}

namespace {
// Notes each report: which leaf, its gradient then, and how many records had finished before it.
struct Reports final : BackwardObserver {
  std::vector<std::pair<std::string, std::vector<double>>> leaves;
  std::vector<int> records_before;
  int records_done = 0;
  void leaf_final(Tensor& leaf) override {
    leaves.push_back({leaf.name(), leaf.grad().to_vector()});
    records_before.push_back(records_done);
  }
  void record_done() override { ++records_done; }
};
}  // namespace

TEST_CASE("tape: the observer hears each leaf's gradient once, after its last user's backward") {
  tape().clear();
  Tensor a = randf({3}, 1, true).set_name("a"), b = randf({3}, 2, true).set_name("b");
  Tensor w = randf({3}, 3, true).set_name("w"), c = randf({3}, 4, true).set_name("c");
  Tensor x = randf({3}, 5, false).set_name("x");
  Tensor p = mul(a, x);         // #0: a's first use
  Tensor q = add(p, b);         // #1: b's only use
  Tensor r = mul(q, a);         // #2: a's second use (a shared factor, a tied weight)
  Tensor unused = exp(c);       // #3: c's only use never reaches the loss
  Tensor s = mul(w, w);         // #4: w twice in one op
  Tensor loss = sum(add(r, s));  // #5, #6
  REQUIRE(tape().records().size() == 7);
  Reports seen;
  tape().backward(loss, Tensor(), &seen);
  CHECK(seen.records_done == 7);  // told after every record, the skipped one too
  // newest first (records_before counts the records finished before the report's own): w at
  // #4, b at #1, a only at #0, its last user in backward; c has no gradient, x is frozen
  REQUIRE(seen.leaves.size() == 3);
  CHECK(seen.leaves[0].first == "w");
  CHECK(seen.leaves[1].first == "b");
  CHECK(seen.leaves[2].first == "a");
  CHECK(seen.records_before == std::vector<int>{2, 5, 6});
  CHECK_FALSE(c.grad().defined());
  // what was reported is the whole gradient: d/da sum((a x + b) a) = 2 a x + b, and 2 w
  const std::vector<double> av = a.to_vector(), bv = b.to_vector(), xv = x.to_vector(), wv = w.to_vector();
  for (size_t i = 0; i < 3; ++i) {
    CHECK(seen.leaves[2].second[i] == doctest::Approx(2 * av[i] * xv[i] + bv[i]).epsilon(1e-6));
    CHECK(seen.leaves[0].second[i] == doctest::Approx(2 * wv[i]).epsilon(1e-6));
  }
  CHECK(seen.leaves[2].second == a.grad().to_vector());  // nothing was added after the report
  CHECK(seen.leaves[1].second == b.grad().to_vector());
}

TEST_CASE("tape: a LoRA input's gradient is summed by the base layer's dx GEMM, not by an extra add") {
  // h -> frozen W (the base) and trainable A then B (LoRA): both linears' dx go to h. A's backward
  // runs first and its dx becomes h's gradient so far; the base linear's GEMM adds into that buffer
  // (beta = 1). Reference: the same function in float64 with the weights merged, W + B A: one
  // linear, no sum anywhere.
  for (int64_t rows : {5, 64}) {
    auto grad_x = [&](DType dt, bool merged) {
      tape().clear();
      Tensor x = randf({rows, 16}, 1, false).to(dt), W = randf({24, 16}, 2, false).to(dt);
      Tensor A = randf({4, 16}, 3, false).to(dt), B = randf({24, 4}, 4, false).to(dt);
      x.set_requires_grad(true), A.set_requires_grad(!merged);
      Tensor h = tanh(x);  // a non-leaf: its gradient goes through the tape's slots
      Tensor out = merged ? linear(h, add(W, matmul(B, A))) : add(linear(h, W), linear(linear(h, A), B));
      backward(sum(tanh(out)));  // no op reads one tensor twice: h's is the only sum
      return std::pair{x.grad().to(DType::F64), tape().last_accumulation()};
    };
    auto [g_lora, st_lora] = grad_x(DType::F32, false);
    auto [g_ref, st_ref] = grad_x(DType::F64, true);
    auto [g_merged, st_merged] = grad_x(DType::F32, true);  // float32's own rounding on this function
    INFO("rows " << rows);
    CHECK(st_lora.sums == 1);
    CHECK(st_lora.in_producer == 1);  // the base dx GEMM did it
    CHECK(st_ref.sums == 0);
    // a lost or doubled part would be off by O(1); rounding is what float32 does without the sum
    const double err = test::max_rel_err(g_lora, g_ref, 1e-2), f32 = test::max_rel_err(g_merged, g_ref, 1e-2);
    INFO("float32 LoRA " << err << ", float32 merged " << f32);
    CHECK(err < 1e-3);
    CHECK(err < 4 * f32 + 1e-6);
  }
}
