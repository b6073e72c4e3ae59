// The CPU GEMM: every built library (oneDNN one thread per product and with its own threads,
// OpenBLAS, Eigen) against a plain triple loop, through the backend's threading (small, batched
// and row-split products), every transpose, padded leading dimensions, batch strides (0
// broadcasts), alpha/beta; the fused attention kernel, which calls the same one-thread
// product, under each; oneDNN's bias/GELU epilogues (gemm_bias, gemm_bias_gelu). The choice among them: tests/test_gemm_select.cpp.
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/ops.h"
#include "core/backend.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_select.h"
#include "core/cpu/onednn_matmul.h"
#include "test_util.h"

using namespace dg;

namespace {

// Restores the start-up library when a test case ends, whatever it selected.
struct LibraryGuard {
  std::string saved = cpu::gemm_library();
  ~LibraryGuard() { cpu::set_gemm_library(saved); }
};

std::vector<std::string> libraries() {
  std::vector<std::string> libs = cpu::gemm_libraries();
  CHECK(libs.back() == "eigen");  // always built, the fallback
  return libs;
}

Tensor randn(const Shape& s, DType dt, uint64_t seed) {
  Tensor t = Tensor::empty(s, DType::F64);
  backend(Device::CPU).random_normal(t, seed, 0, 0.0, 1.0);
  return t.to(dt);
}

// C[b] = alpha op(A[b]) op(B[b]) + beta C0[b], in double, straight from the definition.
std::vector<double> reference(const Backend::Gemm& g, const std::vector<double>& a, const std::vector<double>& b,
                              const std::vector<double>& c0) {
  std::vector<double> c = c0;
  for (int64_t z = 0; z < g.batch; ++z)
    for (int64_t i = 0; i < g.M; ++i)
      for (int64_t j = 0; j < g.N; ++j) {
        double s = 0;
        for (int64_t k = 0; k < g.K; ++k) {
          const double av = a[z * g.stride_a + (g.ta ? k * g.lda + i : i * g.lda + k)];
          const double bv = b[z * g.stride_b + (g.tb ? j * g.ldb + k : k * g.ldb + j)];
          s += av * bv;
        }
        double& out = c[z * g.stride_c + i * g.ldc + j];
        out = g.alpha * s + (g.beta == 0 ? 0.0 : g.beta * out);
      }
  return c;
}

}  // namespace

TEST_CASE("cpu gemm: every library matches a triple loop (transposes, padded ld, batch strides, alpha/beta)") {
  LibraryGuard guard;
  Backend& be = backend(Device::CPU);
  struct Size {
    int64_t batch, M, N, K;
    bool broadcast_b;  // stride_b = 0: one B for every batch entry
  };
  // 1x1x1, a tiny product, a batch (one matrix per thread), a large one (split by rows of C,
  // odd M so the split is uneven), an empty K (C = beta C).
  const std::vector<Size> sizes = {{1, 1, 1, 1, false}, {2, 3, 5, 4, true}, {6, 33, 17, 40, false},
                                   {1, 301, 96, 80, false}, {1, 7, 9, 0, false}};
  auto check_all = [&](const std::string& lib) {
    for (DType dt : {DType::F32, DType::F64}) {
      double worst = 0;
      for (const Size& sz : sizes)
        for (int t = 0; t < 4; ++t)
          for (const auto& [alpha, beta] : std::vector<std::pair<double, double>>{{1, 0}, {0.5, 1}, {-2, 0.25}}) {
            Backend::Gemm g;
            g.ta = t & 1, g.tb = t & 2;
            g.batch = sz.batch, g.M = sz.M, g.N = sz.N, g.K = sz.K;
            const int64_t ar = g.ta ? g.K : g.M, ac = g.ta ? g.M : g.K;  // stored shapes
            const int64_t br = g.tb ? g.N : g.K, bc = g.tb ? g.K : g.N;
            g.lda = ac + 3, g.ldb = bc + 1, g.ldc = g.N + 2;  // padded rows
            g.stride_a = ar * g.lda, g.stride_b = sz.broadcast_b ? 0 : br * g.ldb, g.stride_c = g.M * g.ldc;
            g.alpha = alpha, g.beta = beta;
            Tensor A = randn({g.batch * std::max<int64_t>(g.stride_a, 1) + 1}, dt, 1);
            Tensor B = randn({std::max<int64_t>(g.batch * g.stride_b, br * g.ldb) + 1}, dt, 2);
            Tensor C = randn({g.batch * g.stride_c}, dt, 3);
            const std::vector<double> want = reference(g, A.to_vector(), B.to_vector(), C.to_vector());
            be.gemm(g, A, B, C);
            const std::vector<double> got = C.to_vector();
            double scale = 1e-30;
            for (double w : want) scale = std::max(scale, std::abs(w));
            for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / scale);
          }
      MESSAGE(lib, " ", std::string(dtype_name(dt)), ": largest error against the triple loop ", worst);
      CHECK(worst < (dt == DType::F32 ? 2e-6 : 1e-13));
    }
  };
  const std::vector<std::string> libs = libraries();
  for (const std::string& lib : libs) {
    cpu::set_gemm_library(lib);
    CHECK(std::string(cpu::gemm_library()) == lib);
    check_all(lib);
  }
  // a different library per kind of product (forward, input gradient, weight gradient, heads),
  // as the calibration may choose: each product goes to its kind's library
  for (size_t shift = 0; shift < libs.size(); ++shift) {
    std::string label = "per kind:";
    for (int k = 0; k < cpu::kGemmKinds; ++k) {
      const std::string& lib = libs[(size_t(k) + shift) % libs.size()];
      cpu::set_gemm_library_for(cpu::GemmKind(k), lib);
      CHECK(cpu::gemm_lib_for(cpu::GemmKind(k)) == *cpu::lib_from_name(lib));
      label += " " + lib;
    }
    check_all(label);
  }
}

TEST_CASE("cpu gemm: beta 0 overwrites C even where it holds NaN; unknown library names refused") {
  LibraryGuard guard;
  for (const std::string& lib : libraries()) {
    cpu::set_gemm_library(lib);
    Backend::Gemm g;
    g.M = 4, g.N = 3, g.K = 5, g.lda = 5, g.ldb = 3, g.ldc = 3;
    Tensor A = Tensor::ones({4, 5}), B = Tensor::ones({5, 3}), C = Tensor::full({4, 3}, NAN);
    backend(Device::CPU).gemm(g, A, B, C);
    for (double v : C.to_vector()) CHECK(v == 5.0);
  }
  CHECK_THROWS_WITH_AS(cpu::set_gemm_library("mkl"), doctest::Contains("expected"), Error);
  CHECK_THROWS_WITH_AS(cpu::set_gemm_library("mkl"), doctest::Contains("'eigen'"), Error);
  if (!cpu::have_onednn())
    CHECK_THROWS_WITH_AS(cpu::set_gemm_library("onednn"), doctest::Contains("libdnnl-dev"), Error);
}

TEST_CASE("cpu gemm: the fused attention kernel gives the same result under every library") {
  LibraryGuard guard;
  const std::vector<std::string> libs = libraries();
  if (libs.size() < 2) {
    test::skip("this build links no GEMM library besides Eigen");
    return;
  }
  const int64_t B = 2, N = 13, H = 3, hd = 8;
  Tensor qkv = randn({B, N, 3 * H * hd}, DType::F32, 7), gout = randn({B, N, H * hd}, DType::F32, 8);
  std::vector<std::vector<double>> outs, grads;
  for (const std::string& lib : libs) {
    cpu::set_gemm_library(lib);
    Tensor out = Tensor::empty({B, N, H * hd}), lse = Tensor::empty({B, H, N}), g = Tensor::empty(qkv.shape());
    Backend& be = backend(Device::CPU);
    be.attention(qkv, H, 1.0 / std::sqrt(double(hd)), out, lse);
    be.attention_backward(qkv, lse, gout, H, 1.0 / std::sqrt(double(hd)), g);
    outs.push_back(out.to_vector());
    grads.push_back(g.to_vector());
  }
  const size_t eigen = libs.size() - 1;  // each library against Eigen
  for (size_t l = 0; l < eigen; ++l) {
    double eo = 0, eg = 0;
    for (size_t i = 0; i < outs[l].size(); ++i) eo = std::max(eo, std::abs(outs[l][i] - outs[eigen][i]));
    for (size_t i = 0; i < grads[l].size(); ++i) eg = std::max(eg, std::abs(grads[l][i] - grads[eigen][i]));
    MESSAGE("attention ", libs[l], " vs eigen: out ", eo, ", gqkv ", eg);
    CHECK(eo < 1e-5);
    CHECK(eg < 1e-5);
    CHECK(eo + eg > 0);  // both ran (two libraries do not agree to the last bit on every element)
  }
}

TEST_CASE("cpu gemm: oneDNN's bias and GELU epilogues match the triple loop and our GELU; other paths decline") {
  LibraryGuard guard;
  Backend& be = backend(Device::CPU);
  // a tiny product, one split by rows (odd M: uneven blocks), padded leading dimensions, each transpose
  const std::vector<std::array<int64_t, 3>> sizes = {{3, 5, 4}, {301, 96, 80}, {1, 7, 33}};
  for (const std::string& lib : libraries())
    for (DType dt : {DType::F32, DType::F64}) {
      cpu::set_gemm_library(lib);
      const bool onednn = lib.rfind("onednn", 0) == 0 && dt == DType::F32;  // where the epilogue runs
      double worst = 0, worst_gelu = 0, gelu_vs_ours = 0;
      for (const auto& [M, N, K] : sizes)
        for (int t = 0; t < 4; ++t) {
          Backend::Gemm g;
          g.ta = t & 1, g.tb = t & 2, g.M = M, g.N = N, g.K = K;
          g.lda = (g.ta ? M : K) + 3, g.ldb = (g.tb ? K : N) + 1, g.ldc = N;
          g.beta = 0.5;  // not used by the contract: C is overwritten
          Tensor A = randn({(g.ta ? K : M) * g.lda}, dt, 11), B = randn({(g.tb ? N : K) * g.ldb}, dt, 12);
          Tensor bias = randn({N}, dt, 13), C = Tensor::full({M, N}, NAN, dt), Cg = Tensor::full({M, N}, NAN, dt);
          std::vector<double> want = reference(g, A.to_vector(), B.to_vector(), std::vector<double>(size_t(M * N), 0.0));
          const std::vector<double> b = bias.to_vector();
          double scale = 1e-30;
          for (size_t i = 0; i < want.size(); ++i) want[i] += b[i % size_t(N)], scale = std::max(scale, std::abs(want[i]));
          const std::string where = lib + " M=" + std::to_string(M) + " t=" + std::to_string(t);
          CAPTURE(where);
          REQUIRE(be.gemm_bias(g, A, B, bias, C) == onednn);
          REQUIRE(be.gemm_bias_gelu(g, A, B, bias, Cg) == onednn);
          if (!onednn) continue;
          Tensor ours = Tensor::empty({M, N}, dt);
          be.unary(UnaryOp::Gelu, C, ours, 0);  // our erf GELU on the epilogue's u
          const std::vector<double> got = C.to_vector(), got_g = Cg.to_vector(), ours_v = ours.to_vector();
          for (size_t i = 0; i < got.size(); ++i) {
            worst = std::max(worst, std::abs(got[i] - want[i]) / scale);
            const double gw = 0.5 * want[i] * (1 + std::erf(want[i] / std::sqrt(2.0)));
            worst_gelu = std::max(worst_gelu, std::abs(got_g[i] - gw) / scale);
            gelu_vs_ours = std::max(gelu_vs_ours, std::abs(got_g[i] - ours_v[i]) / std::max(1.0, std::abs(ours_v[i])));
          }
        }
      if (!onednn) continue;
      MESSAGE(lib, ": bias epilogue ", worst, ", GELU epilogue ", worst_gelu, " against the triple loop; GELU vs ours ",
              gelu_vs_ours);
      CHECK(worst < 2e-6);
      CHECK(worst_gelu < 2e-6);
      CHECK(gelu_vs_ours < 1e-6);  // f32 rounding (~6e-8 per op) over a handful of operations
    }
  // no bias: the GELU epilogue alone; a batch or alpha != 1 with a bias: declined
  if (cpu::have_onednn()) {
    cpu::set_gemm_library("onednn");
    Backend::Gemm g;
    g.tb = true, g.M = 4, g.N = 3, g.K = 2, g.lda = 2, g.ldb = 2, g.ldc = 3;
    Tensor A = Tensor::full({4, 2}, -1.0), B = Tensor::ones({3, 2}), C = Tensor::empty({4, 3});
    REQUIRE(be.gemm_bias_gelu(g, A, B, Tensor(), C));
    for (double v : C.to_vector()) CHECK(v == doctest::Approx(-2 * 0.5 * (1 + std::erf(-2 / std::sqrt(2.0)))).epsilon(1e-6));
    g.alpha = 2;
    CHECK_FALSE(be.gemm_bias(g, A, B, Tensor::ones({3}), C));
    g.alpha = 1, g.batch = 2;
    CHECK_FALSE(be.gemm_bias(g, A, B, Tensor::ones({3}), C));
  }
}

TEST_CASE("cpu gemm: oneDNN's primitive cache stays bounded over many shapes") {
  if (!cpu::have_onednn()) {
    test::skip("this build has no oneDNN");
    return;
  }
  Backend::Gemm g;
  g.tb = true, g.N = 4, g.K = 3, g.ldb = 3, g.ldc = 4, g.lda = 3;
  std::vector<float> a(400 * 3, 1.f), b(12, 1.f), c(400 * 4), bias(4, 0.5f);
  for (int64_t m = 1; m <= 300; ++m) {  // 300 shapes, more than the bound
    g.M = m;
    REQUIRE(cpu::onednn_matmul(g, false, a.data(), b.data(), c.data(), {bias.data(), false}));
    CHECK(c[size_t(m * 4 - 1)] == 3.5f);
  }
  CHECK(cpu::onednn_matmul_cached() <= 256);
  CHECK(cpu::onednn_matmul_cached() >= 1);
}

TEST_CASE("cpu gemm: linear on oneDNN's bias epilogue matches the unfused GEMM onto the broadcast bias in f32") {
  LibraryGuard guard;
  Tensor x = randn({2, 37, 24}, DType::F32, 21), W = randn({40, 24}, DType::F32, 22), b = randn({40}, DType::F32, 23);
  NoGradGuard ng;
  cpu::set_gemm_library("eigen");  // no epilogue: the bias copied into C, then the GEMM with beta 1
  const std::vector<double> ref = linear(x, W, b).to_vector();
  for (const std::string& lib : libraries()) {
    cpu::set_gemm_library(lib);
    const std::vector<double> lin = linear(x, W, b).to_vector();
    double err = 0;
    for (size_t i = 0; i < lin.size(); ++i) err = std::max(err, std::abs(lin[i] - ref[i]) / std::max(1.0, std::abs(ref[i])));
    MESSAGE(lib, ": linear ", err, " from the unfused path under eigen");
    CHECK(err < 1e-5);  // two libraries' f32 sums over K = 24
  }
}

TEST_CASE("lowrank_add: writes into a base output nothing else holds, copies one that is held") {
  Tensor h = randn({3, 5, 2}, DType::F32, 31), B = randn({4, 2}, DType::F32, 32);
  auto expect = [&](const Tensor& y0, const Tensor& out, double alpha, int64_t col0) {
    const std::vector<double> hv = h.to_vector(), bv = B.to_vector(), yv = y0.to_vector(), ov = out.to_vector();
    double worst = 0;
    for (int64_t row = 0; row < 15; ++row)
      for (int64_t c = 0; c < 6; ++c) {
        double want = yv[size_t(row * 6 + c)];
        if (c >= col0 && c < col0 + 4)
          for (int64_t k = 0; k < 2; ++k) want += alpha * hv[size_t(row * 2 + k)] * bv[size_t((c - col0) * 2 + k)];
        worst = std::max(worst, std::abs(ov[size_t(row * 6 + c)] - want));
      }
    return worst;
  };
  NoGradGuard ng;
  Tensor held = randn({3, 5, 6}, DType::F32, 33);
  const Tensor before = held.clone(), alias = held;  // a second handle on y: copied
  Tensor out = lowrank_add(held, {{h, B, 2}}, 0.5);
  CHECK(out.raw() != held.raw());
  CHECK(expect(before, alias, 0.0, 0) == 0);  // the input is unchanged
  CHECK(expect(before, out, 0.5, 2) < 1e-5);
  Tensor sole = held.clone();  // one handle: written in place
  const void* buf = sole.raw();
  Tensor out2 = lowrank_add(sole, {{h, B, 1}}, -2.0);  // y is consumed
  CHECK(out2.raw() == buf);
  CHECK(expect(before, out2, -2.0, 1) < 1e-5);
}
