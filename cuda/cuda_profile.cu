// The op profile's clock on the GPU (core/op_profile.h): a CUDA event recorded in the backend's
// stream at each mark, so a call's time is the stream's time between its two events: its
// kernels, plus any wait for the host to launch them while the stream had nothing queued.
// Events are kept for reuse (clear() only rewinds), so a profiled step creates none once warm.
#include <vector>

#include "core/op_profile.h"
#include "cuda/cuda_backend.h"

namespace dg::cuda {

namespace {
class EventClock final : public profile::Clock {
 public:
  ~EventClock() override {
    for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);  // at exit the context may be gone
  }
  size_t mark() override {
    if (used_ == events_.size()) {
      cudaEvent_t e;
      DG_CUDA(cudaEventCreate(&e));
      events_.push_back(e);
    }
    DG_CUDA(cudaEventRecord(events_[used_], stream()));
    return used_++;
  }
  double ms_between(size_t a, size_t b) override {
    DG_CHECK(a < used_ && b < used_, "op profile (cuda): marks ", a, " and ", b, " but ", used_, " recorded");
    DG_CUDA(cudaEventSynchronize(events_[b]));
    float ms = 0;
    DG_CUDA(cudaEventElapsedTime(&ms, events_[a], events_[b]));
    return double(ms);
  }
  void clear() override { used_ = 0; }

 private:
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
};
const bool registered = (profile::register_clock(Device::CUDA, [] {
  return std::unique_ptr<profile::Clock>(std::make_unique<EventClock>());
}), true);
}  // namespace

}  // namespace dg::cuda
