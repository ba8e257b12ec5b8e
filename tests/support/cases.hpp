#pragma once
// The typed-test lists of the primitive tests, all from vwn::compiled_shapes (include/vwn/core/shapes.hpp): one
// case per compiled shape, and for GHC one per shape and kind (static, dynamic).

#include <gtest/gtest.h>

#include <string>
#include <utility>

#include <vwn/core/shapes.hpp>

namespace vwn_test {

// A compiled shape as a test case.
template <int M_, int N_>
struct shape_case {
  static constexpr int M = M_, N = N_;
};

// A compiled shape with static or dynamic GHC.
template <int M_, int N_, bool Dynamic_>
struct ghc_case {
  static constexpr int M = M_, N = N_;
  static constexpr bool Dynamic = Dynamic_;
};

namespace cases_detail {
template <std::size_t... I>
::testing::Types<shape_case<vwn::compiled_shapes[I].m, vwn::compiled_shapes[I].n>...> shapes(std::index_sequence<I...>);
// Case 2i is shape i static, 2i + 1 the same shape dynamic.
template <std::size_t... I>
::testing::Types<ghc_case<vwn::compiled_shapes[I / 2].m, vwn::compiled_shapes[I / 2].n, I % 2 == 1>...> ghcs(
    std::index_sequence<I...>);
}  // namespace cases_detail

// Every compiled shape.
using shape_cases = decltype(cases_detail::shapes(std::make_index_sequence<vwn::compiled_shapes.size()>{}));
// Every compiled shape, static and dynamic.
using ghc_cases = decltype(cases_detail::ghcs(std::make_index_sequence<2 * vwn::compiled_shapes.size()>{}));

// Test names: "m2_n3", "dghc_m2_n3".
struct case_names {
  template <class C>
  static std::string GetName(int) {
    std::string kind;
    if constexpr (requires { C::Dynamic; }) kind = C::Dynamic ? "dghc_" : "ghc_";
    return kind + "m" + std::to_string(C::M) + "_n" + std::to_string(C::N);
  }
};

}  // namespace vwn_test
