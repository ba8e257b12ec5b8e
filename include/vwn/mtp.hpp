#pragma once
/// \file mtp.hpp
/// The block-level mixer of the multi-token-prediction head (paper section 3.4): one shared linear
/// `W_mix` of `db x 2db` applied to every slot, `U[t, j] = W_mix concat(A[t, j], B[t, j])`, where `A` is the
/// (normalised) last over-width state and `B` the (normalised) over-width embedding of the next token.
/// Its cost does not grow with `r`.

#include <string>

#include "config.hpp"
#include "detail/parallel.hpp"
#include "random.hpp"
#include "shape.hpp"

namespace vwn {

/// Block-level MTP mixer of shape `(M, N)`.
template <int M, int N, class Scalar = float>
class mtp_mixer : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Parameters: the shared block linear.
  struct parameters {
    matrix<Scalar> W_mix;  ///< `db x 2db` (init N(0, 1/(2db))), weight decay
    /// Visits `f(name, data, size, weight_decay)`.
    template <class F>
    void visit(F&& f) {
      f("W_mix", W_mix.data(), index_t(W_mix.size()), true);
    }
  };

  parameters params;  ///< the parameters
  parameters grads;   ///< accumulated gradients

  /// Mixer for backbone width `D` (a positive multiple of `M`).
  explicit mtp_mixer(index_t D, std::uint64_t seed = 3)
      : widths<M, N>(name() + "::mtp_mixer", D) {
    params.W_mix.resize(db_, 2 * db_);
    reset_parameters(seed);
    zero_grad();
  }

  /// Library name with shape.
  static std::string name() { return "vwn::mtp_mixer<" + std::to_string(M) + "," + std::to_string(N) + ">"; }

  /// `W_mix` from N(0, 1/(2db)).
  void reset_parameters(std::uint64_t seed) {
    rng r(seed);
    r.fill_normal(params.W_mix, 1.0 / std::sqrt(double(2 * db_)));
  }
  /// Clears the accumulated gradient.
  void zero_grad() { grads.W_mix.setZero(db_, 2 * db_); }

  /// `U` (`T x D'`) from `A` and `B` (`T x D'` each, rows stored back to back): one GEMM over all `T n` slots.
  void forward(host_t, matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_ref<Scalar> U) const {
    const std::string where = name() + "::forward";
    const index_t T = check(where, A, B);
    detail::expect_shape(where, "U", U, T, wide_width());
    detail::expect_contiguous(where, "U", U);
    auto u = slot_rows(U.data(), T);
    detail::product(u, slot_rows(A.data(), T), params.W_mix.leftCols(db_).transpose());
    detail::product<true>(u, slot_rows(B.data(), T), params.W_mix.rightCols(db_).transpose());
  }

  /// `dA`, `dB` (overwritten) from `dU`; accumulates the gradient of `W_mix`.
  void backward(host_t, matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_cref<Scalar> dU, matrix_ref<Scalar> dA,
                matrix_ref<Scalar> dB) {
    const std::string where = name() + "::backward";
    const index_t T = check(where, A, B);
    detail::expect_shape(where, "dU", dU, T, wide_width());
    detail::expect_contiguous(where, "dU", dU);
    detail::expect_shape(where, "dA", dA, T, wide_width());
    detail::expect_shape(where, "dB", dB, T, wide_width());
    detail::expect_contiguous(where, "dA", dA);
    detail::expect_contiguous(where, "dB", dB);
    const auto du = slot_rows(dU.data(), T);
    detail::product(slot_rows(dA.data(), T), du, params.W_mix.leftCols(db_));
    detail::product(slot_rows(dB.data(), T), du, params.W_mix.rightCols(db_));
    detail::product<true>(grads.W_mix.leftCols(db_), du.transpose(), slot_rows(A.data(), T));
    detail::product<true>(grads.W_mix.rightCols(db_), du.transpose(), slot_rows(B.data(), T));
  }

 private:
  index_t check(const std::string& where, matrix_cref<Scalar>& A, matrix_cref<Scalar>& B) const {
    const index_t T = detail::expect_tokens(where, "A", A, wide_width());
    detail::expect_shape(where, "B", B, T, wide_width());
    detail::expect_contiguous(where, "A", A);
    detail::expect_contiguous(where, "B", B);
    return T;
  }
  // A T x (n db) batch with contiguous rows viewed as T n slot rows of width db.
  auto slot_rows(const Scalar* p, index_t T) const { return Eigen::Map<const matrix<Scalar>>(p, T * N, db_); }
  auto slot_rows(Scalar* p, index_t T) const { return Eigen::Map<matrix<Scalar>>(p, T * N, db_); }

  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

}  // namespace vwn
