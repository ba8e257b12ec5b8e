#pragma once
/// \file config.hpp
/// Basic types of every vwn header: the index type, row-major batch matrices and the views the primitives
/// take, fixed-size coefficient matrices, the epsilon of every normalisation and the host execution policy.

#include <Eigen/Core>

#include <vwn/core/version.hpp>

namespace vwn {

/// Index type for run-time sizes (tokens, widths); Eigen's signed index (named index_t so that it never clashes
/// with POSIX index()).
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

}  // namespace vwn
