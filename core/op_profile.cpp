// The op profile (core/op_profile.h): a Backend that forwards every call to the real one and
// files a pair of clock marks around it, and the report made from those marks.
#include "core/op_profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <type_traits>

#include "core/safetensors.h"

namespace dg {

namespace profile {

namespace {
// The host clock: right where a backend call has finished its work when it returns (the CPU).
struct HostClock final : Clock {
  std::vector<std::chrono::steady_clock::time_point> marks;
  size_t mark() override {
    marks.push_back(std::chrono::steady_clock::now());
    return marks.size() - 1;
  }
  double ms_between(size_t a, size_t b) override {
    return std::chrono::duration<double, std::milli>(marks.at(b) - marks.at(a)).count();
  }
  void clear() override { marks.clear(); }
};
ClockFactory& clock_factory(Device d) {  // a function's static: cuda/ registers during static init
  static ClockFactory f[2] = {nullptr, nullptr};
  return f[int(d)];
}
std::unique_ptr<Clock> make_clock(Device d) {
  ClockFactory f = clock_factory(d);
  return f ? f() : std::make_unique<HostClock>();
}
}  // namespace

void register_clock(Device d, ClockFactory f) { clock_factory(d) = f; }

// The one place DG_PROFILE is read.
static const char* const g_path_env = std::getenv("DG_PROFILE");
bool detail::g_enabled = g_path_env && *g_path_env;

void set_enabled(bool on) { detail::g_enabled = on; }
const std::string& report_path() {
  static const std::string p = g_path_env ? g_path_env : "";
  return p;
}

const char* family_name(Family f) {
  static const char* n[] = {"GEMM", "attention", "LayerNorm", "elementwise", "copies", "optimizer", "other"};
  return n[int(f)];
}

namespace {

struct Call {
  Family family;
  const char* name;    // a string literal: the backend method
  const char* detail;  // a string literal ("" none): which variant (unary op, cast, batched...)
  size_t m0, m1;
};

class ProfiledBackend final : public Backend {
 public:
  ProfiledBackend(Device d, Backend& inner) : in_(inner), clock_(make_clock(d)) {}

  // Times f() as one call unless it runs inside another timed call (then the outer one holds it).
  template <class F>
  auto timed(Family fam, const char* name, const char* detail, F&& f) -> decltype(f()) {
    if (depth_ > 0) return f();
    struct Depth {
      Depth() { ++depth_; }
      ~Depth() { --depth_; }
    } guard;
    std::lock_guard<std::mutex> lock(mu_);
    const size_t m0 = clock_->mark();
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      calls_.push_back({fam, name, detail, m0, clock_->mark()});
    } else {
      auto r = f();
      calls_.push_back({fam, name, detail, m0, clock_->mark()});
      return r;
    }
  }

  const char* name() const override { return in_.name(); }
  std::string kernel_choice() override { return in_.kernel_choice(); }
  bool set_kernel_choice(const std::string& c) override { return in_.set_kernel_choice(c); }
  void* alloc(size_t n) override { return in_.alloc(n); }  // no kernel: not timed
  void free(void* p, size_t n) override { in_.free(p, n); }
  void copy(const Tensor& s, const Tensor& d) override {
    const char* k = s.device() != d.device() ? "host<->device"
                    : s.dtype() != d.dtype() ? "cast"
                    : s.is_contiguous()      ? "contiguous"
                                             : "strided";
    timed(Family::Copies, "copy", k, [&] { in_.copy(s, d); });
  }
  void fill(const Tensor& d, double v) override { timed(Family::Copies, "fill", "", [&] { in_.fill(d, v); }); }
  void unary(UnaryOp op, const Tensor& x, const Tensor& o, double a) override {
    timed(Family::Elementwise, "unary", unary_name(op), [&] { in_.unary(op, x, o, a); });
  }
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& gy, const Tensor& gx,
                      double a) override {
    timed(Family::Elementwise, "unary_backward", unary_name(op), [&] { in_.unary_backward(op, x, y, gy, gx, a); });
  }
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& o) override {
    timed(Family::Elementwise, "binary", binary_name(op), [&] { in_.binary(op, a, b, o); });
  }
  void where(const Tensor& c, const Tensor& a, const Tensor& b, const Tensor& o) override {
    timed(Family::Elementwise, "where", "", [&] { in_.where(c, a, b, o); });
  }
  void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& o) override {
    timed(Family::Elementwise, "reduce", op == ReduceOp::Sum ? "sum" : "max",
          [&] { in_.reduce(op, x, outer, n, inner, o); });
  }
  void argmax(const Tensor& x, int64_t outer, int64_t n, int64_t inner, const Tensor& o) override {
    timed(Family::Elementwise, "argmax", "", [&] { in_.argmax(x, outer, n, inner, o); });
  }
  bool fused_attention_supported(const Tensor& qkv, int64_t heads) const override {
    return in_.fused_attention_supported(qkv, heads);
  }
  void attention(const Tensor& qkv, int64_t h, double sc, const Tensor& o, const Tensor& lse, AttnRows rows) override {
    timed(Family::Attention, "attention", "fused", [&] { in_.attention(qkv, h, sc, o, lse, rows); });
  }
  void attention_backward(const Tensor& qkv, const Tensor& lse, const Tensor& go, int64_t h, double sc,
                          const Tensor& gqkv, AttnRows rows) override {
    timed(Family::Attention, "attention_backward", "fused",
          [&] { in_.attention_backward(qkv, lse, go, h, sc, gqkv, rows); });
  }
  void gemm(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& C) override {
    timed(Family::Gemm, "gemm", gemm_kind(g, A), [&] { in_.gemm(g, A, B, C); });
  }
  // A declined epilogue (false) ran nothing: the caller's fallback is timed as its own calls.
  bool gemm_bias(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) override {
    return timed(Family::Gemm, "gemm_bias", gemm_kind(g, A), [&] { return in_.gemm_bias(g, A, B, bias, C); });
  }
  bool gemm_bias_gelu(const Gemm& g, const Tensor& A, const Tensor& B, const Tensor& bias, const Tensor& C) override {
    return timed(Family::Gemm, "gemm_bias_gelu", gemm_kind(g, A), [&] { return in_.gemm_bias_gelu(g, A, B, bias, C); });
  }
  void softmax(const Tensor& x, int64_t rows, int64_t n, bool log, const Tensor& o) override {
    // softmax runs in the composed attention; the loss has its own fused kernel (cross_entropy)
    timed(Family::Attention, "softmax", log ? "log" : "", [&] { in_.softmax(x, rows, n, log, o); });
  }
  void softmax_backward(const Tensor& y, const Tensor& gy, int64_t rows, int64_t n, bool log, const Tensor& gx) override {
    timed(Family::Attention, "softmax_backward", log ? "log" : "", [&] { in_.softmax_backward(y, gy, rows, n, log, gx); });
  }
  void layernorm(const Tensor& x, const Tensor& w, const Tensor& b, int64_t rows, int64_t n, double eps,
                 const Tensor& y, const Tensor& mean, const Tensor& rstd) override {
    timed(Family::LayerNorm, "layernorm", "", [&] { in_.layernorm(x, w, b, rows, n, eps, y, mean, rstd); });
  }
  void layernorm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& gy,
                          int64_t rows, int64_t n, const Tensor& gx, const Tensor& gw, const Tensor& gb) override {
    timed(Family::LayerNorm, "layernorm_backward", "",
          [&] { in_.layernorm_backward(x, w, mean, rstd, gy, rows, n, gx, gw, gb); });
  }
  void layernorm_backward_from_output(const Tensor& y, const Tensor& w, const Tensor& b, const Tensor& rstd,
                                      const Tensor& gy, int64_t rows, int64_t n, const Tensor& gx, const Tensor& gw,
                                      const Tensor& gb) override {
    timed(Family::LayerNorm, "layernorm_backward", "from output",
          [&] { in_.layernorm_backward_from_output(y, w, b, rstd, gy, rows, n, gx, gw, gb); });
  }
  void cross_entropy(const Tensor& l, const Tensor& lab, double s, const Tensor& loss, const Tensor& lse) override {
    timed(Family::Other, "cross_entropy", "", [&] { in_.cross_entropy(l, lab, s, loss, lse); });
  }
  void cross_entropy_backward(const Tensor& l, const Tensor& lab, const Tensor& lse, const Tensor& gl, double s,
                              const Tensor& glogits) override {
    timed(Family::Other, "cross_entropy_backward", "", [&] { in_.cross_entropy_backward(l, lab, lse, gl, s, glogits); });
  }
  void random_uniform(const Tensor& o, uint64_t seed, uint64_t off, double lo, double hi) override {
    timed(Family::Other, "random_uniform", "", [&] { in_.random_uniform(o, seed, off, lo, hi); });
  }
  void random_normal(const Tensor& o, uint64_t seed, uint64_t off, double mean, double sd) override {
    timed(Family::Other, "random_normal", "", [&] { in_.random_normal(o, seed, off, mean, sd); });
  }
  void im2col(const Tensor& x, int64_t p, const Tensor& cols) override {
    timed(Family::Other, "im2col", "", [&] { in_.im2col(x, p, cols); });
  }
  void col2im(const Tensor& cols, int64_t p, const Tensor& x) override {
    timed(Family::Other, "col2im", "", [&] { in_.col2im(cols, p, x); });
  }
  void index_select(const Tensor& x, const Tensor& idx, const Tensor& o) override {
    timed(Family::Other, "index_select", "", [&] { in_.index_select(x, idx, o); });
  }
  void index_add(const Tensor& go, const Tensor& idx, const Tensor& gx) override {
    timed(Family::Other, "index_add", "", [&] { in_.index_add(go, idx, gx); });
  }
  void adamw(const AdamW& h, const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v,
             const Tensor& mask) override {
    timed(Family::Optimizer, "adamw", "", [&] { in_.adamw(h, p, g, m, v, mask); });
  }
  double sum_squares(const Tensor& x) override {
    return timed(Family::Optimizer, "sum_squares", "", [&] { return in_.sum_squares(x); });
  }
  void synchronize() override { in_.synchronize(); }

  void reset() {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.clear();
    clock_->clear();
  }
  Report collect(double wall_ms, int64_t steps) {
    in_.synchronize();
    std::lock_guard<std::mutex> lock(mu_);
    Report r;
    r.device = in_.name();
    r.steps = std::max<int64_t>(steps, 1);
    r.wall_ms = wall_ms;
    for (size_t f = 0; f < kFamilies; ++f) r.families[f].name = family_name(Family(f));
    std::map<std::string, Row> by_op;
    for (const Call& c : calls_) {
      const double ms = std::max(0.0, clock_->ms_between(c.m0, c.m1));
      Row& fam = r.families[size_t(c.family)];
      fam.calls += 1, fam.ms += ms;
      const std::string key = *c.detail ? str(c.name, " ", c.detail) : std::string(c.name);
      Row& op = by_op[key];
      op.name = key, op.calls += 1, op.ms += ms;
      r.op_ms += ms, r.calls += 1;
    }
    for (auto& [k, row] : by_op) r.ops.push_back(row);
    std::sort(r.ops.begin(), r.ops.end(), [](const Row& a, const Row& b) { return a.ms > b.ms; });
    return r;
  }

 private:
  static const char* gemm_kind(const Gemm& g, const Tensor& A) {
    const bool bf16 = A.dtype() == DType::BF16;
    if (g.batch > 1) return bf16 ? "batched bf16" : "batched";
    return bf16 ? "bf16" : "";
  }
  Backend& in_;
  std::unique_ptr<Clock> clock_;
  std::vector<Call> calls_;
  std::mutex mu_;
  static thread_local int depth_;  // > 0 inside a timed call on this thread
};

thread_local int ProfiledBackend::depth_ = 0;

std::mutex g_wrap_mu;
std::unique_ptr<ProfiledBackend> g_wrapped[2];

ProfiledBackend& wrapped(Device d) {
  std::lock_guard<std::mutex> lock(g_wrap_mu);
  DG_CHECK(g_wrapped[int(d)], "op profile: nothing was profiled on ", device_name(d),
           " (is profiling on? DG_PROFILE=FILE or profile::set_enabled)");
  return *g_wrapped[int(d)];
}

}  // namespace

Backend& detail::wrap(Device d, Backend& inner) {
  std::lock_guard<std::mutex> lock(g_wrap_mu);
  auto& w = g_wrapped[int(d)];
  if (!w) w = std::make_unique<ProfiledBackend>(d, inner);
  return *w;
}

void reset(Device d) {
  backend(d);  // creates the wrapper where profiling is on and nothing ran yet
  wrapped(d).reset();
}

Report collect(Device d, double wall_ms, int64_t steps) { return wrapped(d).collect(wall_ms, steps); }

static std::string fmt(double v, int digits) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string format(const Report& r, const std::string& title, size_t top_ops) {
  const double n = double(r.steps), wall = r.wall_ms / n;
  auto pct = [&](double ms) { return wall > 0 ? 100.0 * ms / n / wall : 0.0; };
  std::string s = str("## ", title, "\n\n", "backend ", r.device, ", ", r.steps, " step(s): wall ", fmt(wall, 2),
                      " ms/step; timed backend calls ", fmt(r.op_ms / n, 2), " ms/step (", fmt(pct(r.op_ms), 1),
                      "%); gaps (wall minus the calls: host work, launch latency, idle device) ",
                      fmt(r.gap_ms() / n, 2), " ms/step; ", fmt(double(r.calls) / n, 1),
                      " backend calls (about one kernel launch each) per step\n\n");
  s += "| family | ms/step | % of wall | calls/step | us/call |\n|---|---:|---:|---:|---:|\n";
  auto row = [&](const Row& x) {
    return str("| ", x.name, " | ", fmt(x.ms / n, 3), " | ", fmt(pct(x.ms), 1), " | ", fmt(double(x.calls) / n, 1),
               " | ", fmt(x.calls ? 1e3 * x.ms / double(x.calls) : 0.0, 1), " |\n");
  };
  for (const Row& f : r.families) s += row(f);
  s += str("| gaps | ", fmt(r.gap_ms() / n, 3), " | ", fmt(pct(r.gap_ms()), 1), " | | |\n\n");
  s += "| backend call | ms/step | % of wall | calls/step | us/call |\n|---|---:|---:|---:|---:|\n";
  for (size_t i = 0; i < r.ops.size() && i < top_ops; ++i) s += row(r.ops[i]);
  return s;
}

void write_report(const std::string& path, const Report& r, const std::string& title) {
  write_file_atomic(path, format(r, title));
}

}  // namespace profile
}  // namespace dg
