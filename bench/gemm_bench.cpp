// CPU float32 GEMM on the shapes a ViT training step runs: the CPU backend's gemm (its own
// split over the cores, core/cpu/cpu_gemm.cpp) with each built library as the product
// (oneDNN one thread per product, oneDNN with its own threads, OpenBLAS, Eigen), and OpenBLAS
// cblas_sgemm with its own threads. One line per shape: GFLOP/s of each (median of several
// runs, interleaved so background load hits all alike) and their max relative difference as a
// sanity check that all computed the same product; then "peak <GFLOP/s> <library>" (the best
// rate of the backend's GEMM on any shape) and the library the calibration chose.
//   gemm_bench [--runs 7]
// Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset so OpenBLAS detects the CPU.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/backend.h"
#include "core/cpu/cpu_info.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/onednn_matmul.h"
#include "core/tensor.h"

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

// Each function's wall times over `runs` interleaved rounds (so background load hits all alike),
// after one warm-up call each (page faults, thread pools, JIT code).
std::vector<std::vector<double>> time_runs(const std::vector<std::function<void()>>& fns, int runs) {
  for (auto& f : fns) f();
  std::vector<std::vector<double>> t(fns.size());
  for (int r = 0; r < runs; ++r)
    for (size_t i = 0; i < fns.size(); ++i) {
      const double t0 = now_s();
      fns[i]();
      t[i].push_back(now_s() - t0);
    }
  return t;
}

// The forward products y = x W^T + b (and gelu(y) for fc1) as the linear ops can run them, in
// ms: the bias broadcast into C then oneDNN's sgemm accumulating onto it (one thread per block
// of rows: "dg+onednn"), oneDNN's matmul with the bias in its epilogue under the same split and
// with oneDNN's own threads, and the GELU as a separate pass or in the epilogue.
void forward_epilogues(const std::vector<Case>& cases, int runs) {
  Backend& be = backend(Device::CPU);
  std::printf("\nforward y = x W^T + b, ms (median): fill+sgemm = bias copied into C, sgemm with beta 1 (split);\n"
              "epi = oneDNN matmul, bias in the epilogue, split by rows (split) or oneDNN's threads (mt)\n");
  std::printf("%-40s %11s %11s %11s | %13s %11s %11s\n", "shape", "fill+sgemm", "epi split", "epi mt",
              "epi+GELU pass", "GELU split", "GELU mt");
  for (const Case& c : cases) {
    if (c.ta || c.batch != 1 || c.name.find("lora") != std::string::npos) continue;
    Tensor X = rand_f32({c.M, c.K}, 1), W = rand_f32({c.N, c.K}, 2), b = rand_f32({c.N}, 3), Y = Tensor::empty({c.M, c.N});
    Tensor G = Tensor::empty({c.M, c.N});
    Backend::Gemm g;
    g.tb = true, g.M = c.M, g.N = c.N, g.K = c.K, g.lda = c.K, g.ldb = c.K, g.ldc = c.N;
    auto epi = [&](bool split, bool gelu, float* out) {
      if (!cpu::onednn_matmul(g, false, X.data<float>(), W.data<float>(), out, {b.data<float>(), gelu}, split))
        std::fprintf(stderr, "gemm_bench: oneDNN declined %s\n", c.name.c_str());
    };
    const std::vector<std::function<void()>> fns = {
        [&] {
          cpu::set_gemm_library("onednn");
          be.copy(view::expand(b, {c.M, c.N}), Y);
          Backend::Gemm acc = g;
          acc.beta = 1;
          be.gemm(acc, X, W, Y);
        },
        [&] { epi(true, false, Y.data<float>()); },
        [&] { epi(false, false, Y.data<float>()); },
        [&] {
          epi(true, false, Y.data<float>());
          be.unary(UnaryOp::Gelu, Y, G, 0);
        },
        [&] { epi(true, true, G.data<float>()); },
        [&] { epi(false, true, G.data<float>()); },
    };
    const std::vector<std::vector<double>> t = time_runs(fns, runs);
    std::printf("%-40s", c.name.c_str());
    for (size_t i = 0; i < t.size(); ++i) std::printf(i == 3 ? " | %13.3f" : " %11.3f", median(t[i]) * 1e3);
    std::printf("\n");
  }
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
      // LoRA r=8 on vit_tiny's qkv: the skinny products of its forward and backward
      {"lora x A^T   [6304x192]x[192x8]", 1, T, 8, 192},
      {"lora h B^T   [6304x8]x[8x576]", 1, T, 576, 8},
      {"lora gy B    [6304x576]x[576x8]", 1, T, 8, 576},
      {"lora dB      [576x6304]x[6304x8]", 1, 576, 8, T, true},
      {"lora dA      [8x6304]x[6304x192]", 1, 8, 192, T, true},
  };
#ifdef _OPENMP
  const int omp_threads = omp_get_max_threads();
#else
  const int omp_threads = 1;
#endif
  const std::string chosen = cpu::gemm_library(), why = cpu::gemm_choice_reason();
  const std::vector<std::string> libs = cpu::gemm_libraries();
  std::printf("gemm_bench: float32, median of %d runs; %d threads; %s; %s\n", runs, omp_threads,
              cpu::cpu_identity(cpu::cpu_info()).c_str(), cpu::isa_summary(cpu::cpu_info()).c_str());
  std::printf("libraries: %s; OpenBLAS core '%s'\n", cpu::gemm_library_versions().c_str(),
              cpu::openblas_corename().c_str());
  std::printf("%-40s", "shape (GFLOP/s; dg = the backend's split)");
  for (const std::string& l : libs) std::printf(" %14s", ("dg+" + l).c_str());
  if (cpu::have_openblas()) std::printf(" %14s", "openblas-own");
  std::printf(" %9s\n", "max rel");

  Backend& be = backend(Device::CPU);
  double peak = 0;
  std::string peak_lib;
  for (const Case& c : cases) {
    // A stored [batch, M, K] (or [batch, K, M] when ta), B [batch, K, N], C [batch, M, N]
    Tensor A = rand_f32({c.batch, c.ta ? c.K : c.M, c.ta ? c.M : c.K}, 1);
    Tensor B = rand_f32({c.batch, c.K, c.N}, 2);
    Backend::Gemm g;
    g.ta = c.ta;
    g.batch = c.batch, g.M = c.M, g.N = c.N, g.K = c.K;
    g.lda = c.ta ? c.M : c.K, g.ldb = c.N, g.ldc = c.N;
    g.stride_a = c.M * c.K, g.stride_b = c.K * c.N, g.stride_c = c.M * c.N;
    std::vector<std::function<void()>> fns;
    std::vector<Tensor> outs;
    for (const std::string& l : libs) {
      outs.push_back(Tensor::zeros({c.batch, c.M, c.N}));
      Tensor C = outs.back();
      fns.push_back([&be, &g, A, B, C, l] {
        cpu::set_gemm_library(l);
        be.gemm(g, A, B, C);
      });
    }
    if (cpu::have_openblas()) {
      outs.push_back(Tensor::zeros({c.batch, c.M, c.N}));
      fns.push_back([&, C = outs.back()] {  // OpenBLAS's own threads inside each product
        cpu::openblas_set_threads(omp_threads);
        for (int64_t i = 0; i < c.batch; ++i)
          cpu::openblas_gemm(c.ta, false, int(c.M), int(c.N), int(c.K), 1.0f, A.data<float>() + i * g.stride_a,
                             int(g.lda), B.data<float>() + i * g.stride_b, int(g.ldb), 0.0f,
                             C.data<float>() + i * g.stride_c, int(g.ldc));
        cpu::openblas_set_threads(1);
      });
    }
    const std::vector<std::vector<double>> t = time_runs(fns, runs);
    const float* ref = outs.back().data<float>();
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < outs.back().numel(); ++i) scale = std::max(scale, double(std::abs(ref[i])));
    for (const Tensor& o : outs)
      for (int64_t i = 0; i < o.numel(); ++i) worst = std::max(worst, double(std::abs(o.data<float>()[i] - ref[i])) / scale);
    const double gflop = 2.0 * double(c.batch) * double(c.M) * double(c.N) * double(c.K) * 1e-9;
    std::printf("%-40s", c.name.c_str());
    for (size_t i = 0; i < t.size(); ++i) {
      const double gf = gflop / median(t[i]);
      std::printf(" %14.1f", gf);
      if (i < libs.size() && gf > peak) peak = gf, peak_lib = libs[i];
    }
    std::printf(" %9.1e\n", worst);
    std::fflush(stdout);
    if (worst > 1e-4) {
      std::fprintf(stderr, "gemm_bench: %s: the GEMMs disagree (max rel %.3g)\n", c.name.c_str(), worst);
      return 1;
    }
  }
  if (cpu::have_onednn()) forward_epilogues(cases, runs);
  std::printf("peak %.1f %s\n", peak, peak_lib.c_str());
  std::printf("chosen %s (%s)\n", chosen.c_str(), why.c_str());
  return 0;
}
