#pragma once
/// \file contract.hpp
/// The contraction behind every token-level product of the width connections: a weighted sum of `K` values,
/// summed in a fixed order. "Values" are whatever the caller's back end holds per slot: one `float` (a CUDA
/// thread's column of a token) or a whole row (the host passes Eigen array rows of `db` values, so one call is
/// `K` vectorised axpys). Accessors are callables: `coef(k)` gives a scalar, `in(k)` a value, and the target
/// `out` is assignable from `scalar * value` and supports `+=`.

#include <type_traits>
#include <utility>

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

namespace detail {
// `out = ((coef(0) in(0) + coef(1) in(1)) + ...)` as one expression: for values that are whole rows (the host's
// Eigen arrays) one pass over the rows, reading every input once and writing `out` once, with the sums in the same
// order, and so the same bits, as the loop below.
template <class Coef, class In, class Out, int... k>
void weighted_sum_expression(const Coef& coef, const In& in, Out&& out, std::integer_sequence<int, k...>) {
  out = (... + (coef(k) * in(k)));
}
}  // namespace detail

/// `out = sum_{k < K} coef(k) in(k)`: the first term assigned, the others added in order `k = 1 .. K-1`. Values
/// that are scalars (a device thread's column) are summed in that loop; rows of values (the host) in one pass.
VWN_GENERIC template <int K, class Coef, class In, class Out>
VWN_HOST_DEVICE void weighted_sum(const Coef& coef, const In& in, Out&& out) {
  static_assert(K >= 1, "vwn::math::weighted_sum: at least one term");
#if !defined(__CUDA_ARCH__)
  if constexpr (!std::is_arithmetic_v<std::remove_cv_t<std::remove_reference_t<Out>>>) {
    detail::weighted_sum_expression(coef, in, out, std::make_integer_sequence<int, K>{});
    return;
  }
#endif
  out = coef(0) * in(0);
  VWN_UNROLL
  for (int k = 1; k < K; ++k) out += coef(k) * in(k);
}

}  // namespace vwn::math
