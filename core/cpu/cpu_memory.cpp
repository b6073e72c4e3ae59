// CPU memory: a caching allocator. A training step frees and re-allocates the same
// activation sizes every step; handing large blocks back to the C library returns them to
// the kernel (munmap / heap trim), and the next step pays a page fault and a page clear per
// 4 KiB (measured: 12-15% of a ViT-Ti LoRA step). So freed blocks of >= 64 KiB stay in a
// free list keyed by their size class and the next request of that class reuses one. The
// classes are eight per power of two (a block is at most 12.5% larger than asked): sizes a few
// per cent apart share blocks (VPT-deep's token tensors with and without their prompt rows,
// 207 and 197 rows of a ViT-Ti batch, kept two sets of blocks with exact sizes: +32 MB RSS);
// the unused tail of a large block is never touched, so it costs address space, not memory.
// Small blocks go straight to the C library, which already recycles them.
// The cache is bounded: past kMaxCachedBytes, freed blocks go back to the system.
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "core/cpu/cpu_backend.h"

namespace dg::cpu {

namespace {
constexpr size_t kCacheFrom = 64 << 10;       // blocks below this are not cached
constexpr size_t kMaxCachedBytes = size_t(4) << 30;

struct Cache {
  std::mutex mu;  // the data loader's thread allocates too
  std::map<size_t, std::vector<void*>> free_blocks;  // rounded size -> blocks
  size_t cached = 0;
};
Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: tensors may be freed during static destruction
  return *c;
}
size_t rounded(size_t nbytes) {
  if (nbytes < kCacheFrom) return (nbytes + 63) / 64 * 64;
  size_t pow2 = kCacheFrom;  // the largest power of two <= nbytes
  while (pow2 <= nbytes / 2) pow2 *= 2;
  const size_t step = pow2 / 8;  // >= 8 KiB, a multiple of 4 KiB
  return (nbytes + step - 1) / step * step;
}
void* system_alloc(size_t n) { return std::aligned_alloc(64, n); }  // 64-byte aligned for AVX-512

std::atomic<size_t> g_in_use{0}, g_peak{0};
void count_alloc(size_t nbytes) {
  const size_t now = g_in_use.fetch_add(nbytes) + nbytes;
  size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}
}  // namespace

size_t CpuBackend::bytes_in_use() { return g_in_use.load(); }
size_t CpuBackend::peak_bytes() { return g_peak.load(); }
void CpuBackend::reset_peak() { g_peak.store(g_in_use.load()); }

void* CpuBackend::alloc(size_t nbytes) {
  const size_t n = rounded(nbytes == 0 ? 1 : nbytes);
  count_alloc(nbytes == 0 ? 1 : nbytes);  // Storage frees a 0-byte tensor as 1 byte
  if (n >= kCacheFrom) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(n);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= n;
      return p;
    }
  }
  void* p = system_alloc(n);
  if (!p && n >= kCacheFrom) {  // out of memory: give the cache back and try once more
    release_cached_memory();
    p = system_alloc(n);
  }
  if (!p) g_in_use.fetch_sub(nbytes == 0 ? 1 : nbytes);
  if (!p) throw OutOfMemory(str("cpu alloc: out of memory allocating ", nbytes, " bytes"));
  return p;
}

void CpuBackend::free(void* p, size_t nbytes) {
  if (!p) return;
  g_in_use.fetch_sub(nbytes == 0 ? 1 : nbytes);
  const size_t n = rounded(nbytes == 0 ? 1 : nbytes);
  if (n >= kCacheFrom) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.cached + n <= kMaxCachedBytes) {
      c.free_blocks[n].push_back(p);
      c.cached += n;
      return;
    }
  }
  std::free(p);
}

size_t CpuBackend::cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.cached;
}

void CpuBackend::release_cached_memory() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [n, blocks] : c.free_blocks)
    for (void* p : blocks) std::free(p);
  c.free_blocks.clear();
  c.cached = 0;
}

}  // namespace dg::cpu
