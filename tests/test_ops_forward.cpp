// Forward values of softmax, layer_norm, cross_entropy, dropout, the shape ops, concat,
// index_select and patchify against values computed here by plain loops (independent of
// the backend kernels), plus the error messages for bad inputs. Gradients of these ops
// are checked in float64 by the registry test; the backward checks here are the
// structural ones (zeros outside a slice, frozen concat inputs, repeated indices).
#include <cmath>
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "core/backend.h"
#include "tests/test_util.h"

using namespace dg;
using dg::test::max_rel_err;

namespace {

Tensor randf(const Shape& s, uint64_t seed, bool rg = false) {
  Tensor t = randn64(s, seed, false).to(DType::F32);
  t.set_requires_grad(rg);
  return t;
}

// The message of the dg::Error that f throws ("" if it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Element (i, j, ...) of a contiguous row-major vector.
double at(const std::vector<double>& v, const Shape& s, std::initializer_list<int64_t> idx) {
  int64_t off = 0, k = 0;
  for (int64_t i : idx) off = off * s[size_t(k++)] + i;
  return v[size_t(off)];
}

}  // namespace

TEST_CASE("ops forward: softmax and log_softmax match exp(x)/sum exp(x) on any dim") {
  const Shape s{3, 4, 5};
  Tensor x = randf(s, 1);
  x = mul_scalar(x, 3.0);  // spread the values so the rows are far from uniform
  std::vector<double> xv = x.to_vector();
  for (int64_t dim = 0; dim < 3; ++dim) {
    INFO("dim ", dim);
    std::vector<double> y = softmax(x, dim).to_vector(), ly = log_softmax(x, dim - 3).to_vector();
    // reference: for every position of the other two dims, a loop over `dim`
    int64_t a_dims[2], k = 0;
    for (int64_t d = 0; d < 3; ++d)
      if (d != dim) a_dims[k++] = d;
    double worst = 0, worst_sum = 0;
    for (int64_t i = 0; i < s[size_t(a_dims[0])]; ++i)
      for (int64_t j = 0; j < s[size_t(a_dims[1])]; ++j) {
        auto off = [&](int64_t t) {
          int64_t ix[3];
          ix[a_dims[0]] = i, ix[a_dims[1]] = j, ix[dim] = t;
          return size_t((ix[0] * s[1] + ix[1]) * s[2] + ix[2]);
        };
        double m = -1e300, z = 0, total = 0;
        for (int64_t t = 0; t < s[size_t(dim)]; ++t) m = std::max(m, xv[off(t)]);
        for (int64_t t = 0; t < s[size_t(dim)]; ++t) z += std::exp(xv[off(t)] - m);
        for (int64_t t = 0; t < s[size_t(dim)]; ++t) {
          const double ref = std::exp(xv[off(t)] - m) / z;
          worst = std::max(worst, std::abs(y[off(t)] - ref) / ref);
          worst = std::max(worst, std::abs(ly[off(t)] - std::log(ref)) / std::max(1.0, std::abs(std::log(ref))));
          total += y[off(t)];
        }
        worst_sum = std::max(worst_sum, std::abs(total - 1.0));
      }
    CHECK(worst < 1e-5);
    CHECK(worst_sum < 1e-6);
  }
  // large inputs: the max is subtracted, so no overflow
  Tensor big = Tensor::from_vector(std::vector<float>{1000.f, 1000.f, 999.f}, {1, 3});
  std::vector<double> yb = softmax(big, -1).to_vector();
  const double e = std::exp(-1.0);
  CHECK(yb[0] == doctest::Approx(1.0 / (2 + e)).epsilon(1e-6));
  CHECK(yb[2] == doctest::Approx(e / (2 + e)).epsilon(1e-6));
  CHECK(has(error_of([&] { softmax(x, 3); }), "softmax"));
}

TEST_CASE("ops forward: layer_norm rows have mean 0 and variance 1, then w and b apply") {
  const int64_t R = 6, D = 32;
  Tensor x = add_scalar(mul_scalar(randf({2, 3, D}, 2), 4.0), 7.0);  // mean far from 0
  Tensor y = layer_norm(x, Tensor(), Tensor(), 1e-5);
  REQUIRE(y.shape() == x.shape());
  std::vector<double> yv = y.to_vector(), xv = x.to_vector();
  for (int64_t r = 0; r < R; ++r) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < D; ++j) m += yv[size_t(r * D + j)] / double(D);
    for (int64_t j = 0; j < D; ++j) v += (yv[size_t(r * D + j)] - m) * (yv[size_t(r * D + j)] - m) / double(D);
    CHECK(std::abs(m) < 1e-5);
    CHECK(v == doctest::Approx(1.0).epsilon(1e-3));  // eps / var(x) ~ 1e-6 below 1
  }
  // with affine: y = (x - mean) / sqrt(var + eps) * w + b, computed here in double
  Tensor w = randf({D}, 3), b = randf({D}, 4);
  std::vector<double> wv = w.to_vector(), bv = b.to_vector(), ya = layer_norm(x, w, b, 1e-5).to_vector();
  double worst = 0;
  for (int64_t r = 0; r < R; ++r) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < D; ++j) m += xv[size_t(r * D + j)] / double(D);
    for (int64_t j = 0; j < D; ++j) v += (xv[size_t(r * D + j)] - m) * (xv[size_t(r * D + j)] - m) / double(D);
    for (int64_t j = 0; j < D; ++j) {
      const double ref = (xv[size_t(r * D + j)] - m) / std::sqrt(v + 1e-5) * wv[size_t(j)] + bv[size_t(j)];
      worst = std::max(worst, std::abs(ya[size_t(r * D + j)] - ref));
    }
  }
  CHECK(worst < 1e-4);
  // a non-contiguous input normalises the same values
  Tensor xt = view::transpose(view::reshape(x, {R, D}), 0, 1);  // [D, R], rows of length R
  Tensor yt = layer_norm(xt, Tensor(), Tensor(), 1e-5);
  CHECK(max_rel_err(yt, layer_norm(xt.contiguous(), Tensor(), Tensor(), 1e-5)) < 1e-6);
  const std::string msg = error_of([&] { layer_norm(x, randf({D + 1}, 5), Tensor(), 1e-5); });
  CHECK(has(msg, "layer_norm: weight"));
  CHECK(has(msg, "expected [32]"));
}

// The backward kernels of LayerNorm, at the backend: the fused "from the output" pass (the memory
// variant: h = (y - b) / w rebuilt inside the pass) equals the input path and the backend's
// composed default, and dw, db (threads split the columns) are the serial sums bit for bit.
TEST_CASE("layer_norm backward kernels: from the output = from the input = the default, any thread count") {
  const int64_t rows = 300, n = 192;  // rows * n above the kernels' threshold for threads
  Backend& be = backend(Device::CPU);
  Tensor x = randn64({rows, n}, 41, false), w = add_scalar(randn64({n}, 42, false), 2.0),
         b = randn64({n}, 43, false), gy = randn64({rows, n}, 44, false);
  Tensor y = Tensor::empty({rows, n}, DType::F64), mean = Tensor::empty({rows}, DType::F64),
         rstd = Tensor::empty({rows}, DType::F64);
  be.layernorm(x, w, b, rows, n, 1e-5, y, mean, rstd);
  struct Grads { Tensor gx, gw, gb; };
  auto fresh = [&] {
    return Grads{Tensor::empty({rows, n}, DType::F64), Tensor::zeros({n}, DType::F64), Tensor::zeros({n}, DType::F64)};
  };
  Grads in = fresh(), out = fresh(), composed = fresh();
  be.layernorm_backward(x, w, mean, rstd, gy, rows, n, in.gx, in.gw, in.gb);
  be.layernorm_backward_from_output(y, w, b, rstd, gy, rows, n, out.gx, out.gw, out.gb);
  be.Backend::layernorm_backward_from_output(y, w, b, rstd, gy, rows, n, composed.gx, composed.gw, composed.gb);
  // the reference in plain double loops
  std::vector<double> xv = x.to_vector(), wv = w.to_vector(), gv = gy.to_vector(), gw_ref(size_t(n), 0.0),
                      gb_ref(size_t(n), 0.0), gx_ref(size_t(rows * n));
  for (int64_t r = 0; r < rows; ++r) {
    double m = 0, v = 0, s1 = 0, s2 = 0;
    for (int64_t j = 0; j < n; ++j) m += xv[size_t(r * n + j)] / double(n);
    for (int64_t j = 0; j < n; ++j) v += (xv[size_t(r * n + j)] - m) * (xv[size_t(r * n + j)] - m) / double(n);
    const double rs = 1 / std::sqrt(v + 1e-5);
    for (int64_t j = 0; j < n; ++j) {
      const double h = (xv[size_t(r * n + j)] - m) * rs, g = gv[size_t(r * n + j)];
      gw_ref[size_t(j)] += g * h, gb_ref[size_t(j)] += g;
      s1 += g * wv[size_t(j)] / double(n), s2 += g * wv[size_t(j)] * h / double(n);
    }
    for (int64_t j = 0; j < n; ++j) {
      const double h = (xv[size_t(r * n + j)] - m) * rs;
      gx_ref[size_t(r * n + j)] = rs * (gv[size_t(r * n + j)] * wv[size_t(j)] - s1 - h * s2);
    }
  }
  auto worst = [](const Tensor& t, const std::vector<double>& ref) {
    const std::vector<double> v = t.to_vector();
    double e = 0;
    for (size_t i = 0; i < v.size(); ++i) e = std::max(e, std::abs(v[i] - ref[i]) / (1 + std::abs(ref[i])));
    return e;
  };
  for (const Grads* g : {&in, &out, &composed}) {
    CHECK(worst(g->gx, gx_ref) < 1e-11);
    CHECK(worst(g->gw, gw_ref) < 1e-11);
    CHECK(worst(g->gb, gb_ref) < 1e-11);
  }
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  Grads serial = fresh();
  be.layernorm_backward_from_output(y, w, b, rstd, gy, rows, n, serial.gx, serial.gw, serial.gb);
  omp_set_num_threads(3);  // a split that does not divide n evenly
  Grads three = fresh();
  be.layernorm_backward_from_output(y, w, b, rstd, gy, rows, n, three.gx, three.gw, three.gb);
  omp_set_num_threads(threads);
  CHECK(serial.gw.to_vector() == three.gw.to_vector());
  CHECK(serial.gb.to_vector() == three.gb.to_vector());
  CHECK(serial.gx.to_vector() == three.gx.to_vector());
#endif
}

TEST_CASE("ops forward: cross_entropy equals the hand-computed mean NLL") {
  // logits [[1, 2, 3], [0, 0, 0], [2, -1, 0.5]], labels [2, 0, 1]
  Tensor logits = Tensor::from_vector(std::vector<double>{1, 2, 3, 0, 0, 0, 2, -1, 0.5}, {3, 3});
  const double l0 = -(3 - std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  const double l1 = std::log(3.0);
  const double lse2 = std::log(std::exp(2.0) + std::exp(-1.0) + std::exp(0.5));
  const double l2 = -(-1 - lse2);
  Tensor labels = Tensor::from_vector(std::vector<int64_t>{2, 0, 1}, {3});
  CHECK(cross_entropy(logits, labels).item() == doctest::Approx((l0 + l1 + l2) / 3).epsilon(1e-12));
  // i32 labels are accepted and give the same value
  CHECK(cross_entropy(logits, labels.to(DType::I32)).item() == doctest::Approx((l0 + l1 + l2) / 3).epsilon(1e-12));
  // float32 logits agree to float precision
  CHECK(cross_entropy(logits.to(DType::F32), labels).item() == doctest::Approx((l0 + l1 + l2) / 3).epsilon(1e-6));

  // smoothing eps: target (1 - eps) onehot + eps / C; an ignored row (label -1) leaves the mean
  const double eps = 0.1;
  auto smoothed = [&](const std::vector<double>& z, int64_t label) {
    double lse = 0;
    for (double v : z) lse += std::exp(v);
    lse = std::log(lse);
    double loss = 0;
    for (size_t c = 0; c < z.size(); ++c)
      loss -= ((int64_t(c) == label ? 1 - eps : 0) + eps / double(z.size())) * (z[c] - lse);
    return loss;
  };
  Tensor ign = Tensor::from_vector(std::vector<int64_t>{2, -1, 1}, {3});
  const double ref = (smoothed({1, 2, 3}, 2) + smoothed({2, -1, 0.5}, 1)) / 2;
  CHECK(cross_entropy(logits, ign, eps).item() == doctest::Approx(ref).epsilon(1e-12));

  // gradient: (softmax - target) / count on kept rows, zero on the ignored one
  Tensor lg = logits.clone();
  lg.set_requires_grad(true);
  backward(cross_entropy(lg, ign));
  std::vector<double> g = lg.grad().to_vector();
  for (int c = 0; c < 3; ++c) CHECK(g[size_t(3 + c)] == 0.0);
  const double p1 = std::exp(-1 - lse2);
  CHECK(g[7] == doctest::Approx((p1 - 1) / 2).epsilon(1e-12));

  // all rows ignored: loss 0, not NaN
  CHECK(cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{-1, -1, -1}, {3})).item() == 0.0);

  std::string msg = error_of([&] { cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{2, 3, 0}, {3})); });
  CHECK(has(msg, "label 3"));
  CHECK(has(msg, "row 1"));
  CHECK(has(msg, "3 classes"));
  msg = error_of([&] { cross_entropy(logits, Tensor::from_vector(std::vector<int64_t>{0, 1}, {2})); });
  CHECK(has(msg, "cross_entropy: labels"));
  CHECK(has(msg, "expected [3]"));
  CHECK(has(error_of([&] { cross_entropy(logits, Tensor::from_vector(std::vector<double>{0, 1, 2}, {3})); }),
            "must be i64 or i32"));
  CHECK(has(error_of([&] { cross_entropy(view::reshape(logits, {9}), labels); }), "must be [N, C]"));
}

TEST_CASE("ops forward: dropout keeps exactly the elements whose uniform is >= p, scaled by 1/(1-p)") {
  const double p = 0.25;
  const uint64_t seed = 1234;
  Tensor x = add_scalar(randf({64, 128}, 6), 10.0);  // no zeros in x: a zero in y means dropped
  Tensor y = dropout(x, p, true, seed);
  // the mask from the same Philox stream, drawn here directly
  Tensor u = Tensor::empty(x.shape(), DType::F32);
  backend(Device::CPU).random_uniform(u, seed, 0, 0.0, 1.0);
  std::vector<double> xv = x.to_vector(), yv = y.to_vector(), uv = u.to_vector();
  int64_t kept = 0, wrong = 0;
  for (size_t i = 0; i < xv.size(); ++i) {
    const bool keep = uv[i] >= p;
    kept += keep;
    const double ref = keep ? xv[i] / (1 - p) : 0.0;
    wrong += std::abs(yv[i] - ref) > 1e-5 * std::abs(ref);
  }
  CHECK(wrong == 0);
  const double frac = double(kept) / double(xv.size());  // 8192 draws: sd of frac ~ 0.005
  CHECK(frac > 0.72);
  CHECK(frac < 0.78);
  // same seed, same mask; another seed, another mask
  CHECK(max_rel_err(dropout(x, p, true, seed), y) == 0.0);
  CHECK(max_rel_err(dropout(x, p, true, seed + 1), y) > 0.5);
  // identity: the very same tensor, nothing recorded
  tape().clear();
  Tensor xr = randf({4, 4}, 7, true);
  CHECK(dropout(xr, p, false, seed).impl() == xr.impl());
  CHECK(dropout(xr, 0.0, true, seed).impl() == xr.impl());
  CHECK(tape().records().empty());
  // backward regenerates the mask: gradient = mask / (1 - p), nothing saved
  Tensor yr = dropout(xr, p, true, seed);
  REQUIRE(tape().records().size() == 1);
  CHECK(tape().records()[0].saved.empty());
  backward(sum(yr));
  std::vector<double> g = xr.grad().to_vector(), yrv = yr.to_vector();
  for (size_t i = 0; i < g.size(); ++i) CHECK(g[i] == doctest::Approx(yrv[i] == 0.0 ? 0.0 : 1 / (1 - p)));
  CHECK(has(error_of([&] { dropout(x, 1.0, true, seed); }), "must be in [0, 1)"));
  CHECK(has(error_of([&] { dropout(x, -0.1, false, seed); }), "dropout: p = -0.1"));
}

TEST_CASE("ops forward: reshape, transpose, permute, squeeze, unsqueeze, expand move the right values") {
  Tensor x = Tensor::arange(24, DType::F64);
  Tensor r = reshape(x, {2, 3, 4});
  std::vector<double> pv = contiguous(permute(r, {2, 0, 1})).to_vector();  // [4, 2, 3]
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) CHECK(at(pv, {4, 2, 3}, {k, i, j}) == double(i * 12 + j * 4 + k));
  std::vector<double> tv = contiguous(transpose(r, 0, 2)).to_vector();  // [4, 3, 2]
  CHECK(at(tv, {4, 3, 2}, {3, 1, 0}) == 0 * 12 + 1 * 4 + 3);
  CHECK(at(tv, {4, 3, 2}, {1, 2, 1}) == 1 * 12 + 2 * 4 + 1);
  CHECK(unsqueeze(r, 1).shape() == Shape{2, 1, 3, 4});
  CHECK(unsqueeze(r, -1).shape() == Shape{2, 3, 4, 1});
  CHECK(squeeze(unsqueeze(r, 1), 1).shape() == Shape{2, 3, 4});
  CHECK(reshape(r, {-1, 6}).shape() == Shape{4, 6});
  // expand repeats; its backward sums the repeats back
  Tensor c = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3, 1});
  c.set_requires_grad(true);
  Tensor e = expand(c, {2, 3, 4});
  std::vector<double> ev = contiguous(e).to_vector();
  CHECK(at(ev, {2, 3, 4}, {1, 2, 3}) == 3.0);
  CHECK(at(ev, {2, 3, 4}, {0, 1, 0}) == 2.0);
  backward(sum(e));
  CHECK(c.grad().to_vector() == std::vector<double>{8, 8, 8});
  CHECK(!error_of([&] { reshape(r, {5, 5}); }).empty());
  CHECK(!error_of([&] { permute(r, {0, 0, 1}); }).empty());
  CHECK(!error_of([&] { expand(c, {2, 4, 4}); }).empty());
}

TEST_CASE("ops forward: slice values, and its backward is zero outside the slice") {
  Tensor x = reshape(Tensor::arange(20, DType::F64), {4, 5});
  x = x.clone();
  x.set_requires_grad(true);
  Tensor s = slice(x, 1, 1, 3);  // columns 1, 2
  REQUIRE(s.shape() == Shape{4, 2});
  std::vector<double> sv = s.to_vector();
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 2; ++j) CHECK(at(sv, {4, 2}, {i, j}) == double(i * 5 + j + 1));
  CHECK(slice(x, 0, -1, 4).to_vector() == std::vector<double>{15, 16, 17, 18, 19});
  Tensor w = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6, 7, 8}, {4, 2});
  backward(sum(mul(s, w)));
  std::vector<double> g = x.grad().to_vector();
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 5; ++j)
      CHECK(at(g, {4, 5}, {i, j}) == (j == 1 || j == 2 ? double(i * 2 + (j - 1) + 1) : 0.0));
  CHECK(!error_of([&] { slice(x, 2, 0, 1); }).empty());
}

TEST_CASE("ops forward: concat places each input in its slice; frozen inputs get no gradient") {
  Tensor a = randf({2, 1, 3}, 8, true), b = randf({2, 2, 3}, 9, false), c = randf({2, 3, 3}, 10, true);
  Tensor y = concat({a, b, c}, 1);
  REQUIRE(y.shape() == Shape{2, 6, 3});
  std::vector<double> yv = y.to_vector(), av = a.to_vector(), bv = b.to_vector(), cv = c.to_vector();
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 6; ++j)
      for (int64_t k = 0; k < 3; ++k) {
        const double ref = j < 1   ? at(av, {2, 1, 3}, {i, j, k})
                           : j < 3 ? at(bv, {2, 2, 3}, {i, j - 1, k})
                                   : at(cv, {2, 3, 3}, {i, j - 3, k});
        CHECK(at(yv, {2, 6, 3}, {i, j, k}) == ref);
      }
  // last dim, negative dim
  Tensor z = concat({reshape(Tensor::arange(4, DType::F64), {2, 2}), Tensor::zeros({2, 1}, DType::F64)}, -1);
  CHECK(z.to_vector() == std::vector<double>{0, 1, 0, 2, 3, 0});
  // backward: gradient of sum(y * w) is w's slice for each trainable input
  Tensor w = randf({2, 6, 3}, 11);
  backward(sum(mul(y, w)));
  CHECK(max_rel_err(a.grad(), contiguous(slice(w, 1, 0, 1))) == 0.0);
  CHECK(max_rel_err(c.grad(), contiguous(slice(w, 1, 3, 6))) == 0.0);
  CHECK_FALSE(b.grad().defined());
  std::string msg = error_of([&] { concat({a, randf({3, 1, 3}, 12)}, 1); });
  CHECK(has(msg, "concat: input 1"));
  CHECK(has(msg, "outside dim 1"));
  CHECK(has(error_of([&] { concat({a, randf({2, 3}, 12)}, 1); }), "does not match input 0"));
  CHECK(has(error_of([] { concat({}, 0); }), "no inputs"));
}

TEST_CASE("ops forward: index_select picks rows; repeated indices accumulate; bad index is an error") {
  Tensor x = reshape(Tensor::arange(12, DType::F64), {4, 3}).clone();
  x.set_requires_grad(true);
  Tensor y = index_select(x, Tensor::from_vector(std::vector<int64_t>{3, 0, 3}, {3}));
  CHECK(y.to_vector() == std::vector<double>{9, 10, 11, 0, 1, 2, 9, 10, 11});
  backward(sum(y));
  CHECK(x.grad().to_vector() == std::vector<double>{1, 1, 1, 0, 0, 0, 0, 0, 0, 2, 2, 2});
  // i32 index, 3-d input (rows are [2, 2] blocks)
  Tensor x3 = reshape(Tensor::arange(12, DType::F64), {3, 2, 2});
  Tensor y3 = index_select(x3, Tensor::from_vector(std::vector<int64_t>{1}, {1}).to(DType::I32));
  CHECK(y3.shape() == Shape{1, 2, 2});
  CHECK(y3.to_vector() == std::vector<double>{4, 5, 6, 7});
  std::string msg = error_of([&] { index_select(x, Tensor::from_vector(std::vector<int64_t>{0, 4}, {2})); });
  CHECK(has(msg, "index 4"));
  CHECK(has(msg, "position 1"));
  CHECK(has(msg, "4 rows"));
  CHECK(has(error_of([&] { index_select(x, Tensor::from_vector(std::vector<int64_t>{-1}, {1})); }), "index -1"));
  CHECK(has(error_of([&] { index_select(x, Tensor::from_vector(std::vector<double>{0}, {1})); }), "1-d i64/i32"));
}

TEST_CASE("ops forward: patchify matches a naive loop and makes a stride-p conv a matmul") {
  const int64_t B = 2, C = 3, H = 8, W = 12, p = 4, D = 5;
  const int64_t gh = H / p, gw = W / p, n = gh * gw, K = C * p * p;
  Tensor x = randf({B, C, H, W}, 13);
  Tensor cols = patchify(x, p);
  REQUIRE(cols.shape() == Shape{B, n, K});
  std::vector<double> xv = x.to_vector(), cv = cols.to_vector();
  int64_t wrong = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t py = 0; py < gh; ++py)
      for (int64_t px = 0; px < gw; ++px)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t ky = 0; ky < p; ++ky)
            for (int64_t kx = 0; kx < p; ++kx)
              wrong += at(cv, {B, n, K}, {b, py * gw + px, (c * p + ky) * p + kx}) !=
                       at(xv, {B, C, H, W}, {b, c, py * p + ky, px * p + kx});
  CHECK(wrong == 0);
  // conv2d(x, Wc [D, C, p, p], stride p) computed directly == linear(patchify(x), Wc.reshape(D, -1))
  Tensor wc = randf({D, C, p, p}, 14), bias = randf({D}, 15);
  std::vector<double> out = linear(cols, reshape(wc, {D, K}), bias).to_vector();  // [B, n, D]
  std::vector<double> wv = wc.to_vector(), bv = bias.to_vector();
  double worst = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t oy = 0; oy < gh; ++oy)
        for (int64_t ox = 0; ox < gw; ++ox) {
          double acc = bv[size_t(d)];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t ky = 0; ky < p; ++ky)
              for (int64_t kx = 0; kx < p; ++kx)
                acc += at(wv, {D, C, p, p}, {d, c, ky, kx}) * at(xv, {B, C, H, W}, {b, c, oy * p + ky, ox * p + kx});
          worst = std::max(worst, std::abs(at(out, {B, n, D}, {b, oy * gw + ox, d}) - acc));
        }
  CHECK(worst < 1e-4);
  // backward (col2im) is the adjoint: <patchify(x), g> == <x, patchify^T(g)>
  Tensor xg = randn64({B, C, H, W}, 16, true);
  Tensor g = randn64({B, n, K}, 17, false);
  Tensor pg = patchify(xg, p);
  double lhs;
  {
    NoGradGuard ng;
    lhs = sum(mul(pg, g)).item();
  }
  backward(sum(mul(pg, g)));
  const double rhs = sum(mul(xg.detach(), xg.grad())).item();
  CHECK(lhs == doctest::Approx(rhs).epsilon(1e-12));
  std::string msg = error_of([&] { patchify(randf({1, 3, 10, 12}, 18), 4); });
  CHECK(has(msg, "10x12"));
  CHECK(has(msg, "patch size 4"));
  CHECK(has(error_of([&] { patchify(randf({3, 8, 8}, 19), 4); }), "must be [B, C, H, W]"));
}

TEST_CASE("ops forward: fused attention equals matmul + softmax + matmul, forward and gradients, f32 and f64") {
  // ViT-like: 2 images, 13 tokens, 4 heads of 8; values spread so the rows are far from uniform
  Tensor base = mul_scalar(randn64({2, 13, 3 * 32}, 7, false), 2.0);
  Tensor gout = randn64({2, 13, 32}, 8, false);
  auto run = [&](DType dt, bool fused, Tensor& grad) {
    Tensor qkv = base.to(dt).clone();  // a fresh leaf per run: gradients must not accumulate
    qkv.set_requires_grad(true);
    Tensor out = attention(qkv, 4, 0.35, fused);
    tape().backward(out, gout.to(dt));
    grad = qkv.grad();
    REQUIRE(grad.defined());
    return out;
  };
  // largest difference relative to the largest magnitude (elementwise ratios blow up near 0)
  auto err = [](const Tensor& a, const Tensor& ref) {
    std::vector<double> x = a.to_vector(), y = ref.to_vector();
    double d = 0, m = 0;
    for (size_t i = 0; i < x.size(); ++i) d = std::max(d, std::abs(x[i] - y[i])), m = std::max(m, std::abs(y[i]));
    return d / m;
  };
  Tensor g_ref, g64, g32, g32c;
  Tensor ref = run(DType::F64, false, g_ref);
  Tensor o64 = run(DType::F64, true, g64), o32 = run(DType::F32, true, g32), o32c = run(DType::F32, false, g32c);
  CHECK(err(o64, ref) < 1e-13);
  CHECK(err(g64, g_ref) < 1e-13);
  CHECK(err(o32, ref) < 1e-6);
  // dS = P (dP - rowsum(P dP)) cancels, so the f32 gradient's error depends on each GEMM
  // library's summation order: 7.5e-7 with OpenBLAS and Eigen, 1.6e-6 with oneDNN (whose
  // products match the triple loop as closely, tests/test_cpu_gemm.cpp); a wrong kernel is ~1e-1.
  CHECK(err(g32, g_ref) < 4e-6);
  MESSAGE("fused attention f32 vs f64: out ", err(o32, ref), ", grad ", err(g32, g_ref), " (composed f32: out ",
          err(o32c, ref), ", grad ", err(g32c, g_ref), ")");
  // the fused record saves qkv and the log-sum-exp only: no [B, H, N, N] tensor
  Tensor qkv = randf({2, 50, 3 * 16}, 9, true);
  Tensor out = attention(qkv, 2, 0.25);
  CHECK(tape().saved_bytes() == size_t(2 * 50 * 48 + 2 * 2 * 50) * 4);
  tape().backward(sum(out, {0, 1, 2}));
  CHECK(has(error_of([&] { attention(randf({2, 5, 10}, 3), 4, 1.0); }), "3 * heads * head_dim"));
}
