#pragma once
// Shared helpers of the host tests: random inputs, NaN poisoning, tolerance comparison and central
// finite differences in double precision.

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <vwn/vwn.hpp>

#include "cases.hpp"

namespace vwn_test {

using vwn::index_t;

// Runs f and returns the message of the exception of type E it throws (fails the test when none is thrown).
template <class E = std::invalid_argument, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception thrown";
  return {};
}

// A fresh seed per call (std::random_device), printed by the caller on failure via SCOPED_TRACE.
/// A fresh random seed for each call; every test that uses one prints it. `VWN_TEST_SEED=<seed>` in the
/// environment makes every call return that seed, to replay a failure.
inline std::uint64_t fresh_seed() {
  if (const char* fixed = std::getenv("VWN_TEST_SEED"); fixed && *fixed) return std::strtoull(fixed, nullptr, 10);
  static std::random_device rd;
  return (std::uint64_t(rd()) << 32) ^ rd();
}

template <class S>
vwn::matrix<S> randn(index_t rows, index_t cols, std::mt19937_64& gen, double scale = 1.0) {
  std::normal_distribution<double> nd(0.0, scale);
  vwn::matrix<S> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = S(nd(gen));
  return m;
}

// Fills with NaN, so an element a kernel forgets to write fails every comparison.
template <class M>
void poison(M& m) {
  m.setConstant(std::numeric_limits<typename M::Scalar>::quiet_NaN());
}

// Every element of got within atol + rtol*|ref| of ref; ref must be non-zero (so zeros can't pass) and got
// finite. Reports the worst element.
template <class A, class B>
::testing::AssertionResult close(const A& got_, const B& ref_, double atol, double rtol) {
  const Eigen::MatrixXd got = got_.template cast<double>();
  const Eigen::MatrixXd ref = ref_.template cast<double>();
  if (got.rows() != ref.rows() || got.cols() != ref.cols())
    return ::testing::AssertionFailure() << "shape " << got.rows() << "x" << got.cols() << " vs reference "
                                         << ref.rows() << "x" << ref.cols();
  if (ref.size() > 0 && ref.norm() == 0) return ::testing::AssertionFailure() << "reference is all zeros";
  double worst = 0;
  index_t wi = -1, bad = 0;
  for (index_t i = 0; i < got.size(); ++i) {
    const double g = got.data()[i], r = ref.data()[i];
    const double excess = std::isfinite(g) ? std::abs(g - r) / (atol + rtol * std::abs(r)) : HUGE_VAL;
    if (excess > 1) ++bad;
    if (excess > worst || wi < 0) worst = excess, wi = i;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements outside atol=" << atol
                                       << " rtol=" << rtol << "; worst at flat index_t " << wi << ": got "
                                       << got.data()[wi] << ", reference " << ref.data()[wi];
}

// One tensor whose analytic gradient is checked against central differences.
struct fd_target {
  std::string name;
  double* value;          // the tensor being perturbed (parameter or input)
  const double* analytic;  // its analytic gradient, same layout
  index_t size;
};

// Central differences of loss() in double with step h. Tolerance: truncation error O(h^2 f''') ~ 1e-10 and
// round-off ~ 1e-16 |L| / h ~ 1e-10 |L| for h = 1e-5; atol 1e-6 + rtol 1e-5 leaves margin for |L| ~ 100 and
// still catches any wrong term (those are O(1)). Every target must have a non-zero analytic gradient.
// A random point can sit where the loss bends sharply (a per-slot RMSNorm over a few values whose input is
// near zero has third derivatives ~ 1/rms^3), and the truncation error at h then exceeds the tolerance: an
// entry that misses is checked again with h/10 (truncation error 100x smaller, round-off still ~1e-9 |L|) and
// counts as wrong only if it misses there too. A wrong analytic term misses at every step size.
//
// Tensors larger than `max_entries` are checked on a fresh random sample of that many entries (plus the first
// and last), so every tensor of the (8,64) configurations is covered without 10^4 loss evaluations each.
inline void check_gradients(const std::function<double()>& loss, const std::vector<fd_target>& targets,
                            double h = 1e-5, double atol = 1e-6, double rtol = 1e-5, index_t max_entries = 384) {
  std::mt19937_64 pick(fresh_seed());
  for (const fd_target& t : targets) {
    double norm = 0;
    index_t bad = 0;
    std::vector<index_t> entries;
    if (t.size <= max_entries) {
      for (index_t i = 0; i < t.size; ++i) entries.push_back(i);
    } else {
      std::uniform_int_distribution<index_t> u(0, t.size - 1);
      entries = {0, t.size - 1};
      while (index_t(entries.size()) < max_entries) entries.push_back(u(pick));
    }
    for (index_t i = 0; i < t.size; ++i) norm += t.analytic[i] * t.analytic[i];
    for (const index_t i : entries) {
      const auto central = [&](double step) {
        const double saved = t.value[i];
        t.value[i] = saved + step;
        const double lp = loss();
        t.value[i] = saved - step;
        const double lm = loss();
        t.value[i] = saved;
        return (lp - lm) / (2 * step);
      };
      const auto agrees = [&](double fd) { return std::abs(t.analytic[i] - fd) <= atol + rtol * std::abs(fd); };
      const double fd = central(h);
      if (agrees(fd)) continue;
      const double fine = central(h / 10);
      if (!agrees(fine) && bad++ < 5)
        ADD_FAILURE() << t.name << "[" << i << "]: analytic " << t.analytic[i] << ", finite difference " << fd
                      << " (step " << h << "), " << fine << " (step " << h / 10 << ")";
    }
    EXPECT_EQ(bad, 0) << t.name << ": " << bad << " of " << entries.size() << " checked entries wrong";
    EXPECT_GT(norm, 0) << t.name << ": analytic gradient is all zeros";
  }
}

template <class M>
fd_target target(std::string name, M& value, const M& grad) {
  return {std::move(name), value.data(), grad.data(), index_t(value.size())};
}

// Block width of the finite-difference checks of shape `(m, n)`: small, so that a check stays cheap, and 4 for
// n >= 64 (whose D' is already 256).
template <class Case>
inline constexpr int fd_block_width = Case::N >= 64 ? 4 : 6;

}  // namespace vwn_test
