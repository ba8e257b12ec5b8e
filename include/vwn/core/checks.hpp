#pragma once
/// \file checks.hpp
/// Argument checks at the API boundary of every primitive, on both back ends: each throws
/// `std::invalid_argument` "where: what: expected E, got G" before anything is written. The view arguments
/// may be host (`Eigen::Ref`, `Eigen::Map`, `vwn::matrix`) or device views: anything with `rows()`,
/// `cols()`, `size()`, `data()` and `outerStride()`.

#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include "config.hpp"

namespace vwn::detail {

/// Whether `Scalar` is a scalar type of the host back end.
template <class Scalar>
inline constexpr bool is_supported_scalar = std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

/// "rows x cols" for messages.
inline std::string shape_str(index_t r, index_t c) { return std::to_string(r) + "x" + std::to_string(c); }

/// Throws std::invalid_argument "where: what: expected E, got G".
[[noreturn]] inline void fail(std::string_view where, std::string_view what, std::string_view expected,
                              std::string_view got) {
  std::ostringstream s;
  s << where << ": " << what << ": expected " << expected << ", got " << got;
  throw std::invalid_argument(s.str());
}

/// Checks that `m` is `rows x cols`.
template <class M>
void expect_shape(std::string_view where, std::string_view name, const M& m, index_t rows, index_t cols) {
  if (m.rows() != rows || m.cols() != cols)
    fail(where, std::string(name) + " shape", shape_str(rows, cols), shape_str(m.rows(), m.cols()));
}

/// Checks that `m` has `cols` columns and returns its row count (the token count), which must be > 0.
template <class M>
index_t expect_tokens(std::string_view where, std::string_view name, const M& m, index_t cols) {
  if (m.rows() == 0) fail(where, std::string(name) + " token count", "at least 1 token", "0 (empty batch)");
  if (m.cols() != cols)
    fail(where, std::string(name) + " width", std::to_string(cols) + " columns", std::to_string(m.cols()) + " columns");
  return m.rows();
}

/// Checks that the rows of `m` are stored back to back (needed where a batch is viewed as `T*n` slot rows).
template <class M>
void expect_contiguous(std::string_view where, std::string_view name, const M& m) {
  if (m.rows() > 1 && m.outerStride() != m.cols())
    fail(where, std::string(name) + " row stride", "contiguous rows (outer stride " + std::to_string(m.cols()) + ")",
         "outer stride " + std::to_string(m.outerStride()));
}

/// Checks that the memory of output `out` does not overlap input `in` (a kernel reading `in` while writing
/// `out` would silently produce wrong numbers).
template <class A, class B>
void expect_no_alias(std::string_view where, std::string_view out_name, const A& out, std::string_view in_name,
                     const B& in) {
  if (out.size() == 0 || in.size() == 0) return;
  const auto* o0 = reinterpret_cast<const char*>(out.data());
  const auto* o1 = reinterpret_cast<const char*>(out.data() + (out.rows() - 1) * out.outerStride() + out.cols());
  const auto* i0 = reinterpret_cast<const char*>(in.data());
  const auto* i1 = reinterpret_cast<const char*>(in.data() + (in.rows() - 1) * in.outerStride() + in.cols());
  if (o0 < i1 && i0 < o1)
    fail(where, std::string(out_name) + " storage", "memory separate from " + std::string(in_name),
         "an overlapping view");
}

/// Whether `out` is exactly `in` (same first element and row stride): the one overlap an in-place operation allows.
template <class A, class B>
bool same_view(const A& out, const B& in) {
  return static_cast<const void*>(out.data()) == static_cast<const void*>(in.data()) &&
         out.outerStride() == in.outerStride();
}

/// Number of sequences of length `T` in a batch of `rows` token rows; throws unless `rows` is a positive
/// multiple of `T`.
inline index_t expect_sequences(std::string_view where, std::string_view name, index_t rows, index_t T) {
  if (T <= 0) fail(where, "sequence length T", "T >= 1", "T = " + std::to_string(T));
  if (rows % T != 0)
    fail(where, std::string(name) + " row count", "a multiple of the sequence length T = " + std::to_string(T),
         std::to_string(rows) + " rows");
  return rows / T;
}

/// `value` as an `int` (the size and index type of cuBLAS and of kernel arguments); throws naming `what` when it
/// does not fit, rather than narrowing it silently.
inline int checked_int(std::string_view where, std::string_view what, index_t value) {
  if (value < 0 || value > index_t(std::numeric_limits<int>::max()))
    fail(where, what, "0 .. " + std::to_string(std::numeric_limits<int>::max()) + " (a 32-bit int)",
         std::to_string(value));
  return static_cast<int>(value);
}

/// Throws unless `size >= 1`.
inline void expect_positive(std::string_view where, std::string_view what, index_t size) {
  if (size <= 0) fail(where, what, ">= 1", std::to_string(size));
}

}  // namespace vwn::detail
