// The MPI comm (Open MPI, MPICH): CPU tensors and host values. Built when meson finds MPI;
// MPI_Init runs only under a launcher (core/comm.cpp's world()).
// the C API only (Open MPI and MPICH would also pull in their deprecated C++ bindings)
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "core/comm.h"
#include "core/error.h"

namespace dg {

namespace {

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(str("MPI error in ", call, ": ", std::string(text, size_t(len))));
}

void check_cpu_f32(const Tensor& t) {
  DG_CHECK(t.device() == Device::CPU && t.dtype() == DType::F32 && t.is_contiguous(),
           "MPI all-reduce: expected a contiguous f32 CPU tensor, got ", t.desc(), " (CUDA tensors go through NCCL)");
}

// MPI counts are int: a tensor of more elements is summed in pieces, calling f(first, count).
template <class F>
void in_int_pieces(const Tensor& t, F&& f) {
  for (int64_t done = 0; done < t.numel();) {
    const int n = int(std::min<int64_t>(t.numel() - done, std::numeric_limits<int>::max()));
    f(t.data<float>() + done, n);
    done += n;
  }
}

// MPI_Iallreduce's requests (one per int-sized piece) and the tensor they write.
class MpiRequest final : public CommRequest {
 public:
  explicit MpiRequest(const Tensor& t) : t_(t) {}
  ~MpiRequest() override {
    if (!reqs_.empty()) new Tensor(t_);  // unfinished: MPI may still write it (comm.h: never freed)
  }
  void add(MPI_Request r) { reqs_.push_back(r); }
  bool test() override {
    if (reqs_.empty()) return true;
    int done = 0;
    check_mpi(MPI_Testall(int(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) reqs_.clear();
    return done != 0;
  }
  void wait() override {
    if (reqs_.empty()) return;
    check_mpi(MPI_Waitall(int(reqs_.size()), reqs_.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
    reqs_.clear();
  }

 private:
  Tensor t_;
  std::vector<MPI_Request> reqs_;
};

class MpiComm final : public Comm {
 public:
  MpiComm() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      // FUNNELED: the data loader's and OpenMP's threads never call MPI
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_ = true;
    }
    // errors come back as codes (then exceptions), not the default abort inside MPI
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend_name() const override { return "mpi"; }

  void all_reduce_sum(Tensor& t) override {
    check_cpu_f32(t);
    in_int_pieces(t, [](float* p, int n) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, p, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    });
  }
  // MPI_Iallreduce: Open MPI moves it on inside MPI calls (test()), no progress thread needed.
  std::unique_ptr<CommRequest> start_all_reduce_sum(Tensor& t) override {
    check_cpu_f32(t);
    auto req = std::make_unique<MpiRequest>(t);
    in_int_pieces(t, [&](float* p, int n) {
      MPI_Request r;
      check_mpi(MPI_Iallreduce(MPI_IN_PLACE, p, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r), "MPI_Iallreduce");
      req->add(r);
    });
    return req;
  }
  void all_reduce_sum(std::vector<double>& v) override {
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, v.data(), int(v.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
  }
  void broadcast(std::string& bytes, int root) override {
    unsigned long long n = bytes.size();
    check_mpi(MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, root, MPI_COMM_WORLD), "MPI_Bcast");
    bytes.resize(size_t(n));
    check_mpi(MPI_Bcast(bytes.data(), int(n), MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
  }
  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  [[noreturn]] void abort_all(const std::string& message, int code) override {
    std::fprintf(stderr, "%s\n(rank %d of %d failed: stopping every rank)\n", message.c_str(), rank_, size_);
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; if it did, still end
  }

 private:
  int rank_ = 0, size_ = 1;
  bool owns_ = false;
};

}  // namespace

bool mpi_built() { return true; }

std::unique_ptr<Comm> detail::make_mpi_world() { return std::make_unique<MpiComm>(); }

}  // namespace dg
