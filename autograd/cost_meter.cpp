#include "autograd/cost_meter.h"

namespace dg {

namespace {
thread_local const void* g_scope = nullptr;
thread_local FlopMeter* g_meter = nullptr;
thread_local bool g_backward = false;
}  // namespace

const void* cost_scope() { return g_scope; }
CostScopeGuard::CostScopeGuard(const void* owner) : prev_(g_scope) { g_scope = owner; }
CostScopeGuard::~CostScopeGuard() { g_scope = prev_; }

FlopMeterGuard::FlopMeterGuard(FlopMeter& m) : prev_(g_meter) { g_meter = &m; }
FlopMeterGuard::~FlopMeterGuard() { g_meter = prev_; }

BackwardPhaseGuard::BackwardPhaseGuard() : prev_(g_backward) { g_backward = true; }
BackwardPhaseGuard::~BackwardPhaseGuard() { g_backward = prev_; }

void count_flops(double flops) {
  if (!g_meter) return;
  (g_backward ? g_meter->backward : g_meter->forward)[g_scope] += flops;
}

void count_gemm_flops(const Backend::Gemm& g) {
  if (g_meter) count_flops(2.0 * double(g.batch) * double(g.M) * double(g.N) * double(g.K));
}

}  // namespace dg
