// bf16 x bf16 -> f32 GEMM through oneDNN's matmul primitive (Debian's oneDNN 2.6 exports no
// dnnl_gemm_bf16bf16f32 in its C API; matmul is the public way to its bf16 kernels). Used where
// the CPU multiplies bf16 natively (avx512_bf16's vdpbf16ps, or AMX); elsewhere the operands
// are widened to f32 and the f32 GEMM runs (exact: a bf16 product is exact in f32), which is
// also the fallback whenever oneDNN declines a layout or offers only its reference kernel.
// The primitives and their cache: onednn_matmul.cpp.
#include <atomic>
#include <cstdlib>
#include <string>

#include "core/build_config.h"
#include "core/cpu/cpu_info.h"
#include "core/cpu/gemm_kernel.h"
#include "core/cpu/gemm_libs.h"
#include "core/cpu/onednn_matmul.h"

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
  return bf16_gemm_native() && onednn_matmul(g, /*bf16=*/true, a, b, c);
}

}  // namespace dg::cpu
