// The NCCL comm: CUDA tensors summed over the ranks (one process per GPU) on the backend's
// stream; host values, broadcasts and barriers go through the host comm (MPI) it was made
// from, which also carries NCCL's unique id from rank 0 to the others.
#include <nccl.h>

#include <cstdlib>
#include <cstring>

#include "core/comm.h"
#include "cuda/cuda_api.h"
#include "cuda/cuda_backend.h"

namespace dg {

namespace {

#define DG_NCCL(call)                                                                      \
  do {                                                                                     \
    ncclResult_t r_ = (call);                                                              \
    if (r_ != ncclSuccess) throw Error(str("NCCL error in ", #call, ": ", ncclGetErrorString(r_))); \
  } while (0)

// A bucket's ncclAllReduce on the comm stream; done_ is recorded after it. wait() makes the
// compute stream wait on done_ (the optimizer's kernels run after the sums, the host goes on).
class NcclRequest final : public CommRequest {
 public:
  NcclRequest(const Tensor& t, cudaEvent_t done) : t_(t), done_(done) {}
  ~NcclRequest() override {
    if (!waited_) new Tensor(t_);  // NCCL may still write it (comm.h: an unfinished request's buffer is never freed)
    cudaEventDestroy(done_);  // released by CUDA once the event completes
  }
  bool test() override {
    const cudaError_t e = cudaEventQuery(done_);
    if (e == cudaErrorNotReady) return false;
    DG_CUDA(e);
    return true;
  }
  void wait() override {
    DG_CUDA(cudaStreamWaitEvent(cuda::stream(), done_, 0));
    waited_ = true;
  }

 private:
  Tensor t_;
  cudaEvent_t done_;
  bool waited_ = false;
};

class NcclComm final : public Comm {
 public:
  explicit NcclComm(Comm& host) : host_(host) {
    DG_CHECK(cuda::device_present(), "NCCL comm: no GPU on rank ", host.rank());
    ncclUniqueId id;
    if (host.rank() == 0) DG_NCCL(ncclGetUniqueId(&id));
    std::string bytes(reinterpret_cast<const char*>(&id), sizeof id);
    host.broadcast(bytes, 0);
    DG_CHECK(bytes.size() == sizeof id, "NCCL comm: the unique id from rank 0 has ", bytes.size(), " bytes, expected ",
             sizeof id);
    std::memcpy(&id, bytes.data(), sizeof id);
    DG_NCCL(ncclCommInitRank(&comm_, host.size(), id, host.rank()));
    DG_CUDA(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
    DG_CUDA(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
    if (ready_) cudaEventDestroy(ready_);
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
  }
  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  std::string backend_name() const override { return "nccl"; }
  void all_reduce_sum(Tensor& t) override {
    DG_CHECK(t.device() == Device::CUDA && t.dtype() == DType::F32 && t.is_contiguous(),
             "NCCL all-reduce: expected a contiguous f32 CUDA tensor, got ", t.desc());
    float* p = t.data<float>();
    DG_NCCL(ncclAllReduce(p, p, size_t(t.numel()), ncclFloat32, ncclSum, comm_, cuda::stream()));
    DG_CUDA(cudaStreamSynchronize(cuda::stream()));  // the step reads the sums next, on the host or the stream
  }
  // Started on the comm stream once the compute stream has written the bucket (event ready_),
  // so the backward's next kernels run while NCCL sums. Compiled, never run on a GPU yet.
  std::unique_ptr<CommRequest> start_all_reduce_sum(Tensor& t) override {
    DG_CHECK(t.device() == Device::CUDA && t.dtype() == DType::F32 && t.is_contiguous(),
             "NCCL all-reduce: expected a contiguous f32 CUDA tensor, got ", t.desc());
    DG_CUDA(cudaEventRecord(ready_, cuda::stream()));
    DG_CUDA(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    float* p = t.data<float>();
    DG_NCCL(ncclAllReduce(p, p, size_t(t.numel()), ncclFloat32, ncclSum, comm_, comm_stream_));
    cudaEvent_t done = nullptr;
    DG_CUDA(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    DG_CUDA(cudaEventRecord(done, comm_stream_));
    return std::make_unique<NcclRequest>(t, done);
  }
  void all_reduce_sum(std::vector<double>& v) override { host_.all_reduce_sum(v); }
  void broadcast(std::string& bytes, int root) override { host_.broadcast(bytes, root); }
  void barrier() override { host_.barrier(); }
  [[noreturn]] void abort_all(const std::string& message, int code) override {
    if (comm_) ncclCommAbort(comm_), comm_ = nullptr;  // free peers blocked in a collective
    host_.abort_all(message, code);
    std::_Exit(code);  // not reached (the host comm ends the process); the compiler cannot know
  }

 private:
  Comm& host_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;  // the all-reduces of start_all_reduce_sum
  cudaEvent_t ready_ = nullptr;         // recorded on the compute stream before each start
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Comm> detail::make_nccl(Comm& host) { return std::make_unique<NcclComm>(host); }

}  // namespace dg
