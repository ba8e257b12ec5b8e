// The communicator of a vwn-train process (distributed.hpp): MPI where the program was built with it
// (VWN_WITH_MPI) and started as one of several ranks, this process alone otherwise. Compiled into the programs
// only, so that the trainer library (which the Python extension also links) does not depend on MPI.
#include <train/distributed.hpp>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#ifdef VWN_WITH_MPI
#include <mpi.h>
#endif

namespace vwn::train {

#ifdef VWN_WITH_MPI
namespace {

/// Throws std::runtime_error naming the call and MPI's own text for `code` when it is not MPI_SUCCESS.
void check(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string(call) + " failed: " + std::string(text, std::size_t(length)));
}

class mpi_world final : public communicator {
 public:
  mpi_world(int& argc, char**& argv) {
    check(MPI_Init(&argc, &argv), "MPI_Init");
    // Errors are returned (and thrown as exceptions naming the call) rather than ending the job without a word.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    library_ = std::string(version, std::size_t(length));
    if (const auto end = library_.find_first_of(",\n"); end != std::string::npos) library_.resize(end);
  }
  ~mpi_world() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(std::span<float> v) override { reduce(v.data(), v.size(), MPI_FLOAT); }
  void sum(std::span<double> v) override { reduce(v.data(), v.size(), MPI_DOUBLE); }
  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  std::vector<std::uint64_t> gather(std::uint64_t value) override {
    std::vector<std::uint64_t> all(static_cast<std::size_t>(size_));
    check(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD), "MPI_Allgather");
    return all;
  }
  [[noreturn]] void abort(int status) override {
    MPI_Abort(MPI_COMM_WORLD, status);
    std::_Exit(status);
  }
  std::string name() const override { return "MPI (" + library_ + ")"; }

 private:
  void reduce(void* data, std::size_t count, MPI_Datatype type) {
    // MPI counts are int: large buffers go in slices of at most 2^30 elements.
    constexpr std::size_t slice = std::size_t(1) << 30;
    const std::size_t bytes = type == MPI_FLOAT ? sizeof(float) : sizeof(double);
    for (std::size_t done = 0; done < count; done += slice) {
      const int n = int(std::min(slice, count - done));
      check(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + done * bytes, n, type, MPI_SUM, MPI_COMM_WORLD),
            "MPI_Allreduce");
    }
  }
  int rank_ = 0, size_ = 1;
  std::string library_;
};

}  // namespace

bool mpi_available() { return true; }

std::unique_ptr<communicator> open_world(int& argc, char**& argv) {
  if (!launched_as_ranks()) return std::make_unique<single_process>();
  return std::make_unique<mpi_world>(argc, argv);
}
#else
bool mpi_available() { return false; }

std::unique_ptr<communicator> open_world(int&, char**&) {
  if (launched_as_ranks())
    throw std::runtime_error(
        "started as one of several MPI ranks, but this vwn-train was built without MPI: every rank would train "
        "alone and write the same folder. Install Open MPI (libopenmpi-dev openmpi-bin) and build again, or run "
        "one process");
  return std::make_unique<single_process>();
}
#endif

}  // namespace vwn::train
