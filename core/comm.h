// The processes of a data-parallel run and the collectives they need: all-reduce (sum, mean),
// broadcast, barrier, and a way to stop every process with one process's message. It knows
// tensors and bytes, nothing about models. Implementations: a single process (no library),
// MPI for CPU tensors and host values (core/cpu/comm_mpi.cpp, built when MPI is found), NCCL
// for CUDA tensors (cuda/comm_nccl.cu, built with CUDA when nccl.h is found; its unique id is
// broadcast over the host comm).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dg {

// A started all-reduce (Comm::start_all_reduce_sum). Its tensor must stay alive and unwritten
// until wait() returns. Dropping an unfinished request does not wait (a failed peer would make
// that hang; the process is ending then): it leaves the buffer to the library, never freed.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  // Lets the collective progress (MPI progresses inside MPI calls only); true once it is done.
  virtual bool test() = 0;
  // Until the sums are there for what reads the tensor next: the host (MPI), or the compute
  // stream, which waits on an event (NCCL: the host does not block).
  virtual void wait() = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend_name() const = 0;  // "single", "mpi", "nccl"
  // In-place element-wise sum over the ranks of a contiguous F32 tensor that every rank passes
  // with the same shape (on the device the implementation serves).
  virtual void all_reduce_sum(Tensor& t) = 0;
  // The same, started and left running: every rank must start its all-reduces in the same
  // order. By default the blocking one, returning a finished request (one process, no MPI).
  // The gradient sums go through this call only, bucketed or not: Open MPI's in-place
  // non-blocking all-reduce adds each element along a binomial tree of the ranks (libnbc
  // picks it for every in-place call), so an element's sum does not depend on the message
  // it is in, while its blocking one switches algorithms with the message size (3 ranks,
  // 20000 floats: 2925 elements differed in their last bits). NCCL's rings and trees cut
  // messages by size: with several GPUs, other buckets may round differently.
  virtual std::unique_ptr<CommRequest> start_all_reduce_sum(Tensor& t);
  // The same for host values (metrics, flags): summed in f64.
  virtual void all_reduce_sum(std::vector<double>& values) = 0;
  // Rank `root`'s bytes to every rank (the others' `bytes` are replaced, whatever their size).
  virtual void broadcast(std::string& bytes, int root) = 0;
  virtual void barrier() = 0;
  // Print `message` (naming this rank) on stderr and end every rank with exit status `code`:
  // for the programs that launch runs (the CLI), when one rank fails while the others may be
  // waiting in a collective. A single process just exits.
  [[noreturn]] virtual void abort_all(const std::string& message, int code) = 0;
  // The mean over ranks: the sum, divided by size().
  void all_reduce_mean(Tensor& t);
};

// The processes this program was started with. Under a launcher (mpirun / a cluster launcher
// setting Open MPI's OMPI_COMM_WORLD_SIZE or PMI's PMI_SIZE / PMIX_RANK) of more than one process
// MPI is initialised on the first call (finalize_world() ends it); otherwise it is a single
// process and no MPI call is made. A launcher of several processes with a build without MPI throws.
Comm& world();
// Ends MPI if world() started it (a normal end of every rank; MPI wants it before exit).
void finalize_world();
// world() if something called it already (the CLI's error path asks), else nullptr.
Comm* world_if_started();
// The launcher's process count from the environment, without an MPI call: 1 without a launcher,
// 0 when the launcher gave only a rank (PMIx).
int launcher_size();
bool mpi_built();
bool nccl_built();
// A comm over the same ranks as `host` for CUDA tensors on this process's GPU, through NCCL;
// NCCL's unique id is made on rank 0 and broadcast over `host`. Throws when NCCL is not built.
std::unique_ptr<Comm> make_nccl_comm(Comm& host);

// What the MPI and NCCL implementations provide (core/cpu/comm_mpi.cpp, cuda/comm_nccl.cu; or
// core/comm.cpp's "not built" answers).
namespace detail {
std::unique_ptr<Comm> make_mpi_world();
std::unique_ptr<Comm> make_nccl(Comm& host);
}  // namespace detail

}  // namespace dg
