// OpenBLAS, opened on first use rather than linked. A linked libopenblas starts its thread pool
// in its load-time constructor, before main: a server thread with its stack and its own malloc
// arena (64 MiB of address space). Under a memory limit that killed the process before any of
// our code ran (OpenBLAS raises SIGINT when pthread_create fails; in a build without CUDA,
// limits of 94-140 MiB aborted in static initialisation with std::bad_alloc), and at exit its
// handler hung joining a thread that spun on a failed mapping. We call OpenBLAS from our own
// threads, one product per thread (gemm_libs.h), so its pool is never wanted: opened with
// OPENBLAS_NUM_THREADS=1 it starts none. It is opened after main, where a failure is ours to
// report: by the GEMM selection (its cache key names the library versions), float64 products,
// `--version` and gemm_bench.
#include <dlfcn.h>
#include <sys/mman.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <vector>

#include "core/cpu/gemm_kernel.h"
#include "core/error.h"

namespace dg::cpu {

namespace {
// cblas.h's signatures, with its enums as the ints they are (CblasRowMajor = 101, CblasNoTrans
// = 111, CblasTrans = 112), so that no OpenBLAS header or library is needed to build this file.
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                         int);
using DgemmFn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*, int, double, double*,
                         int);
struct Api {
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  char* (*get_corename)() = nullptr;
  char* (*get_config)() = nullptr;
  void (*set_num_threads)(int) = nullptr;
  void* (*memory_alloc)(int) = nullptr;  // what cblas_sgemm takes its work buffer from
  void (*memory_free)(void*) = nullptr;
};
Api g_api;
std::string g_error = "not opened yet";
bool g_loaded = false;

template <class F>
bool find(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(::dlsym(lib, name));
  if (!fn) g_error = str("libopenblas has no symbol ", name);
  return fn != nullptr;
}

void open_library() {
#ifdef DG_HAVE_OPENBLAS
  // The variable is read by OpenBLAS's constructor during dlopen; the caller's value comes back
  // after (a user's OPENBLAS_NUM_THREADS never applied to our products: they are one-thread).
  // Its constructor does not check its allocations (under a memory limit, ulimit -v, the load
  // crashed with SIGSEGV), and any product takes a 128 MiB work buffer of address space: so it
  // is opened only where twice that is free.
  constexpr size_t kNeed = size_t(256) << 20;
  void* probe = ::mmap(nullptr, kNeed, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (probe == MAP_FAILED) {
    g_error = "not opened: less than 256 MiB of address space is free (a memory limit such as ulimit -v)";
    return;
  }
  ::munmap(probe, kNeed);
  const char* prior = std::getenv("OPENBLAS_NUM_THREADS");
  const std::string saved = prior ? prior : "";
  ::setenv("OPENBLAS_NUM_THREADS", "1", 1);
  void* lib = nullptr;
  for (const char* soname : {"libopenblas.so.0", "libopenblas.so"})
    if ((lib = ::dlopen(soname, RTLD_NOW | RTLD_LOCAL))) break;
  const char* why = lib ? nullptr : ::dlerror();
  if (prior) ::setenv("OPENBLAS_NUM_THREADS", saved.c_str(), 1);
  else ::unsetenv("OPENBLAS_NUM_THREADS");
  if (!lib) {
    g_error = str("cannot open libopenblas.so.0: ", why ? why : "unknown error");
    return;
  }
  Api a;
  if (!find(lib, "cblas_sgemm", a.sgemm) || !find(lib, "cblas_dgemm", a.dgemm) ||
      !find(lib, "openblas_get_corename", a.get_corename) || !find(lib, "openblas_get_config", a.get_config) ||
      !find(lib, "openblas_set_num_threads", a.set_num_threads) || !find(lib, "blas_memory_alloc", a.memory_alloc) ||
      !find(lib, "blas_memory_free", a.memory_free))
    return;
  a.set_num_threads(1);
  g_api = a;
  g_loaded = true;
  g_error.clear();
#else
  g_error = "built without OpenBLAS";
#endif
}

const Api* api() {
  static std::once_flag once;
  std::call_once(once, open_library);
  return g_loaded ? &g_api : nullptr;
}
const Api& loaded() {
  const Api* a = api();
  if (!a) throw Error(str("OpenBLAS: ", g_error));
  return *a;
}
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
}  // namespace

bool openblas_loaded() { return api() != nullptr; }
std::string openblas_load_error() {
  api();
  return g_error;
}

void openblas_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* a, int lda, const float* b,
                   int ldb, float beta, float* c, int ldc) {
  loaded().sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, M, N, K, alpha, a, lda, b, ldb, beta, c,
                 ldc);
}
void openblas_gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* a, int lda, const double* b,
                   int ldb, double beta, double* c, int ldc) {
  loaded().dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, M, N, K, alpha, a, lda, b, ldb, beta, c,
                 ldc);
}
void openblas_set_threads(int n) { loaded().set_num_threads(n); }
void* openblas_buffer_alloc() { return loaded().memory_alloc(0); }
void openblas_buffer_free(void* p) { loaded().memory_free(p); }

std::string openblas_corename() {
  const Api* a = api();
  const char* n = a ? a->get_corename() : nullptr;
  return n ? n : "";
}
// The GEMM cache key names the OpenBLAS it would load without loading it (2.3 MB of RSS and its
// constructor, in a process that runs oneDNN): the file the loader would open, followed to the
// real file through Debian's alternatives links (libopenblasp-r0.3.21.so names the version and
// threading flavour) with its size, and OPENBLAS_CORETYPE, which picks other kernels.
std::string openblas_file_identity() {
#ifdef DG_HAVE_OPENBLAS
  namespace fs = std::filesystem;
  std::vector<std::string> dirs;
  if (const char* lp = std::getenv("LD_LIBRARY_PATH")) {
    std::stringstream ss(lp);
    for (std::string d; std::getline(ss, d, ':');)
      if (!d.empty()) dirs.push_back(d);
  }
  for (const char* d : {"/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                        "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib"})
    dirs.push_back(d);
  std::error_code ec;
  for (const std::string& d : dirs) {
    const fs::path real = fs::canonical(fs::path(d) / "libopenblas.so.0", ec);
    if (ec) continue;
    const uintmax_t bytes = fs::file_size(real, ec);
    if (ec) continue;
    const char* core = std::getenv("OPENBLAS_CORETYPE");
    return str("OpenBLAS file ", real.filename().string(), " (", bytes, " bytes)",
               core && *core ? str(" OPENBLAS_CORETYPE=", core) : std::string());
  }
#endif
  return "";
}

std::string openblas_config() {
  const Api* a = api();
  const char* n = a ? a->get_config() : nullptr;
  return n ? n : "";
}

}  // namespace dg::cpu
