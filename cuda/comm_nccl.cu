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
  }
  ~NcclComm() override {
    if (comm_) ncclCommDestroy(comm_);
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
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Comm> detail::make_nccl(Comm& host) { return std::make_unique<NcclComm>(host); }

}  // namespace dg
