// The matmul primitive cache and its calls (onednn_matmul.h). oneDNN's C API returns a status
// for every call: nothing here throws, so it may run inside OpenMP regions.
#include "core/cpu/onednn_matmul.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "core/build_config.h"
#include "core/cpu/gemm_kernel.h"

#ifdef DG_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace dg::cpu {

#ifdef DG_HAVE_ONEDNN
namespace {
constexpr size_t kMaxPrimitives = 256;  // a ViT step makes a few dozen shapes; a sweep of sizes would grow without bound

dnnl_engine_t engine() {
  // never destroyed (process lifetime): tearing oneDNN objects down at exit races its own static destructors
  static dnnl_engine_t e = [] {
    dnnl_engine_t x = nullptr;
    return dnnl_engine_create(&x, dnnl_cpu, 0) == dnnl_success ? x : nullptr;
  }();
  return e;
}
// one stream per thread: the row-split calls run concurrently. Destroyed when its thread ends
// (a thread's locals go before the process's statics, so oneDNN is still there)
struct ThreadStream {
  dnnl_stream_t s = nullptr;
  ThreadStream() {
    if (engine() && dnnl_stream_create(&s, engine(), dnnl_stream_default_flags) != dnnl_success) s = nullptr;
  }
  ~ThreadStream() {
    if (s) dnnl_stream_destroy(s);
  }
};
dnnl_stream_t stream() {
  thread_local ThreadStream t;
  return t.s;
}

using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, double, double, bool, bool, bool>;
struct Prim {
  dnnl_primitive_t p = nullptr;  // null: oneDNN declined, or offered only its reference kernel
  dnnl_memory_desc_t a{}, b{}, c{}, bias{};
  Prim() = default;
  Prim(const Prim&) = delete;
  ~Prim() {
    if (p) dnnl_primitive_destroy(p);
  }
};

// [batch, rows, cols] with row stride ld and batch stride s; a batch of one, or a broadcast
// operand (s == 0), is given batch extent 1.
dnnl_memory_desc_t md(int64_t batch, int64_t rows, int64_t cols, int64_t ld, int64_t s, bool transposed,
                      dnnl_data_type_t dt) {
  const bool one = batch == 1 || s == 0;
  dnnl_dims_t dims = {one ? 1 : batch, rows, cols};
  dnnl_dims_t strides = {one ? rows * cols : s, transposed ? 1 : ld, transposed ? ld : 1};
  dnnl_memory_desc_t d;
  if (dnnl_memory_desc_init_by_strides(&d, 3, dims, dt, strides) != dnnl_success) std::memset(&d, 0, sizeof d);
  return d;
}

std::shared_ptr<Prim> make(const Backend::Gemm& g, bool bf16, bool bias, bool gelu) {
  auto r = std::make_shared<Prim>();
  const dnnl_data_type_t dt = bf16 ? dnnl_bf16 : dnnl_f32;
  r->a = md(g.batch, g.M, g.K, g.lda, g.stride_a, g.ta, dt);
  r->b = md(g.batch, g.K, g.N, g.ldb, g.stride_b, g.tb, dt);
  r->c = md(g.batch, g.M, g.N, g.ldc, g.stride_c, false, dnnl_f32);
  if (bias) {
    dnnl_dims_t dims = {1, 1, g.N};
    if (dnnl_memory_desc_init_by_tag(&r->bias, 3, dims, dnnl_f32, dnnl_abc) != dnnl_success) return r;
  }
  dnnl_matmul_desc_t desc;
  if (dnnl_matmul_desc_init(&desc, &r->a, &r->b, bias ? &r->bias : nullptr, &r->c) != dnnl_success) return r;
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_post_ops_t po = nullptr;
  if (dnnl_primitive_attr_create(&attr) != dnnl_success) return r;
  const float alpha = float(g.alpha);
  bool ok = g.alpha == 1 || dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha) == dnnl_success;
  if (g.beta != 0 || gelu) {
    ok = ok && dnnl_post_ops_create(&po) == dnnl_success;
    if (ok && g.beta != 0) ok = dnnl_post_ops_append_sum(po, float(g.beta)) == dnnl_success;  // C = alpha A B + beta C
    if (ok && gelu) ok = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_gelu_erf, 0.f, 0.f) == dnnl_success;
    ok = ok && dnnl_primitive_attr_set_post_ops(attr, po) == dnnl_success;
  }
  dnnl_primitive_desc_t pd = nullptr;
  if (ok && dnnl_primitive_desc_create(&pd, &desc, attr, engine(), nullptr) == dnnl_success) {
    const char* impl = nullptr;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    // the reference kernel is a plain loop: the caller's own path is faster
    if (impl && std::strncmp(impl, "ref", 3) != 0 && dnnl_primitive_create(&r->p, pd) != dnnl_success) r->p = nullptr;
    dnnl_primitive_desc_destroy(pd);
  }
  if (po) dnnl_post_ops_destroy(po);
  dnnl_primitive_attr_destroy(attr);
  return r;
}

std::mutex g_mu;
std::map<Key, std::shared_ptr<Prim>>& cache() {
  static auto& c = *new std::map<Key, std::shared_ptr<Prim>>;  // never destroyed, as engine()
  return c;
}

std::shared_ptr<Prim> lookup(const Backend::Gemm& g, bool bf16, const MatmulEpilogue& e) {
  const Key k{g.ta, g.tb, g.batch, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.stride_a, g.stride_b, g.stride_c,
              g.alpha, g.beta, bf16, e.bias != nullptr, e.gelu};
  std::lock_guard<std::mutex> lock(g_mu);
  auto& c = cache();
  auto it = c.find(k);
  if (it != c.end()) return it->second;
  if (c.size() >= kMaxPrimitives) c.clear();  // those in use live on in their callers' shared_ptr
  std::shared_ptr<Prim> p = make(g, bf16, e.bias != nullptr, e.gelu);
  c.emplace(k, p);
  return p;
}

bool execute(const Prim& p, const void* a, const void* b, float* c, const float* bias) {
  dnnl_stream_t s = stream();
  if (!s) return false;
  dnnl_memory_t ma = nullptr, mb = nullptr, mc = nullptr, mbias = nullptr;
  bool ok = dnnl_memory_create(&ma, &p.a, engine(), const_cast<void*>(a)) == dnnl_success &&
            dnnl_memory_create(&mb, &p.b, engine(), const_cast<void*>(b)) == dnnl_success &&
            dnnl_memory_create(&mc, &p.c, engine(), c) == dnnl_success &&
            (!bias || dnnl_memory_create(&mbias, &p.bias, engine(), const_cast<float*>(bias)) == dnnl_success);
  if (ok) {
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}, {DNNL_ARG_BIAS, mbias}};
    ok = dnnl_primitive_execute(p.p, s, bias ? 4 : 3, args) == dnnl_success && dnnl_stream_wait(s) == dnnl_success;
  }
  for (dnnl_memory_t m : {ma, mb, mc, mbias})
    if (m) dnnl_memory_destroy(m);
  return ok;
}
}  // namespace

bool onednn_matmul(const Backend::Gemm& g, bool bf16, const void* a, const void* b, float* c, const MatmulEpilogue& e,
                   bool split_rows) {
  if (!have_onednn() || !engine() || g.M == 0 || g.N == 0 || g.K == 0 || g.batch == 0) return false;
  if (e.bias && g.alpha != 1) return false;  // oneDNN scales before or after the bias: not asked
#ifdef _OPENMP
  // split only where C is overwritten (beta 0): a failed block must leave nothing the caller's path cannot redo
  const int nt = split_rows && g.batch == 1 && g.beta == 0 && !omp_in_parallel() ? std::min<int64_t>(omp_get_max_threads(), g.M) : 1;
#else
  const int nt = 1;
#endif
  if (nt <= 1) {
    const std::shared_ptr<Prim> p = lookup(g, bf16, e);
    return p->p && execute(*p, a, b, c, e.bias);
  }
  // one block of rows per thread; every block but maybe the last has the same shape, so two
  // primitives serve, made here, outside the parallel region
  const int64_t step = (g.M + nt - 1) / nt;
  Backend::Gemm part = g, last = g;
  part.M = step;
  last.M = g.M - step * (nt - 1);
  if (last.M <= 0) return onednn_matmul(g, bf16, a, b, c, e, false);  // few rows: not worth a split
  const std::shared_ptr<Prim> pp = lookup(part, bf16, e), pl = lookup(last, bf16, e);
  if (!pp->p || !pl->p) return false;
  const size_t elem = bf16 ? 2 : 4;
  bool ok = true;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) reduction(&& : ok)
  {
    const int t = omp_get_thread_num();
    const int64_t r0 = t * step;
    const char* at = static_cast<const char*>(a) + size_t(g.ta ? r0 : r0 * g.lda) * elem;
    ok = execute(t == nt - 1 ? *pl : *pp, at, b, c + r0 * g.ldc, e.bias);
  }
#endif
  // a failed block (never seen) leaves C partly written: the caller's path rewrites all of it
  return ok;
}

int64_t onednn_matmul_cached() {
  std::lock_guard<std::mutex> lock(g_mu);
  return int64_t(cache().size());
}

#else
bool onednn_matmul(const Backend::Gemm&, bool, const void*, const void*, float*, const MatmulEpilogue&, bool) {
  return false;
}
int64_t onednn_matmul_cached() { return 0; }
#endif

}  // namespace dg::cpu
