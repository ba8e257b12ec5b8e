#pragma once
/// \file shapes.hpp
/// The closed set of width shapes `(m, n)` that vwn compiles where a shape is chosen at run time: the
/// reference transformer's registry (`vwn-train --m M --n N`), the programs, and every typed test list follow
/// from `VWN_COMPILED_SHAPES` below, the only place the set is written. A primitive of any other shape is one
/// template argument away (`vwn::dghc<3, 5>`); it is just not precompiled for a run-time choice.
///
/// ```
///   vwn::dispatch_shape(m, n, [&]<int M, int N>() { use(vwn::dghc<M, N>(D)); });  // false if not compiled
///   using list = vwn::shape_types<std::tuple>;  // std::tuple<width_shape<1, 1>, width_shape<1, 2>, ...>
/// ```

#include <array>
#include <cstddef>
#include <string>
#include <utility>

#include "shape.hpp"

namespace vwn {

/// A width shape as run-time values.
struct shape_id {
  int m = 1;  ///< fraction rate
  int n = 1;  ///< over-width slots
  /// "(m,n)".
  std::string name() const { return "(" + std::to_string(m) + "," + std::to_string(n) + ")"; }
  friend constexpr bool operator==(shape_id a, shape_id b) { return a.m == b.m && a.n == b.n; }
};

/// The shapes vwn compiles, `X(m, n)` for each: the plain residual (1,1); Hyper-Connections (1,2), (1,4);
/// Frac-Connections (2,2); the paper's 1.5x (2,3); (2,4), (4,8), (4,16); and its r = 2, 4, 8 scaling series at
/// m = 8: (8,16), (8,32), (8,64), with its r = 1 anchor (8,8) (docs/scaling.md). The one definition of the set: everything below, the build's generated
/// translation units (CMake reads this line) and the reference-data script follow from it.
#define VWN_ALL_SHAPES(X) X(1, 1) X(1, 2) X(1, 4) X(2, 2) X(2, 3) X(2, 4) X(4, 8) X(4, 16) X(8, 8) X(8, 16) X(8, 32) X(8, 64)

/// The compiled shapes: all of `VWN_ALL_SHAPES`, or a subset of them where the build defines `VWN_SHAPES_HEADER`
/// as the path of a header that defines `VWN_SELECTED_SHAPES(X)` (this project's CMake option `VWN_SHAPES` writes
/// one, for quicker builds such as the sanitizer build). Every file of a program must see the same set.
#ifdef VWN_SHAPES_HEADER
#include VWN_SHAPES_HEADER
#define VWN_COMPILED_SHAPES(X) VWN_SELECTED_SHAPES(X)
#else
#define VWN_COMPILED_SHAPES(X) VWN_ALL_SHAPES(X)
#endif

#define VWN_SHAPE_ID_(m, n) shape_id{m, n},
/// The compiled shapes as values, in the order of `VWN_COMPILED_SHAPES`.
inline constexpr std::array compiled_shapes{VWN_COMPILED_SHAPES(VWN_SHAPE_ID_)};
#undef VWN_SHAPE_ID_

/// The `I`-th compiled shape as a type.
template <std::size_t I>
using compiled_shape = width_shape<compiled_shapes[I].m, compiled_shapes[I].n>;

namespace detail {
template <template <class...> class List, std::size_t... I>
List<compiled_shape<I>...> shape_types_of(std::index_sequence<I...>);
}  // namespace detail

/// `List<width_shape<1, 1>, width_shape<1, 2>, ...>` over the compiled shapes, in order (a typed-test list,
/// a `std::tuple`, ...).
template <template <class...> class List>
using shape_types = decltype(detail::shape_types_of<List>(std::make_index_sequence<compiled_shapes.size()>{}));

/// Whether `(m, n)` is a compiled shape.
constexpr bool is_compiled_shape(int m, int n) {
  for (const shape_id s : compiled_shapes)
    if (s == shape_id{m, n}) return true;
  return false;
}

/// Calls `f.template operator()<M, N>()` for the compiled shape equal to `(m, n)` and returns true; returns
/// false (calling nothing) when `(m, n)` is not compiled. Every shape's call is instantiated.
template <class F>
bool dispatch_shape(int m, int n, F&& f) {
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return ((compiled_shapes[I] == shape_id{m, n} ? (f.template operator()<compiled_shapes[I].m, compiled_shapes[I].n>(), true)
                                                   : false) ||
            ...);
  }(std::make_index_sequence<compiled_shapes.size()>{});
}

/// "(1,1) (1,2) ... (8,64)".
inline std::string compiled_shapes_text() {
  std::string out;
  for (const shape_id s : compiled_shapes) out += (out.empty() ? "" : " ") + s.name();
  return out;
}

}  // namespace vwn
