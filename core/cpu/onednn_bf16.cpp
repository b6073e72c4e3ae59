// bf16 x bf16 -> f32 GEMM through oneDNN's matmul primitive (Debian's oneDNN 2.6 exports no
// dnnl_gemm_bf16bf16f32 in its C API; matmul is the public way to its bf16 kernels). Used where
// the CPU multiplies bf16 natively (avx512_bf16's vdpbf16ps, or AMX); elsewhere the operands
// are widened to f32 and the f32 GEMM runs (exact: a bf16 product is exact in f32), which is
// also the fallback whenever oneDNN declines a layout or offers only its reference kernel.
// Primitives are made once per shape/stride/alpha/beta and kept (a ViT step has a few dozen).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "core/build_config.h"
#include "core/cpu/cpu_info.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_libs.h"

#ifdef DG_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace dg::cpu {

namespace {
bool cpu_has_bf16() { return cpu_info().avx512_bf16 || cpu_info().amx_bf16; }

std::atomic<bool>& native_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("DG_CPU_BF16_GEMM");
    return have_onednn() && cpu_has_bf16() && !(e && std::string(e) == "f32");
  }()};
  return on;
}

#ifdef DG_HAVE_ONEDNN
struct Engine {
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  Engine() {
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) engine = nullptr;
    if (engine && dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) stream = nullptr;
  }
};

using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, double, double>;
struct Prim {
  dnnl_primitive_t p = nullptr;  // null: oneDNN declined; the caller widens to f32
  dnnl_memory_desc_t a{}, b{}, c{};
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

Prim make(const Engine& e, const Backend::Gemm& g) {
  Prim r;
  r.a = md(g.batch, g.M, g.K, g.lda, g.stride_a, g.ta, dnnl_bf16);
  r.b = md(g.batch, g.K, g.N, g.ldb, g.stride_b, g.tb, dnnl_bf16);
  r.c = md(g.batch, g.M, g.N, g.ldc, g.stride_c, false, dnnl_f32);
  dnnl_matmul_desc_t desc;
  if (dnnl_matmul_desc_init(&desc, &r.a, &r.b, nullptr, &r.c) != dnnl_success) return r;
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_post_ops_t po = nullptr;
  dnnl_primitive_attr_create(&attr);
  const float alpha = float(g.alpha);
  if (g.alpha != 1) dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha);
  if (g.beta != 0) {  // C = alpha A B + beta C
    dnnl_post_ops_create(&po);
    dnnl_post_ops_append_sum(po, float(g.beta));
    dnnl_primitive_attr_set_post_ops(attr, po);
  }
  dnnl_primitive_desc_t pd = nullptr;
  if (dnnl_primitive_desc_create(&pd, &desc, attr, e.engine, nullptr) == dnnl_success) {
    const char* impl = nullptr;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    // the reference kernel is a plain loop: slower than widening to the f32 GEMM
    if (impl && std::strncmp(impl, "ref", 3) != 0 && dnnl_primitive_create(&r.p, pd) != dnnl_success) r.p = nullptr;
    dnnl_primitive_desc_destroy(pd);
  }
  if (po) dnnl_post_ops_destroy(po);
  dnnl_primitive_attr_destroy(attr);
  return r;
}
#endif
}  // namespace

bool bf16_gemm_native() { return native_flag().load(); }

void set_bf16_gemm(const std::string& how) {
  DG_CHECK(how == "onednn" || how == "f32", "CPU bf16 GEMM '", how, "': expected 'onednn' or 'f32'");
  DG_CHECK(how == "f32" || (have_onednn() && cpu_has_bf16()), "CPU bf16 GEMM 'onednn': needs oneDNN (libdnnl-dev) ",
           "and a CPU with avx512_bf16 or AMX (this one: ", isa_summary(cpu_info()), ")");
  native_flag().store(how == "onednn");
}

std::string bf16_gemm_kind() {
  if (bf16_gemm_native()) return std::string("oneDNN matmul, native bf16 (") + (cpu_info().amx_bf16 ? "AMX" : "avx512_bf16") + ")";
  if (!have_onednn()) return "operands widened to f32, then the f32 GEMM (this build has no oneDNN)";
  if (!cpu_has_bf16()) return "operands widened to f32, then the f32 GEMM (the CPU has no avx512_bf16 or AMX)";
  return "operands widened to f32, then the f32 GEMM (DG_CPU_BF16_GEMM=f32 or set in code)";
}

bool onednn_gemm_bf16(const Backend::Gemm& g, const uint16_t* a, const uint16_t* b, float* c) {
#ifdef DG_HAVE_ONEDNN
  if (!bf16_gemm_native() || g.K == 0) return false;
  // Never destroyed (process lifetime; still reachable, so no leak report): tearing primitives
  // down at exit would race oneDNN's own static destructors.
  static const Engine& e = *new Engine;
  if (!e.stream) return false;
  static std::mutex m;
  static std::map<Key, Prim>& cache = *new std::map<Key, Prim>;
  std::lock_guard<std::mutex> lock(m);
  const Key k{g.ta, g.tb, g.batch, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.stride_a, g.stride_b, g.stride_c, g.alpha, g.beta};
  auto it = cache.find(k);
  if (it == cache.end()) it = cache.emplace(k, make(e, g)).first;
  const Prim& p = it->second;
  if (!p.p) return false;
  dnnl_memory_t ma = nullptr, mb = nullptr, mc = nullptr;
  bool ok = dnnl_memory_create(&ma, &p.a, e.engine, const_cast<uint16_t*>(a)) == dnnl_success &&
            dnnl_memory_create(&mb, &p.b, e.engine, const_cast<uint16_t*>(b)) == dnnl_success &&
            dnnl_memory_create(&mc, &p.c, e.engine, c) == dnnl_success;
  if (ok) {
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
    ok = dnnl_primitive_execute(p.p, e.stream, 3, args) == dnnl_success && dnnl_stream_wait(e.stream) == dnnl_success;
  }
  for (dnnl_memory_t mem : {ma, mb, mc})
    if (mem) dnnl_memory_destroy(mem);
  return ok;
#else
  (void)g, (void)a, (void)b, (void)c;
  return false;
#endif
}

}  // namespace dg::cpu
