// The op profile: where a step's device time goes, without an external profiler (the lent
// GPU machine has no working nsys). Opt-in: DG_PROFILE=FILE (read once, in op_profile.cpp) or
// set_enabled(true). While on, backend() hands out a wrapper that times every backend call
// between two marks of the device's Clock (CUDA events in the stream on the GPU, the host clock
// on the CPU) and files it under a kernel family. Off, backend() pays one branch.
// A backend call that another one makes through backend() is inside the outer call's interval
// and is not counted again, so the intervals never overlap and their sum is at most the wall time.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"

namespace dg::profile {

enum class Family : uint8_t { Gemm, Attention, LayerNorm, Elementwise, Copies, Optimizer, Other };
constexpr size_t kFamilies = 7;
const char* family_name(Family f);

// Time marks: mark() records a point in the device's queue of work, ms_between(a, b) reads the
// milliseconds between two marks once the device is synchronized, clear() forgets the marks.
struct Clock {
  virtual ~Clock() = default;
  virtual size_t mark() = 0;
  virtual double ms_between(size_t a, size_t b) = 0;
  virtual void clear() = 0;
};
using ClockFactory = std::unique_ptr<Clock> (*)();
// cuda/ registers its event clock at static init (as it registers its backend). A device with
// none gets the host clock, right where a call returns only when its work is done (the CPU).
void register_clock(Device d, ClockFactory f);

namespace detail {
extern bool g_enabled;  // DG_PROFILE set at start-up, or set_enabled()
Backend& wrap(Device d, Backend& inner);
}  // namespace detail

inline bool enabled() { return detail::g_enabled; }
void set_enabled(bool on);
// DG_PROFILE's value: where a program that profiles (bench/bench_step.cpp) writes its report; "" unset.
const std::string& report_path();

// The backend for d, timed: what backend(d) returns while profiling is on.
inline Backend& maybe_wrap(Device d, Backend& inner) { return enabled() ? detail::wrap(d, inner) : inner; }

// Forget every call recorded on d so far (after warm-up steps).
void reset(Device d);

struct Row {
  std::string name;  // a family ("GEMM") or a backend call ("copy cast")
  int64_t calls = 0;
  double ms = 0;
};
struct Report {
  std::string device;  // the backend's name
  int64_t steps = 1;
  double wall_ms = 0;              // the caller's wall time over those steps
  double op_ms = 0;                // sum of the timed calls
  int64_t calls = 0;               // timed calls (each about one kernel launch; a cuBLAS call may be more)
  std::array<Row, kFamilies> families;  // every family, in Family order, zero where none ran
  std::vector<Row> ops;            // per backend call kind, largest time first
  double gap_ms() const { return wall_ms - op_ms; }  // host work, launch latency, idle device
};
// Synchronizes d, then reads the marks of every call since reset(d). wall_ms: the caller's
// wall time over `steps` steps (it should include the final synchronize).
Report collect(Device d, double wall_ms, int64_t steps);
// A markdown report: the family table per step, the gap line, the top `top_ops` call kinds.
std::string format(const Report& r, const std::string& title, size_t top_ops = 15);
void write_report(const std::string& path, const Report& r, const std::string& title);  // atomic

}  // namespace dg::profile
