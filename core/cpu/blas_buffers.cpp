// OpenBLAS's work buffers, mapped up front. OpenBLAS (0.3.21, driver/others/memory.c) takes a
// work buffer for every product from a process-wide table of slots, and maps a slot's buffer
// (128 MiB of address space on x86_64: BUFFER_SIZE = 32 << 22) the first time the slot is used.
// When that mmap and the malloc fallback both fail it retries forever: its allocation loop is
// `do { ... } while (map_address == -1)`. Under a memory limit (ulimit -v) training spun at 100%
// CPU inside cblas_sgemm instead of failing.
//
// So before products run on N threads at once, N slots are mapped here: every thread of an
// OpenMP team takes a buffer and holds it until all have one, then all give them back. Slots keep
// their mapping, and no more than N products run at once, so a later product never maps again.
// Before that, the address space is checked with a mapping of our own: if it is not there,
// OpenBLAS would spin, so this throws OutOfMemory instead.
#include <sys/mman.h>

#include <atomic>
#include <mutex>

#include "core/cpu/gemm_kernel.h"
#include "core/error.h"
#ifdef _OPENMP
#include <omp.h>
#endif


namespace dg::cpu {

namespace {
// One slot's mapping: BUFFER_SIZE plus the page OpenBLAS adds (alloc_mmap), rounded up generously
// so that a later OpenBLAS with a larger buffer is still covered by the check.
constexpr size_t kSlotBytes = (size_t(128) << 20) + (size_t(1) << 20);
std::atomic<int> g_reserved{0};
std::mutex g_mu;
}  // namespace

void reserve_openblas_buffers(int threads) {
  if (!have_openblas()) return;
  if (threads <= g_reserved.load(std::memory_order_acquire)) return;
#ifdef _OPENMP
  if (omp_in_parallel()) return;  // a nested team has one thread: the next call from outside does it
#endif
  std::lock_guard<std::mutex> lock(g_mu);
  const int have = g_reserved.load();
  if (threads <= have) return;
  const size_t need = size_t(threads - have) * kSlotBytes;
  void* probe = ::mmap(nullptr, need, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (probe == MAP_FAILED)
    throw OutOfMemory(str("mapping OpenBLAS's work buffers for ", threads, " threads (", threads - have, " x ",
                          kSlotBytes >> 20, " MiB of address space; a memory limit such as ulimit -v is too low)"));
  ::munmap(probe, need);
#pragma omp parallel num_threads(threads)
  {
    void* b = openblas_buffer_alloc();
#pragma omp barrier
    openblas_buffer_free(b);
  }
  g_reserved.store(threads, std::memory_order_release);
}

}  // namespace dg::cpu
