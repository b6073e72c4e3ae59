// What `deltagrad cost` reads while one step runs: which delta each op belongs to, and the GEMM
// FLOPs the engine runs, forward and backward apart.
//  * A scope is an opaque owner (nn/module.cpp sets a delta's address while the delta's forward
//    runs; nullptr is the base model). Tape::record stores the scope in the record, and
//    Tape::backward restores it while the record's backward runs, so a delta's backward GEMMs are
//    its own too.
//  * FLOPs are counted where the GEMMs are issued (linear, matmul, fused attention): 2 M N K per
//    GEMM, what runs, so a frozen weight's gradient GEMM, which backward never issues, counts
//    nothing. Element-wise ops, norms and softmax are not counted (they are O(elements), a few
//    percent of a ViT step's FLOPs).
//  * Counting happens only while a FlopMeter is active on the thread; otherwise it costs a branch.
#pragma once
#include <map>

#include "core/backend.h"

namespace dg {

const void* cost_scope();  // the current thread's scope (nullptr: the base model)

class CostScopeGuard {
 public:
  explicit CostScopeGuard(const void* owner);
  ~CostScopeGuard();
  CostScopeGuard(const CostScopeGuard&) = delete;
  CostScopeGuard& operator=(const CostScopeGuard&) = delete;

 private:
  const void* prev_;
};

struct FlopMeter {
  std::map<const void*, double> forward, backward;  // scope -> FLOPs
};

// Counts into `m` while alive (one meter per thread at a time).
class FlopMeterGuard {
 public:
  explicit FlopMeterGuard(FlopMeter& m);
  ~FlopMeterGuard();
  FlopMeterGuard(const FlopMeterGuard&) = delete;
  FlopMeterGuard& operator=(const FlopMeterGuard&) = delete;

 private:
  FlopMeter* prev_;
};

// Set by Tape::backward: FLOPs counted meanwhile are backward FLOPs.
class BackwardPhaseGuard {
 public:
  BackwardPhaseGuard();
  ~BackwardPhaseGuard();
  BackwardPhaseGuard(const BackwardPhaseGuard&) = delete;
  BackwardPhaseGuard& operator=(const BackwardPhaseGuard&) = delete;

 private:
  bool prev_;
};

void count_flops(double flops);                  // into the active meter, if any
void count_gemm_flops(const Backend::Gemm& g);   // 2 * batch * M * N * K

}  // namespace dg
