#pragma once
// Host values for the shared math (<vwn/math/...>): a token's slots (or segments) as Eigen array rows, so one
// call of a math function is a handful of vectorised row operations.

#include <type_traits>

#include "../core/config.hpp"

namespace vwn::detail {

/// A row of values of its own (scratch).
template <class S>
using row_array = Eigen::Array<S, 1, Eigen::Dynamic>;

/// One row of `width` values at `p` (const when `S` is const) as an Eigen array.
template <class S>
using row_map = Eigen::Map<std::conditional_t<std::is_const_v<S>, const Eigen::Array<std::remove_const_t<S>, 1, Eigen::Dynamic>,
                                              Eigen::Array<S, 1, Eigen::Dynamic>>>;

/// Accessor `i -> row i` over rows of `width` values stored back to back from `p` (a token's slots or segments).
template <class S>
struct rows {
  S* p;
  index_t width;
  row_map<S> operator()(int i) const { return row_map<S>(p + index_t(i) * width, width); }
};

/// Accessor `(j, k) -> c(j, k)` over an Eigen matrix of coefficients.
template <class C>
struct entries {
  const C& c;
  auto operator()(int j, int k) const { return c(j, k); }
};

}  // namespace vwn::detail
