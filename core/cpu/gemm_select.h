// Which GEMM library the CPU backend uses, chosen on the machine it runs on. On the first
// product: DG_CPU_GEMM if set (a library name forces it; "calibrate" re-measures), else the
// choice cached for this CPU, thread count and set of library versions, else a calibration
// (each built library times a few products of the shapes transformer layers run, one thread
// each as under the backend's own split, about 0.2 s) whose winner is cached. The cache is one text file,
// $XDG_CACHE_HOME/deltagrad/cpu_gemm.tsv (or ~/.cache/...), replaced atomically (temp file +
// rename); an unreadable or malformed one is ignored and rewritten. Nothing here is fatal
// except a DG_CPU_GEMM that names no built library.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/cpu/gemm_libs.h"

namespace dg::cpu {

// The library in use; the first call settles it (call it outside OpenMP regions).
GemmLib current_gemm_lib();

// One candidate's calibration: total seconds over the calibration products, and whether its
// results matched the reference (a library with wrong results is never chosen).
struct GemmTiming {
  std::string library;
  double seconds = 0;
  bool ok = true;
};
// The fastest correct candidate; among those within `tolerance` (relative) of it, the first in
// the list (the preference order), so noise between near-equal libraries does not flip the
// choice. "" when no candidate has a finite positive time and ok. Pure.
std::string choose_gemm(const std::vector<GemmTiming>& timings, double tolerance = 0.03);

// Times every built library but onednn-mt (left to DG_CPU_GEMM), each as the one-thread
// product our split runs, `reps` interleaved rounds after a warm-up, the best per product.
std::vector<GemmTiming> calibrate_gemm(int reps = 3);

struct GemmCacheEntry {
  std::string library, note;
};
std::string gemm_cache_key();   // CPU identity and ISA, OpenMP threads, library versions
std::string gemm_cache_path();  // "" when neither XDG_CACHE_HOME nor HOME is set
// Never throw: a missing, unreadable or malformed file reads as no entry; a failed write is false.
std::optional<GemmCacheEntry> read_gemm_cache(const std::string& path, const std::string& key);
bool write_gemm_cache(const std::string& path, const std::string& key, const GemmCacheEntry& e);

}  // namespace dg::cpu
