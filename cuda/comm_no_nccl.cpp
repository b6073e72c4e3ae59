// A build without NCCL (no CUDA, or no nccl.h): CUDA tensors cannot be all-reduced across ranks.
#include "core/comm.h"
#include "core/error.h"

namespace dg {
bool nccl_built() { return false; }
std::unique_ptr<Comm> detail::make_nccl(Comm&) {
  throw Error("this build has no NCCL (CUDA with nccl.h and libnccl was not found at build time): "
              "data-parallel training on GPUs needs it; --device cpu runs on MPI alone");
}
}  // namespace dg
