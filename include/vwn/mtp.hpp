#pragma once
/// \file mtp.hpp
/// The block-level mixer of the multi-token-prediction head (paper section 3.4): one shared linear
/// `W_mix` of `db x 2db` applied to every slot, `U[t, j] = W_mix concat(A[t, j], B[t, j])`, where `A` is the
/// (normalised) last over-width state and `B` the (normalised) over-width embedding of the next token.
/// Its cost does not grow with `r`.

#include <array>
#include <string>

#include "core/checks.hpp"
#include "core/config.hpp"
#include "core/random.hpp"
#include "core/shape.hpp"
#include "core/shapes.hpp"
#include "core/tensors.hpp"
#include "detail/parallel.hpp"

namespace vwn {

/// The parameter tensor of the MTP mixer of shape `(M, N)`: `W_mix` (`db x 2db`), weight decay.
template <int M, int N>
constexpr std::array<tensor_spec, 1> mtp_mixer_tensors(index_t D) {
  return {{{"W_mix", D / M, 2 * (D / M), true}}};
}

namespace detail {

/// The argument checks of the MTP mixer (over-width `Dw`), shared by both back ends.
struct mtp_mixer_checks {
  std::string_view where;
  index_t Dw;
  /// `A`, `B` (`T x D'` each, contiguous rows); returns `T`.
  template <class AV, class BV>
  index_t inputs(const AV& A, const BV& B) const {
    const index_t T = expect_tokens(where, "A", A, Dw);
    expect_shape(where, "B", B, T, Dw);
    expect_contiguous(where, "A", A);
    expect_contiguous(where, "B", B);
    return T;
  }
  /// One more `T x D'` argument with contiguous rows.
  template <class V>
  void wide(index_t T, std::string_view name, const V& v) const {
    expect_shape(where, name, v, T, Dw);
    expect_contiguous(where, name, v);
  }
};

}  // namespace detail

/// Block-level MTP mixer of shape `(M, N)`.
template <int M, int N, class Scalar = float>
class mtp_mixer : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Parameters: the shared block linear.
  struct parameters {
    matrix<Scalar> W_mix;  ///< `db x 2db` (init N(0, 1/(2db))), weight decay
    /// Visits `f(name, data, size, weight_decay)` for the tensor of `mtp_mixer_tensors`.
    template <class F>
    void visit(F&& f) {
      const tensor_spec t = mtp_mixer_tensors<M, N>(M * W_mix.rows())[0];
      f(t.name, W_mix.data(), t.size(), t.decay);
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
  void forward(host_t, matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_ref<Scalar> U) const;

  /// `dA`, `dB` (overwritten) from `dU`; accumulates the gradient of `W_mix`.
  void backward(host_t, matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_cref<Scalar> dU, matrix_ref<Scalar> dA,
                matrix_ref<Scalar> dB);

 private:
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

template <int M, int N, class Scalar>
void mtp_mixer<M, N, Scalar>::forward(host_t, matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_ref<Scalar> U) const {
  const std::string where = name() + "::forward";
  const detail::mtp_mixer_checks check{where, wide_width()};
  const index_t T = check.inputs(A, B);
  check.wide(T, "U", U);
  auto u = slot_rows(U.data(), T);
  detail::product(u, slot_rows(A.data(), T), params.W_mix.leftCols(db_).transpose());
  detail::product<true>(u, slot_rows(B.data(), T), params.W_mix.rightCols(db_).transpose());
}

template <int M, int N, class Scalar>
void mtp_mixer<M, N, Scalar>::backward(host_t, matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_cref<Scalar> dU, matrix_ref<Scalar> dA,
                matrix_ref<Scalar> dB) {
  const std::string where = name() + "::backward";
  const detail::mtp_mixer_checks check{where, wide_width()};
  const index_t T = check.inputs(A, B);
  check.wide(T, "dU", dU);
  check.wide(T, "dA", dA);
  check.wide(T, "dB", dB);
  const auto du = slot_rows(dU.data(), T);
  detail::product(slot_rows(dA.data(), T), du, params.W_mix.leftCols(db_));
  detail::product(slot_rows(dB.data(), T), du, params.W_mix.rightCols(db_));
  detail::product<true>(grads.W_mix.leftCols(db_), du.transpose(), slot_rows(A.data(), T));
  detail::product<true>(grads.W_mix.rightCols(db_), du.transpose(), slot_rows(B.data(), T));
}

}  // namespace vwn

// With VWN_EXTERN_COMPILED_SHAPES defined, the compiled shapes are instantiated once, where
// VWN_INSTANTIATE_SHAPE(m, n, Scalar) is written (<vwn/precompiled.hpp>), not in every translation unit.
#ifdef VWN_EXTERN_COMPILED_SHAPES
#define VWN_EXTERN_MTP_(m, n) \
  extern template class vwn::mtp_mixer<m, n, float>; \
  extern template class vwn::mtp_mixer<m, n, double>;
VWN_COMPILED_SHAPES(VWN_EXTERN_MTP_)
#undef VWN_EXTERN_MTP_
#endif
