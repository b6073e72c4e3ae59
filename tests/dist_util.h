// The helpers of the data-parallel tests (tests/test_dist.cpp, tests/test_grad_buckets.cpp):
// whether mpirun can run here, the mpirun command line for this 2-core container, and a
// command's exit status, output and wall time.
#pragma once
#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/comm.h"
#include "tests/test_util.h"

namespace dg::test {

inline const std::string kCli = std::string(DG_BUILD_DIR) + "/tools/deltagrad";

// Why the MPI tests cannot run here ("" when they can).
inline std::string mpi_missing() {
  if (!mpi_built()) return "this build has no MPI (libopenmpi-dev not found at build time)";
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) return "mpirun is not on PATH (openmpi-bin)";
  return "";
}

// `mpirun` for a 2-core container, as root too; every rank one OpenMP thread. Bounded by
// `timeout`, so a hang fails the test (exit 124) instead of stopping the suite.
inline std::string mpirun(int seconds) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_plm_rsh_agent= timeout " +
         std::to_string(seconds) +
         " mpirun --oversubscribe --bind-to none --mca btl self,vader -x OMP_NUM_THREADS=1 -x OPENBLAS_NUM_THREADS=1 ";
}

struct Ran {
  int code;
  std::string out;
  double seconds;
};
inline Ran sh(const std::string& cmd, const std::filesystem::path& log) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = std::system((cmd + " > " + log.string() + " 2>&1").c_str());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, test::slurp(log), s};
}

}  // namespace dg::test
