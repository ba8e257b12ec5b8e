#include <train/distributed.hpp>

#include <cstdio>
#include <cstdlib>

namespace vwn::train {

void single_process::abort(int status) {
  std::fflush(nullptr);
  std::_Exit(status);
}

bool launched_as_ranks() {
  // Open MPI, MPICH/Hydra and Slurm's PMI, PMIx: whichever the launcher sets.
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    const char* v = std::getenv(name);
    if (v != nullptr && std::atoi(v) > 1) return true;
  }
  return false;
}

}  // namespace vwn::train
