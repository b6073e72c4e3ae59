#include "core/comm.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "core/backend.h"
#include "core/error.h"

namespace dg {

void Comm::all_reduce_mean(Tensor& t) {
  all_reduce_sum(t);
  if (size() > 1) backend_of(t).unary(UnaryOp::MulScalar, t, t, 1.0 / double(size()));  // elementwise: in place is safe
}

namespace {
class DoneRequest final : public CommRequest {
 public:
  bool test() override { return true; }
  void wait() override {}
};
}  // namespace

std::unique_ptr<CommRequest> Comm::start_all_reduce_sum(Tensor& t) {
  all_reduce_sum(t);
  return std::make_unique<DoneRequest>();
}

namespace {

// One process: every collective is the identity.
class SingleComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend_name() const override { return "single"; }
  void all_reduce_sum(Tensor&) override {}
  void all_reduce_sum(std::vector<double>&) override {}
  void broadcast(std::string&, int root) override { DG_CHECK(root == 0, "broadcast: root ", root, " of 1 rank"); }
  void barrier() override {}
  [[noreturn]] void abort_all(const std::string& message, int code) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(nullptr);
    std::exit(code);
  }
};

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : 0;
}

std::unique_ptr<Comm>& world_slot() {
  static std::unique_ptr<Comm> w;
  return w;
}

}  // namespace

int launcher_size() {
  // Open MPI's mpirun; PMI-1/2 (Slurm's srun, MPICH's hydra); PMIx (srun --mpi=pmix) sets the
  // rank only: 0, MPI tells the size after its initialisation.
  if (int n = env_int("OMPI_COMM_WORLD_SIZE")) return n;
  if (int n = env_int("PMI_SIZE")) return n;
  if (std::getenv("PMIX_RANK")) return 0;
  return 1;
}

Comm& world() {
  static std::once_flag once;
  std::call_once(once, [] {
    const int n = launcher_size();
    if (n == 1) {  // no launcher, or a launcher of one process: nothing to share
      world_slot() = std::make_unique<SingleComm>();
      return;
    }
    DG_CHECK(mpi_built(), "this process was started by a launcher (OMPI_COMM_WORLD_SIZE / PMI_SIZE / PMIX_RANK ",
             "is set", n > 1 ? str(": ", n, " processes") : std::string(), "), but this build has no MPI: install ",
             "libopenmpi-dev and reconfigure (meson setup --reconfigure build), or run one process");
    world_slot() = detail::make_mpi_world();
  });
  DG_CHECK(world_slot() != nullptr, "world(): the MPI initialisation failed earlier");
  return *world_slot();
}

Comm* world_if_started() { return world_slot().get(); }

void finalize_world() { world_slot().reset(); }

std::unique_ptr<Comm> make_nccl_comm(Comm& host) { return detail::make_nccl(host); }

}  // namespace dg
