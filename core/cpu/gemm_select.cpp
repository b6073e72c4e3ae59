// The GEMM choice: forced, cached or calibrated (gemm_select.h says in which order and why).
#include "core/cpu/gemm_select.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/cpu_info.h"
#include "core/cpu/gemm_kernel.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dg::cpu {

std::string choose_gemm(const std::vector<GemmTiming>& timings, double tolerance) {
  auto valid = [](const GemmTiming& t) { return t.ok && std::isfinite(t.seconds) && t.seconds > 0; };
  double best = INFINITY;
  for (const GemmTiming& t : timings)
    if (valid(t)) best = std::min(best, t.seconds);
  for (const GemmTiming& t : timings)
    if (valid(t) && t.seconds <= best * (1 + tolerance)) return t.library;
  return "";
}

std::vector<std::string> choose_gemm_per_kind(const std::vector<GemmTiming>& timings, const std::string& overall,
                                              double tolerance) {
  std::vector<std::string> out;
  for (int k = 0; k < kGemmKinds; ++k) {
    std::vector<GemmTiming> one;  // the overall winner first: it keeps a kind unless clearly beaten
    for (const GemmTiming& t : timings)
      if (t.library == overall) one.push_back({t.library, size_t(k) < t.per_kind.size() ? t.per_kind[size_t(k)] : NAN, t.ok});
    for (const GemmTiming& t : timings)
      if (t.library != overall) one.push_back({t.library, size_t(k) < t.per_kind.size() ? t.per_kind[size_t(k)] : NAN, t.ok});
    out.push_back(choose_gemm(one, tolerance));
  }
  return out;
}

GemmKind gemm_kind(bool ta, bool tb, int64_t batch) {
  if (batch > 1) return GemmKind::Heads;
  if (ta) return GemmKind::WeightGrad;
  return tb ? GemmKind::Forward : GemmKind::InputGrad;
}
GemmKind gemm_kind(const Backend::Gemm& g) { return gemm_kind(g.ta, g.tb, g.batch); }
const char* gemm_kind_name(GemmKind k) {
  static const char* names[] = {"forward", "input gradient", "weight gradient", "heads"};
  return names[int(k)];
}

namespace {
// The names alone (not whether they are built: checking OpenBLAS opens it, and other machines'
// cache lines may name it)
std::optional<std::vector<GemmLib>> parse_gemm_names(const std::string& field) {
  std::vector<GemmLib> libs;
  size_t start = 0;
  while (true) {
    const size_t comma = field.find(',', start);
    const auto l = lib_from_name(field.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (!l) return std::nullopt;
    libs.push_back(*l);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (libs.size() == 1) libs.assign(kGemmKinds, libs[0]);
  if (libs.size() != size_t(kGemmKinds)) return std::nullopt;
  return libs;
}
}  // namespace

std::optional<std::vector<GemmLib>> parse_gemm_libs(const std::string& field) {
  auto libs = parse_gemm_names(field);
  if (libs)
    for (GemmLib l : *libs)
      if (!lib_built(l)) return std::nullopt;
  return libs;
}

namespace {
int threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Products of the kinds a transformer layer's linear maps run (thousands of token rows against
// a few hundred features), one per GemmKind in its order: y = x W^T, the input gradient gy W,
// the weight gradient gy^T x (summed over many tokens: long K), and a batch of small
// square-ish products (attention heads). About 1 GFLOP.
std::vector<Backend::Gemm> calibration_products() {
  auto mk = [](bool ta, bool tb, int64_t batch, int64_t M, int64_t N, int64_t K) {
    Backend::Gemm g;
    g.ta = ta, g.tb = tb, g.batch = batch, g.M = M, g.N = N, g.K = K;
    g.lda = ta ? M : K, g.ldb = tb ? K : N, g.ldc = N;
    g.stride_a = M * K, g.stride_b = K * N, g.stride_c = M * N;
    return g;
  };
  // the weight gradient as one thread's share of it under the split: half the rows of a
  // [384, 192] gradient, so A^T's stored rows are twice as wide as the rows the product reads
  Backend::Gemm wgrad = mk(true, false, 1, 192, 192, 2048);
  wgrad.lda = 384, wgrad.stride_a = 2048 * 384;
  return {mk(false, true, 1, 768, 576, 192), mk(false, false, 1, 768, 192, 768), wgrad,
          mk(false, true, 8, 197, 197, 64)};
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string one_line(std::string s) {
  for (char& ch : s)
    if (ch == '\t' || ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

std::string summary(const std::vector<GemmTiming>& t) {
  std::ostringstream os;
  os.precision(3);
  for (size_t i = 0; i < t.size(); ++i)
    os << (i ? ", " : "") << t[i].library << " " << t[i].seconds * 1e3 << " ms" << (t[i].ok ? "" : " (wrong results)");
  return os.str();
}

// The 1-minute load average (runnable processes); 0 where unknown.
double load_average() {
  double l[1] = {0};
  return getloadavg(l, 1) == 1 ? l[0] : 0;
}

struct Choice {
  GemmLib lib;                 // the overall winner (--version)
  std::vector<GemmLib> kinds;  // per GemmKind
  std::string reason;
};

// "; per kind: weight gradient openblas" for the kinds whose library is not `lib`
std::string kinds_note(GemmLib lib, const std::vector<GemmLib>& kinds) {
  std::string s;
  for (int k = 0; k < kGemmKinds; ++k)
    if (kinds[size_t(k)] != lib)
      s += std::string(s.empty() ? "; per kind: " : ", ") + gemm_kind_name(GemmKind(k)) + " " + lib_name(kinds[size_t(k)]);
  return s;
}
std::string kinds_field(const std::vector<GemmLib>& kinds) {
  std::string s;
  for (GemmLib l : kinds) s += std::string(s.empty() ? "" : ",") + lib_name(l);
  return s;
}

Choice initial_choice() {
  const char* env = std::getenv("DG_CPU_GEMM");
  const std::string e = env ? env : "";
  if (!e.empty() && e != "calibrate") {
    const auto l = lib_from_name(e);
    DG_CHECK(l && lib_built(*l), "DG_CPU_GEMM='", e, "': expected ", lib_names_joined(), " or 'calibrate'");
    return {*l, std::vector<GemmLib>(kGemmKinds, *l), "forced by DG_CPU_GEMM=" + e};
  }
  const std::string path = gemm_cache_path(), key = gemm_cache_key();
  if (e.empty() && !path.empty())
    if (const auto c = read_gemm_cache(path, key)) {
      const size_t semi = c->library.find(';');  // "overall;kind,kind,kind,kind"
      const auto overall = lib_from_name(c->library.substr(0, semi));
      const auto kinds = parse_gemm_libs(semi == std::string::npos ? c->library : c->library.substr(semi + 1));
      if (overall && lib_built(*overall) && kinds)
        return {*overall, *kinds, "cached in " + path + " (calibrated: " + c->note + ")" + kinds_note(*overall, *kinds)};
    }
  // Other processes competing for the cores make even one-thread timings noise, and a choice
  // made from noise differs from process to process (a resumed run would round differently from
  // the run it continues). On a busy machine the first built library in preference order serves
  // (not cached), unless DG_CPU_GEMM=calibrate asks for a measurement anyway.
  const double cpus = double(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  auto busy = [&](double load) {
    return load > cpus + 1 ? "the machine is busy (load " + std::to_string(int(load)) + " on " +
                                 std::to_string(int(cpus)) + " CPUs)"
                           : std::string();
  };
  auto preferred = [&](const std::string& why) {
    GemmLib l = GemmLib::Eigen;
    for (GemmLib b : {GemmLib::OneDNN, GemmLib::OpenBLAS})  // checked in order: OpenBLAS opens only if it is the one
      if (lib_built(b)) {
        l = b;
        break;
      }
    return Choice{l, std::vector<GemmLib>(kGemmKinds, l), "the first in preference order, not measured: " + why};
  };
  const double load_before = load_average();
  if (const std::string b = busy(load_before); !b.empty() && e != "calibrate") return preferred(b);
  const std::vector<GemmTiming> t = calibrate_gemm();
  const std::string pick = choose_gemm(t);
  const GemmLib lib = pick.empty() ? GemmLib::Eigen : *lib_from_name(pick);  // no usable timing: the portable one
  std::vector<GemmLib> kinds;
  for (const std::string& k : choose_gemm_per_kind(t, pick)) kinds.push_back(k.empty() ? lib : *lib_from_name(k));
  const std::string note = summary(t);
  std::string why = "calibrated: " + note + kinds_note(lib, kinds);
  if (const std::string b = busy(std::max(load_before, load_average())); !b.empty()) {
    if (e != "calibrate") return preferred(b + " during the calibration (" + note + ")");
    why += "; not cached: " + b;
  } else if (!path.empty()) {
    why += write_gemm_cache(path, key, {std::string(lib_name(lib)) + ";" + kinds_field(kinds), note})
               ? "; cached in " + path
               : "; cache " + path + " not writable";
  }
  return {lib, kinds, why};
}

struct State {
  explicit State(Choice c) : lib(c.lib), reason(std::move(c.reason)) {
    for (int k = 0; k < kGemmKinds; ++k) kinds[k].store(c.kinds[size_t(k)]);
  }
  std::atomic<GemmLib> lib;
  std::atomic<GemmLib> kinds[kGemmKinds];
  std::mutex m;
  std::string reason;
};

State& state() {
  static State s(initial_choice());
  return s;
}
}  // namespace

std::vector<GemmTiming> calibrate_gemm(int reps) {
  const std::vector<Backend::Gemm> products = calibration_products();
  std::vector<std::vector<float>> A, B, C;
  uint32_t seed = 12345;
  auto fill = [&](std::vector<float>& v, size_t n) {
    v.resize(n);
    for (float& x : v) x = float(int((seed = seed * 1664525u + 1013904223u) >> 9) % 2001 - 1000) * 1e-3f;
  };
  for (const Backend::Gemm& g : products) {
    A.emplace_back(), B.emplace_back(), C.emplace_back();
    fill(A.back(), size_t(g.batch * g.stride_a)), fill(B.back(), size_t(g.batch * g.stride_b));
    C.back().assign(size_t(g.batch * g.stride_c), 0.f);
  }
  // One product on the calling thread: every candidate but onednn-mt runs as one thread per
  // product under the same split, so the one-thread kernels decide among them. Timing one
  // thread also keeps the measurement honest when other processes share the cores: a
  // threaded product is only as fast as its most-preempted thread, and the minimum over rounds
  // then measures the scheduler. onednn-mt (oneDNN's own threads) is left to DG_CPU_GEMM: our
  // split ran the ViT shapes at least as fast on the CPUs measured (bench/RESULTS.md).
  auto run = [&](GemmLib lib, size_t p, float* c) {
    const Backend::Gemm& g = products[p];
    for (int64_t i = 0; i < g.batch; ++i)
      gemm_one<float>(lib, g.ta, g.tb, g.M, g.N, g.K, float(g.alpha), A[p].data() + i * g.stride_a, g.lda,
                      B[p].data() + i * g.stride_b, g.ldb, float(g.beta), c + i * g.stride_c, g.ldc);
  };
  // Reference for the first product: Eigen's result (the check catches a library that computes garbage).
  std::vector<float> ref(C[0].size());
  run(GemmLib::Eigen, 0, ref.data());
  float scale = 1e-30f;
  for (float v : ref) scale = std::max(scale, std::abs(v));

  std::vector<GemmLib> libs;
  for (GemmLib l : built_libs())
    if (l != GemmLib::OneDNNThreads) libs.push_back(l);
  std::vector<std::vector<double>> best(libs.size(), std::vector<double>(products.size(), INFINITY));
  std::vector<GemmTiming> out;
  for (GemmLib l : libs) out.push_back({lib_name(l), 0, true});
  std::vector<bool> racing(libs.size(), true);
  // OpenBLAS retries a failed mapping of its work buffer forever (blas_buffers.cpp): under a
  // memory limit that leaves no room for it, it is not a candidate (a hang in calibration was seen)
  for (size_t l = 0; l < libs.size(); ++l)
    if (libs[l] == GemmLib::OpenBLAS) try {
        reserve_openblas_buffers(1);
      } catch (const OutOfMemory&) {
        racing[l] = false, out[l].ok = false;
      }
  auto total = [&](size_t l) {
    double s = 0;
    for (double t : best[l]) s += t;
    return s;
  };
  for (int r = -1; r < reps; ++r) {  // r == -1: warm-up (JIT code generation, page faults)
    for (size_t l = 0; l < libs.size(); ++l) {
      if (!racing[l]) continue;
      for (size_t p = 0; p < products.size(); ++p) {
        const double t0 = now_s();
        run(libs[l], p, C[p].data());
        if (r >= 0) best[l][p] = std::min(best[l][p], now_s() - t0);
      }
      if (r == -1) {  // the first product's result against the reference
        double err = 0;
        for (size_t i = 0; i < ref.size(); ++i) err = std::max(err, double(std::abs(C[0][i] - ref[i])));
        out[l].ok = err <= 1e-4 * scale;
      }
    }
    // after one timed round, a library at over twice the best total is out of the race (it keeps
    // that time): repeating it would only cost the calibration time
    if (r == 0) {
      double lead = INFINITY;
      for (size_t l = 0; l < libs.size(); ++l)
        if (out[l].ok) lead = std::min(lead, total(l));
      // ... unless it is within twice the best on some product: it may win that kind
      std::vector<double> best_p(products.size(), INFINITY);
      for (size_t l = 0; l < libs.size(); ++l)
        for (size_t p = 0; p < products.size(); ++p)
          if (out[l].ok) best_p[p] = std::min(best_p[p], best[l][p]);
      for (size_t l = 0; l < libs.size(); ++l) {
        bool close = total(l) <= 2 * lead;
        for (size_t p = 0; p < products.size(); ++p) close = close || best[l][p] <= 2 * best_p[p];
        racing[l] = out[l].ok && close;
      }
    }
  }
  for (size_t l = 0; l < libs.size(); ++l) out[l].seconds = total(l), out[l].per_kind = best[l];
  return out;
}

std::string gemm_cache_key() {
  const CpuInfo& c = cpu_info();
  // the libraries there to use, OpenBLAS by its file: the key is read before any product, and
  // loading OpenBLAS only to name it cost 2.3 MB of RSS in processes that never call it
  std::string libs;
  for (GemmLib l : {GemmLib::OneDNN, GemmLib::OneDNNThreads, GemmLib::OpenBLAS, GemmLib::Eigen})
    if (l == GemmLib::OpenBLAS ? openblas_present() : lib_built(l)) libs += std::string(lib_name(l)) + " ";
  return one_line("v3 | " + cpu_identity(c) + " stepping " + std::to_string(c.stepping) + " | " + isa_summary(c) +
                  " | threads " + std::to_string(threads()) + " | " + libs + "| " + gemm_library_versions());
}

std::string gemm_cache_path() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && *xdg) return std::string(xdg) + "/deltagrad/cpu_gemm.tsv";
  const char* home = std::getenv("HOME");
  if (home && *home) return std::string(home) + "/.cache/deltagrad/cpu_gemm.tsv";
  return "";
}

namespace {
// key \t library \t note, one line per machine configuration.
bool parse_line(const std::string& line, std::string& key, GemmCacheEntry& e) {
  const size_t t1 = line.find('\t'), t2 = t1 == std::string::npos ? t1 : line.find('\t', t1 + 1);
  if (line.empty() || line[0] == '#' || t2 == std::string::npos) return false;
  key = line.substr(0, t1), e.library = line.substr(t1 + 1, t2 - t1 - 1), e.note = line.substr(t2 + 1);
  const size_t semi = e.library.find(';');
  return !key.empty() && lib_from_name(e.library.substr(0, semi)).has_value() &&
         (semi == std::string::npos || parse_gemm_names(e.library.substr(semi + 1)).has_value());
}
}  // namespace

std::optional<GemmCacheEntry> read_gemm_cache(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string line, k;
  GemmCacheEntry e;
  while (f && std::getline(f, line))
    if (parse_line(line, k, e) && k == key) return e;
  return std::nullopt;
}

bool write_gemm_cache(const std::string& path, const std::string& key, const GemmCacheEntry& e) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  std::vector<std::string> keep;  // other machines' lines (a shared home), malformed ones dropped
  {
    std::ifstream f(path);
    std::string line, k;
    GemmCacheEntry other;
    while (f && std::getline(f, line))
      if (parse_line(line, k, other) && k != key) keep.push_back(line);
  }
  if (keep.size() > 15) keep.erase(keep.begin(), keep.end() - 15);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "# deltagrad: the CPU GEMM library measured fastest per machine (delete to measure again)\n";
    for (const std::string& l : keep) f << l << "\n";
    f << one_line(key) << "\t" << one_line(e.library) << "\t" << one_line(e.note) << "\n";
    if (!f.flush()) {
      fs::remove(tmp, ec);
      return false;
    }
  }
  fs::rename(tmp, path, ec);
  const bool renamed = !ec;
  if (!renamed) fs::remove(tmp, ec);
  return renamed;
}

bool gemm_uses_openblas() {
  for (int k = 0; k < kGemmKinds; ++k)
    if (gemm_lib_for(GemmKind(k)) == GemmLib::OpenBLAS) return true;
  return false;
}

GemmLib current_gemm_lib() { return state().lib.load(std::memory_order_relaxed); }
GemmLib gemm_lib_for(GemmKind k) { return state().kinds[int(k)].load(std::memory_order_relaxed); }

const char* gemm_library() { return lib_name(current_gemm_lib()); }

std::string gemm_choice_reason() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.m);
  return s.reason;
}

std::vector<std::string> gemm_libraries() {
  std::vector<std::string> v;
  for (GemmLib l : built_libs()) v.push_back(lib_name(l));
  return v;
}

void set_gemm_library(const std::string& name) {
  const auto l = lib_from_name(name);
  DG_CHECK(l, "CPU GEMM library '", name, "': expected ", lib_names_joined());
  DG_CHECK(lib_built(*l), "CPU GEMM library '", name, "': this build does not link it (",
           *l == GemmLib::OpenBLAS ? "libopenblas-dev" : "libdnnl-dev", ")");
  State& s = state();
  std::lock_guard<std::mutex> lock(s.m);
  s.lib.store(*l);
  for (auto& k : s.kinds) k.store(*l);
  s.reason = "set in code";
}

void set_gemm_library_for(GemmKind kind, const std::string& name) {
  const auto l = lib_from_name(name);
  DG_CHECK(l && lib_built(*l), "CPU GEMM library '", name, "': expected ", lib_names_joined());
  State& s = state();
  std::lock_guard<std::mutex> lock(s.m);
  s.kinds[int(kind)].store(*l);
  std::vector<GemmLib> kinds;
  for (auto& k : s.kinds) kinds.push_back(k.load());
  s.reason = "set in code" + kinds_note(s.lib.load(), kinds);
}

}  // namespace dg::cpu

namespace dg::cpu {

std::string CpuBackend::kernel_choice() {
  State& s = state();
  std::vector<GemmLib> kinds;
  for (auto& k : s.kinds) kinds.push_back(k.load());
  return std::string("gemm ") + lib_name(s.lib.load()) + ";" + kinds_field(kinds);
}

bool CpuBackend::set_kernel_choice(const std::string& choice) {
  if (choice.rfind("gemm ", 0) != 0) return false;
  const std::string field = choice.substr(5);
  const size_t semi = field.find(';');
  const auto overall = lib_from_name(field.substr(0, semi));
  const auto kinds = semi == std::string::npos ? std::nullopt : parse_gemm_libs(field.substr(semi + 1));
  if (!overall || !lib_built(*overall) || !kinds) return false;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.m);
  s.lib.store(*overall);
  for (int k = 0; k < kGemmKinds; ++k) s.kinds[k].store((*kinds)[size_t(k)]);
  s.reason = "restored from a checkpoint (as the run it resumes)" + kinds_note(*overall, *kinds);
  return true;
}

}  // namespace dg::cpu
