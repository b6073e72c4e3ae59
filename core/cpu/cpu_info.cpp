// cpuid decoding for CpuInfo. Leaf 1 (family/model, FMA, OSXSAVE), leaf 7 (AVX2, AVX-512
// subsets, AMX), 0x80000002-4 (brand string); XGETBV says which register states the OS saves,
// without which a feature bit is unusable.
#include "core/cpu/cpu_info.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define DG_X86 1
#endif

namespace dg::cpu {

namespace {
#ifdef DG_X86
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

CpuInfo detect() {
  CpuInfo c;
  unsigned a, b, cx, d;
  if (!__get_cpuid(0, &a, &b, &cx, &d)) return c;
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4), std::memcpy(vendor + 4, &d, 4), std::memcpy(vendor + 8, &cx, 4);
  c.vendor = vendor;
  __get_cpuid(1, &a, &b, &cx, &d);
  const unsigned base_family = (a >> 8) & 0xf, ext_family = (a >> 20) & 0xff;
  const unsigned base_model = (a >> 4) & 0xf, ext_model = (a >> 16) & 0xf;
  c.family = int(base_family == 0xf ? base_family + ext_family : base_family);
  c.model = int(base_family == 0x6 || base_family == 0xf ? (ext_model << 4) + base_model : base_model);
  c.stepping = int(a & 0xf);
  const bool osxsave = cx & (1u << 27);
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6, tiles = (xcr0 & 0x60000) == 0x60000;
  c.fma = ymm && (cx & (1u << 12));
  if (max_leaf >= 7) {
    unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
    __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7);
    c.avx2 = ymm && (b7 & (1u << 5));
    c.avx512f = zmm && (b7 & (1u << 16));
    c.avx512bw = zmm && (b7 & (1u << 30));
    c.avx512_vnni = zmm && (c7 & (1u << 11));
    c.avx512_fp16 = zmm && (d7 & (1u << 23));
    c.amx_bf16 = tiles && (d7 & (1u << 22));
    c.amx_tile = tiles && (d7 & (1u << 24));
    unsigned a71 = 0, b71 = 0, c71 = 0, d71 = 0;
    __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
    c.avx512_bf16 = zmm && (a71 & (1u << 5));
  }
  __get_cpuid(0x80000000, &a, &b, &cx, &d);
  if (a >= 0x80000004) {
    unsigned r[12] = {};
    for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
    char brand[49] = {};
    std::memcpy(brand, r, 48);
    std::string s = brand;
    const auto first = s.find_first_not_of(' ');
    c.model_name = first == std::string::npos ? "" : s.substr(first, s.find_last_not_of(' ') - first + 1);
  }
  return c;
}
#else
CpuInfo detect() { return {}; }
#endif

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
  return s;
}
}  // namespace

const CpuInfo& cpu_info() {
  static const CpuInfo info = detect();
  return info;
}

std::string isa_summary(const CpuInfo& c) {
  const std::pair<bool, const char*> flags[] = {
      {c.avx2, "avx2"},           {c.fma, "fma"},
      {c.avx512f, "avx512f"},     {c.avx512bw, "avx512bw"},
      {c.avx512_vnni, "avx512_vnni"}, {c.avx512_bf16, "avx512_bf16"},
      {c.avx512_fp16, "avx512_fp16"}, {c.amx_tile, "amx_tile"},
      {c.amx_bf16, "amx_bf16"}};
  std::string s;
  for (const auto& [on, name] : flags)
    if (on) s += (s.empty() ? "" : " ") + std::string(name);
  return s.empty() ? "none" : s;
}

std::string cpu_identity(const CpuInfo& c) {
  return "family " + std::to_string(c.family) + " model " + std::to_string(c.model) + " (" +
         (c.model_name.empty() ? c.vendor : c.model_name) + ")";
}

std::string openblas_kernel_warning(const std::string& corename, bool cpu_avx2, bool cpu_avx512) {
  // OpenBLAS's x86-64 kernel sets by the widest vectors they use (0.3.x core names).
  static const std::vector<std::string> avx512_sets = {"skylakex", "cooperlake", "sapphirerapids"};
  static const std::vector<std::string> avx2_sets = {"haswell", "zen", "excavator"};
  static const std::vector<std::string> older_sets = {
      "prescott", "core2",   "penryn",    "dunnington", "nehalem",  "sandybridge", "atom",   "katmai",
      "coppermine", "northwood", "banias", "barcelona", "bobcat",   "bulldozer",  "piledriver", "steamroller",
      "opteron",  "opteron_sse3", "athlon", "nano",    "generic"};
  const std::string n = lower(corename);
  auto in = [&](const std::vector<std::string>& v) { return std::find(v.begin(), v.end(), n) != v.end(); };
  if (in(older_sets) && (cpu_avx2 || cpu_avx512))
    return "OpenBLAS runs its '" + corename + "' kernels (no AVX2) on a CPU with " +
           (cpu_avx512 ? "AVX-512" : "AVX2") + ": it does not know this CPU model";
  if (in(avx2_sets) && cpu_avx512)
    return "OpenBLAS runs its '" + corename + "' (AVX2) kernels on a CPU with AVX-512";
  return "";
}

}  // namespace dg::cpu
