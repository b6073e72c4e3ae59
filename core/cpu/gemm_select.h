// Which GEMM library the CPU backend uses, chosen on the machine it runs on. On the first
// product: DG_CPU_GEMM if set (a library name forces it; "calibrate" re-measures), else the
// choice cached for this CPU, thread count and set of library versions, else a calibration
// (each built library times one product of each kind transformer layers run, one thread
// each as under the backend's own split, about 0.3 s) whose winner, overall and per kind of
// product (GemmKind below), is cached. On a busy machine (load above the CPUs + 1) timings are
// noise and would differ from process to process: the first built library in preference order
// serves instead, unmeasured and not cached. The cache is one text file,
// $XDG_CACHE_HOME/deltagrad/cpu_gemm.tsv (or ~/.cache/...), replaced atomically (temp file +
// rename); an unreadable or malformed one is ignored and rewritten. Nothing here is fatal
// except a DG_CPU_GEMM that names no built library.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/cpu/gemm_libs.h"

namespace dg::cpu {

// The library is chosen per kind of product, from the same calibration: one library is not the
// fastest at all of them (on a Zen 3, oneDNN's one-thread sgemm ran the forward products 1.3-2x
// faster than OpenBLAS's but the weight gradients, op(A) = A^T over thousands of tokens, at half
// OpenBLAS's rate: bench/RESULTS.md).
enum class GemmKind {
  Forward,     // y = x W^T      (B transposed)
  InputGrad,   // gx = gy W      (neither)
  WeightGrad,  // gW = gy^T x    (A transposed)
  Heads,       // batched products (attention heads)
};
constexpr int kGemmKinds = 4;
GemmKind gemm_kind(const Backend::Gemm& g);
GemmKind gemm_kind(bool ta, bool tb, int64_t batch);
const char* gemm_kind_name(GemmKind k);  // "forward", "input gradient", "weight gradient", "heads"

// The library for a kind of product; the first call settles the choice (call it outside OpenMP
// regions). current_gemm_lib() is the overall winner that --version names.
GemmLib gemm_lib_for(GemmKind k);
GemmLib current_gemm_lib();
// Forces one kind's library (tests, benches); set_gemm_library() sets them all.
void set_gemm_library_for(GemmKind k, const std::string& name);

// One candidate's calibration: total seconds over the calibration products (one per kind, in
// GemmKind order, in `per_kind`), and whether its results matched the reference (a library
// with wrong results is never chosen).
struct GemmTiming {
  std::string library;
  double seconds = 0;
  bool ok = true;
  std::vector<double> per_kind = {};
};
// choose_gemm over each kind's timings, `overall` (the overall winner) first with a wider
// tolerance: a kind leaves it only for a library over 10% faster on that kind, so single-thread
// timings within noise of each other do not flip kinds between runs. A name per kind ("" where
// none is usable).
std::vector<std::string> choose_gemm_per_kind(const std::vector<GemmTiming>& timings, const std::string& overall,
                                              double tolerance = 0.10);
// The fastest correct candidate; among those within `tolerance` (relative) of it, the first in
// the list (the preference order), so noise between near-equal libraries does not flip the
// choice. "" when no candidate has a finite positive time and ok. Pure.
std::string choose_gemm(const std::vector<GemmTiming>& timings, double tolerance = 0.03);

// Times every built library but onednn-mt (left to DG_CPU_GEMM), each as the one-thread
// product our split runs, `reps` interleaved rounds after a warm-up, the best per product.
std::vector<GemmTiming> calibrate_gemm(int reps = 3);

// library: one name (every kind) or kGemmKinds comma-separated names in GemmKind order.
struct GemmCacheEntry {
  std::string library, note;
};
// The names in a cache entry's library field, one per kind; nullopt when malformed or not built.
std::optional<std::vector<GemmLib>> parse_gemm_libs(const std::string& field);
std::string gemm_cache_key();   // CPU identity and ISA, OpenMP threads, library versions
std::string gemm_cache_path();  // "" when neither XDG_CACHE_HOME nor HOME is set
// Never throw: a missing, unreadable or malformed file reads as no entry; a failed write is false.
std::optional<GemmCacheEntry> read_gemm_cache(const std::string& path, const std::string& key);
bool write_gemm_cache(const std::string& path, const std::string& key, const GemmCacheEntry& e);

}  // namespace dg::cpu
