#pragma once
/// \file contract.hpp
/// The contraction behind every token-level product of the width connections: a weighted sum of `K` values,
/// summed in a fixed order. "Values" are whatever the caller's back end holds per slot: one `float` (a CUDA
/// thread's column of a token) or a whole row (the host passes Eigen array rows of `db` values, so one call is
/// `K` vectorised axpys). Accessors are callables: `coef(k)` gives a scalar, `in(k)` a value, and the target
/// `out` is assignable from `scalar * value` and supports `+=`.

#include "../core/host_device.hpp"

namespace vwn::math {

/// Column `i` of a coefficient accessor: `k -> a(k, i)`.
template <class A>
struct column_of {
  const A& a;
  int i;
  VWN_GENERIC VWN_HOST_DEVICE auto operator()(int k) const { return a(k, i); }
};

/// Row `j` of a coefficient accessor: `k -> a(j, k)`, from column `first` on.
template <class A>
struct row_of {
  const A& a;
  int j;
  int first = 0;
  VWN_GENERIC VWN_HOST_DEVICE auto operator()(int k) const { return a(j, first + k); }
};

/// `out = sum_{k < K} coef(k) in(k)`: the first term assigned, the others added in order `k = 1 .. K-1`.
VWN_GENERIC template <int K, class Coef, class In, class Out>
VWN_HOST_DEVICE void weighted_sum(const Coef& coef, const In& in, Out&& out) {
  static_assert(K >= 1, "vwn::math::weighted_sum: at least one term");
  out = coef(0) * in(0);
  VWN_UNROLL
  for (int k = 1; k < K; ++k) out += coef(k) * in(k);
}

}  // namespace vwn::math
