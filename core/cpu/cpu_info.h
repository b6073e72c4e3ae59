// What the CPU is and which instruction sets it (and the OS) enable, read with cpuid once.
// Used to name the machine in `deltagrad --version` and the benchmarks, to key the GEMM
// calibration cache, and to decide whether a library's kernels fit the CPU (OpenBLAS that
// does not know a CPU model silently runs its SSE3 kernels; bf16 GEMMs need avx512_bf16/AMX).
#pragma once
#include <string>

namespace dg::cpu {

struct CpuInfo {
  std::string vendor;      // "GenuineIntel", "AuthenticAMD", ... ("" off x86)
  std::string model_name;  // the brand string, e.g. "Intel(R) Xeon(R) Platinum 8592+"
  int family = 0, model = 0, stepping = 0;
  // Set only where the CPU reports the feature and the OS saves its registers (XCR0).
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512_vnni = false, avx512_bf16 = false,
       avx512_fp16 = false, amx_tile = false, amx_bf16 = false;
};

const CpuInfo& cpu_info();

// The features above that are present, space-separated ("avx2 fma avx512f ..."), or "none".
std::string isa_summary(const CpuInfo& c);

// "family 6 model 207 (Intel(R) Xeon(R) ...)": the identity the calibration cache is keyed on.
std::string cpu_identity(const CpuInfo& c);

// A warning when OpenBLAS's kernel set (openblas_get_corename()) is older than the CPU: generic
// SSE kernels ("Prescott", "Core2", ...) on a CPU with AVX2, or AVX2 kernels on one with AVX-512.
// "" when the kernels fit or the core name is unknown to this check. Pure: testable with any input.
std::string openblas_kernel_warning(const std::string& corename, bool cpu_avx2, bool cpu_avx512);

}  // namespace dg::cpu
