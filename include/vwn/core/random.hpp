#pragma once
/// \file random.hpp
/// A small, portable random generator for parameter initialisation: the same seed gives the same
/// parameters on every platform and standard library (std::normal_distribution does not promise that).

#include <cmath>
#include <cstdint>

#include "config.hpp"

namespace vwn {

/// SplitMix64 stream with Box-Muller normals. Deterministic across platforms.
class rng {
 public:
  /// Starts a stream from `seed`.
  explicit rng(std::uint64_t seed = 0x5eed) : state_(seed) {}

  /// Next 64 random bits.
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  /// Uniform in (0, 1), never exactly 0 or 1.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }

  /// Standard normal sample.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double phi = 6.283185307179586476925 * uniform();
    spare_ = r * std::sin(phi);
    has_spare_ = true;
    return r * std::cos(phi);
  }

  /// Fills `m` with N(0, stddev^2) samples in storage order.
  template <class Derived>
  void fill_normal(Eigen::DenseBase<Derived>& m, double stddev) {
    for (index_t i = 0; i < m.rows(); ++i)
      for (index_t j = 0; j < m.cols(); ++j) m(i, j) = static_cast<typename Derived::Scalar>(stddev * normal());
  }

 private:
  std::uint64_t state_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace vwn
