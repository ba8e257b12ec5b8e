#pragma once
/// \file distributed.hpp
/// Data-parallel training (docs/distributed.md): the few collective operations the trainer needs, behind one
/// interface with two implementations, this process alone and MPI (`mpirun -np R vwn-train ...`, where vwn-train was
/// built with MPI). The trainer splits each global batch into parts (micro-batches), computes the gradient of each
/// part, and sums them in a fixed order; across ranks the sum is an MPI allreduce.

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace vwn::train {

/// The processes of one data-parallel job and the collective operations between them. Every rank must call the
/// collective operations in the same order with the same sizes; each returns the same values on every rank.
class communicator {
 public:
  virtual ~communicator() = default;
  /// This process's rank, in `[0, size())`.
  virtual int rank() const = 0;
  /// The number of ranks.
  virtual int size() const = 0;
  /// Element-wise sum over the ranks, in place: afterwards every rank holds the same sums.
  virtual void sum(std::span<float> values) = 0;
  /// Element-wise sum over the ranks, in place (doubles).
  virtual void sum(std::span<double> values) = 0;
  /// Returns once every rank has called it (MPI_Barrier): the trainer times the wait for the slowest rank apart from
  /// the sum.
  virtual void barrier() = 0;
  /// Every rank's `value`, by rank.
  virtual std::vector<std::uint64_t> gather(std::uint64_t value) = 0;
  /// Ends every rank of the job at once with `status` after an error on this one (the others may be waiting in a
  /// collective operation and would otherwise never return). Does not return.
  [[noreturn]] virtual void abort(int status) = 0;
  /// "MPI (Open MPI 4.1.4)" or "one process": what carries the collective operations.
  virtual std::string name() const = 0;
};

/// This process alone: rank 0 of 1; every collective operation leaves its values as they are.
class single_process final : public communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void sum(std::span<float>) override {}
  void sum(std::span<double>) override {}
  void barrier() override {}
  std::vector<std::uint64_t> gather(std::uint64_t value) override { return {value}; }
  [[noreturn]] void abort(int status) override;
  std::string name() const override { return "one process"; }
};

/// Whether this build of the trainer can run over MPI.
bool mpi_available();

/// Whether the environment says this process was started by an MPI launcher as one of several ranks (Open MPI's
/// `OMPI_COMM_WORLD_SIZE`, or `PMI_SIZE`, `PMIX_SIZE`... greater than 1).
bool launched_as_ranks();

/// The communicator of this process: MPI when it was started as one of several ranks (MPI is initialised here and
/// finalised when the communicator is destroyed), this process alone otherwise. Throws std::runtime_error when it
/// was started as one of several ranks by a build without MPI (each rank would train alone and write the same
/// folder).
std::unique_ptr<communicator> open_world(int& argc, char**& argv);

}  // namespace vwn::train
