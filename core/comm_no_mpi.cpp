// A build without MPI: world() is a single process; a launcher of several is refused there.
#include "core/comm.h"
#include "core/error.h"

namespace dg {
bool mpi_built() { return false; }
std::unique_ptr<Comm> detail::make_mpi_world() { throw Error("this build has no MPI (libopenmpi-dev was not found)"); }
}  // namespace dg
