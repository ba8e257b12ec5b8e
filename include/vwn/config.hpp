#pragma once
/// \file config.hpp
/// Basic types, the host execution policy and argument checks shared by every vwn header.

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#define VWN_VERSION_MAJOR 0
#define VWN_VERSION_MINOR 1
#define VWN_VERSION_PATCH 0

namespace vwn {

/// Index type for run-time sizes (tokens, widths); Eigen's signed index (named index_t so that it never clashes with POSIX index()).
using index_t = Eigen::Index;

/// Dense row-major matrix. A batch of `T` tokens of width `W` is a `T x W` matrix.
template <class Scalar>
using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Dense column vector (norm weights, biases).
template <class Scalar>
using vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

/// Read-only view of a row-major matrix held by the caller (any outer stride, unit inner stride).
template <class Scalar>
using matrix_cref = Eigen::Ref<const matrix<Scalar>>;

/// Writable view of a row-major matrix held by the caller.
template <class Scalar>
using matrix_ref = Eigen::Ref<matrix<Scalar>>;

/// Fixed-size `R x C` matrix, row-major where Eigen allows it (an `R x 1` column is column-major,
/// which has the same memory layout).
template <class Scalar, int R, int C>
using fixed_matrix =
    Eigen::Matrix<Scalar, R, C, (C == 1 && R != 1) ? Eigen::ColMajor : Eigen::RowMajor>;

/// Epsilon of every normalisation in vwn (per-slot RMSNorm of DGHC, GroupNorm of the reduce head).
inline constexpr double norm_eps = 1e-6;

/// Execution policy of the host (Eigen) back end: an empty tag, passed first to every primitive.
struct host_t {};
/// The host execution policy object.
inline constexpr host_t host{};

namespace detail {

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

/// Fixed number of work chunks over tokens. Each chunk reduces its own partial parameter gradients,
/// and the partials are added in chunk order, so results do not depend on the thread count.
inline constexpr index_t reduction_chunks = 32;

/// Below this many items a loop runs on the calling thread: waking a team for a handful of tokens costs
/// more than it saves, and much more when the cores are shared.
inline constexpr index_t parallel_threshold = 64;

/// Calls `f(chunk, begin, end)` for `chunks` contiguous ranges covering [0, count), in parallel under OpenMP
/// when `count >= parallel_threshold`, the chunks handed out one at a time (a thread the OS deschedules holds
/// up one chunk, not a fixed half of them). The chunking does not depend on the thread count.
template <class F>
void for_chunks(index_t count, index_t chunks, F&& f) {
  chunks = std::max<index_t>(1, std::min(chunks, count));
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (count >= parallel_threshold && !omp_in_parallel())
#endif
  for (index_t c = 0; c < chunks; ++c) f(c, count * c / chunks, count * (c + 1) / chunks);
}

/// Number of chunks `for_chunks(count, reduction_chunks, ...)` uses.
inline index_t chunk_count(index_t count) { return std::max<index_t>(1, std::min(reduction_chunks, count)); }

/// Pointer to row `r` of a row-major matrix or view.
template <class M>
auto row_ptr(M& m, index_t r) {
  return m.data() + r * m.outerStride();
}

}  // namespace detail
}  // namespace vwn
