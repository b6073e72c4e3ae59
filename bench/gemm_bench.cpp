// CPU float32 GEMM on the shapes a ViT training step runs: the CPU backend's gemm (threaded
// by hand in core/cpu/cpu_gemm.cpp) with Eigen and with OpenBLAS as the one-thread product,
// against OpenBLAS cblas_sgemm with its own threads. Prints one line per shape: GFLOP/s of
// each (median of several runs, interleaved so background load hits all alike) and their
// max relative difference as a sanity check that all computed the same product.
//   gemm_bench [--runs 7]
// Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset so OpenBLAS detects the CPU.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/backend.h"
#include "core/cpu/gemm_kernel.h"

using namespace dg;

namespace {

struct Case {
  std::string name;
  int64_t batch, M, N, K;
  bool ta = false;  // op(A) = A^T: the weight-gradient products (dW = gy^T x)
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Tensor rand_f32(const Shape& s, uint64_t seed) {
  Tensor t = Tensor::empty(s, DType::F32);
  backend(Device::CPU).random_normal(t, seed, 0, 0.0, 1.0);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 7;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--runs") && i + 1 < argc) runs = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: gemm_bench [--runs N]\n");
      return 2;
    }
  }
  // ViT-Tiny at batch 32 (197 tokens, D 192, MLP 768) and ViT-Small at batch 8 (D 384,
  // MLP 1536): qkv, fc1, fc2 forward; one weight gradient each; attention scores per head.
  const int64_t T = 32 * 197, S = 8 * 197;
  const std::vector<Case> cases = {
      {"vit_tiny qkv   [6304x192]x[192x576]", 1, T, 576, 192},
      {"vit_tiny fc1   [6304x192]x[192x768]", 1, T, 768, 192},
      {"vit_tiny fc2   [6304x768]x[768x192]", 1, T, 192, 768},
      {"vit_tiny dWfc1 [768x6304]x[6304x192]", 1, 768, 192, T, true},
      {"vit_small qkv  [1576x384]x[384x1152]", 1, S, 1152, 384},
      {"vit_small fc1  [1576x384]x[384x1536]", 1, S, 1536, 384},
      {"vit_small fc2  [1576x1536]x[1536x384]", 1, S, 384, 1536},
      {"vit_small dWfc1 [1536x1576]x[1576x384]", 1, 1536, 384, S, true},
      {"attn scores [197x64]x[64x197] x96", 96, 197, 197, 64},
  };
#ifdef _OPENMP
  const int omp_threads = omp_get_max_threads();
#else
  const int omp_threads = 1;
#endif
  const int blas_threads = openblas_get_num_threads();
  std::printf("gemm_bench: float32, median of %d runs; backend threads (OpenMP) %d, OpenBLAS threads %d, core %s\n",
              runs, omp_threads, blas_threads, openblas_get_corename());
  std::printf("OpenBLAS config: %s\n", openblas_get_config());
  std::printf("%-40s %12s %12s %12s %14s %9s\n", "shape", "eigen GF/s", "dg+oblas GF/s", "openblas GF/s",
              "openblas-b GF/s", "max rel");

  Backend& be = backend(Device::CPU);
  for (const Case& c : cases) {
    // A stored [batch, M, K] (or [batch, K, M] when ta), B [batch, K, N], C [batch, M, N]
    Tensor A = rand_f32({c.batch, c.ta ? c.K : c.M, c.ta ? c.M : c.K}, 1);
    Tensor B = rand_f32({c.batch, c.K, c.N}, 2);
    Tensor C1 = Tensor::zeros({c.batch, c.M, c.N}), C2 = Tensor::zeros({c.batch, c.M, c.N}),
           C3 = Tensor::zeros({c.batch, c.M, c.N});
    Backend::Gemm g;
    g.ta = c.ta;
    g.batch = c.batch, g.M = c.M, g.N = c.N, g.K = c.K;
    g.lda = c.ta ? c.M : c.K, g.ldb = c.N, g.ldc = c.N;
    g.stride_a = c.M * c.K, g.stride_b = c.K * c.N, g.stride_c = c.M * c.N;
    const float* a = A.data<float>();
    const float* b = B.data<float>();
    float* c2 = C2.data<float>();
    // OpenBLAS, its own threads inside each product, a loop over the batch
    auto blas = [&] {
      openblas_set_num_threads(blas_threads);
      for (int64_t i = 0; i < c.batch; ++i)
        cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, CblasNoTrans, int(c.M), int(c.N), int(c.K), 1.0f,
                    a + i * g.stride_a, int(g.lda), b + i * g.stride_b, int(g.ldb), 0.0f, c2 + i * g.stride_c,
                    int(g.ldc));
      openblas_set_num_threads(1);
    };
    // batched only: OpenBLAS on one thread per product, the batch split over OpenMP threads
    // (what the Eigen path does for attention)
    auto blas_batched = [&] {
      openblas_set_num_threads(1);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < c.batch; ++i)
        cblas_sgemm(CblasRowMajor, c.ta ? CblasTrans : CblasNoTrans, CblasNoTrans, int(c.M), int(c.N), int(c.K), 1.0f,
                    a + i * g.stride_a, int(g.lda), b + i * g.stride_b, int(g.ldb), 0.0f, c2 + i * g.stride_c,
                    int(g.ldc));
    };
    auto eigen = [&] {
      cpu::set_gemm_library("eigen");
      be.gemm(g, A, B, C1);
    };
    auto dg_blas = [&] {  // the backend's own split, OpenBLAS as the one-thread product
      cpu::set_gemm_library("openblas");
      be.gemm(g, A, B, C3);
    };
    auto time = [](auto&& f) {
      const double t0 = now_s();
      f();
      return now_s() - t0;
    };
    eigen(), dg_blas(), blas();  // warm up (page faults, thread pools)
    std::vector<double> te, td, tb, tbb;
    for (int r = 0; r < runs; ++r) {
      te.push_back(time(eigen));
      td.push_back(time(dg_blas));
      tb.push_back(time(blas));
      if (c.batch > 1) tbb.push_back(time(blas_batched));
    }
    // both produced the same product (C2 holds the last OpenBLAS result)
    const float *c1 = C1.data<float>(), *c3 = C3.data<float>();
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < C1.numel(); ++i) scale = std::max(scale, double(std::abs(c1[i])));
    for (int64_t i = 0; i < C1.numel(); ++i)
      worst = std::max({worst, double(std::abs(c1[i] - c2[i])) / scale, double(std::abs(c3[i] - c2[i])) / scale});
    const double gflop = 2.0 * double(c.batch) * double(c.M) * double(c.N) * double(c.K) * 1e-9;
    char bb[32] = "-";
    if (!tbb.empty()) std::snprintf(bb, sizeof bb, "%.1f", gflop / median(tbb));
    std::printf("%-40s %12.1f %12.1f %12.1f %14s %9.1e\n", c.name.c_str(), gflop / median(te), gflop / median(td),
                gflop / median(tb), bb, worst);
    std::fflush(stdout);
    if (worst > 1e-4) {
      std::fprintf(stderr, "gemm_bench: %s: the GEMMs disagree (max rel %.3g)\n", c.name.c_str(), worst);
      return 1;
    }
  }
  return 0;
}
