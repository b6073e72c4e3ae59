// The one translation unit that compiles stb's image writer (header-only, from Debian's
// libstb-dev). The reader, stb_image, is compiled in data/image_folder.cpp, its only user.
// stb's PNG encoder grows its buffers with realloc and writes through the result unchecked:
// a failed allocation (a process near its memory limit) crashed in stbiw__zlib_flushf. Its
// allocations throw std::bad_alloc instead, which the caller reports (train/figure.cpp).
#include <cstdlib>
#include <new>

namespace {
void* stbiw_malloc(size_t n) {
  void* p = std::malloc(n);
  if (!p && n) throw std::bad_alloc();
  return p;
}
void* stbiw_realloc(void* old, size_t n) {
  void* p = std::realloc(old, n);
  if (!p && n) throw std::bad_alloc();  // `old` is left to the process's end: it is out of memory
  return p;
}
}  // namespace

#define STBIW_MALLOC(sz) stbiw_malloc(sz)
#define STBIW_REALLOC(p, newsz) stbiw_realloc(p, newsz)
#define STBIW_FREE(p) std::free(p)
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
