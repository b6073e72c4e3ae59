// oneDNN's matmul primitive for the CPU backend (not for use outside core/cpu): the epilogues
// oneDNN's sgemm has not (a bias added to every row, GELU after it) and the bf16 kernels
// (onednn_bf16.cpp). Primitives are made once per shape, strides, data type and epilogue and
// kept in a bounded cache (a ViT step has a few dozen). Nothing here throws: a shape or layout
// oneDNN declines, or only its reference kernel (a plain loop), returns false and the caller
// runs its own path (with C untouched, except a failed block of a row split, which only runs
// where C is overwritten).
#pragma once
#include <cstdint>

#include "core/backend.h"

namespace dg::cpu {

struct MatmulEpilogue {
  const float* bias = nullptr;  // [N] added to every row of C (then alpha must be 1), or none
  bool gelu = false;            // exact (erf) GELU applied last
};

// C = alpha op(A) op(B) + beta C (+ bias) (-> gelu) for one Backend::Gemm (any batch), A and B
// f32 (bf16 = false) or bf16, C f32. `split_rows`: the rows of C in one block per OpenMP thread,
// each a one-thread product (as the backend's own split runs a library; batch 1 and beta 0
// only); else oneDNN's own threads over the whole product.
bool onednn_matmul(const Backend::Gemm& g, bool bf16, const void* a, const void* b, float* c,
                   const MatmulEpilogue& e = {}, bool split_rows = false);
// Primitives cached now (tests of the bound)
int64_t onednn_matmul_cached();

}  // namespace dg::cpu
