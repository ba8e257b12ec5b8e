#pragma once
/// \file reduce.hpp
/// The head's reduce (paper eq. 4, Algorithm 1 line 14): `h = W_reduce GroupNorm(H_L)`, `W_reduce` of
/// `D x D'`, GroupNorm over `r = D'/D` groups of `D` contiguous values when `r` is an integer; without the
/// GroupNorm when `D' % D != 0` (fractional r, as the paper does at 1.5x); the identity when `n == m`.

#include <array>
#include <string>
#include <vector>

#include "core/checks.hpp"
#include "core/config.hpp"
#include "core/random.hpp"
#include "core/shape.hpp"
#include "core/shapes.hpp"
#include "core/tensors.hpp"
#include "detail/parallel.hpp"
#include "detail/rows.hpp"
#include "math/norm.hpp"

namespace vwn {

/// Whether a reduce head of shape `(M, N)` has anything to reduce (`D' != D`, i.e. `n != m`).
template <int M, int N>
inline constexpr bool reduce_head_has_reduce = N != M;
/// Whether a GroupNorm (group size `D`) precedes the reduce: `n % m == 0` and `n != m`.
template <int M, int N>
inline constexpr bool reduce_head_has_groupnorm = N != M && (N % M == 0);

/// The parameter tensors of a reduce head of shape `(M, N)` at backbone width `D`, in visit order: `gn_weight`,
/// `gn_bias` (`D'`, GroupNorm only) and `W_reduce` (`D x D'`, unless `n == m`). Both back ends use this list.
template <int M, int N>
constexpr auto reduce_head_tensors(index_t D) {
  constexpr int count = (reduce_head_has_groupnorm<M, N> ? 2 : 0) + (reduce_head_has_reduce<M, N> ? 1 : 0);
  [[maybe_unused]] const index_t Dw = N * (D / M);
  std::array<tensor_spec, count> out{};
  int i = 0;
  if constexpr (reduce_head_has_groupnorm<M, N>) {
    out[std::size_t(i++)] = {"gn_weight", Dw, 1, false};
    out[std::size_t(i++)] = {"gn_bias", Dw, 1, false};
  }
  if constexpr (reduce_head_has_reduce<M, N>) out[std::size_t(i++)] = {"W_reduce", D, Dw, true};
  return out;
}

namespace detail {

/// The argument checks of a reduce head (backbone width `D`, over-width `Dw`), shared by both back ends.
struct reduce_head_checks {
  std::string_view where;
  index_t D, Dw;
  /// `H` (`T x D'`) -> `h` (`T x D`); returns `T`.
  template <class HV, class OV>
  index_t forward(const HV& H, const OV& h) const {
    const index_t T = expect_tokens(where, "H", H, Dw);
    expect_shape(where, "h", h, T, D);
    return T;
  }
  /// `H`, `dh` -> `dH` for the `T` tokens of the saved state.
  template <class HV, class GV, class DV>
  void backward(index_t T, const HV& H, const GV& dh, const DV& dH) const {
    if (T == 0) fail(where, "workspace", "one filled by forward", "an empty workspace");
    expect_shape(where, "H", H, T, Dw);
    expect_shape(where, "dh", dh, T, D);
    expect_shape(where, "dH", dH, T, Dw);
  }
};

}  // namespace detail

/// GroupNorm + linear reduce `D' -> D` of shape `(M, N)`.
template <int M, int N, class Scalar = float>
class reduce_head : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Whether there is anything to reduce (`D' != D`, i.e. `n != m`); otherwise forward is a copy.
  static constexpr bool has_reduce = reduce_head_has_reduce<M, N>;
  /// Whether a GroupNorm (group size `D`) precedes the reduce (`n % m == 0` and `n != m`).
  static constexpr bool has_groupnorm = reduce_head_has_groupnorm<M, N>;
  /// Number of GroupNorm groups, `r = n / m` (0 without GroupNorm).
  static constexpr int groups = has_groupnorm ? N / M : 0;

  /// Parameters (empty tensors where the configuration has none).
  struct parameters {
    vector<Scalar> gn_weight;  ///< `D'` GroupNorm scale (init 1), no weight decay
    vector<Scalar> gn_bias;    ///< `D'` GroupNorm shift (init 0), no weight decay
    matrix<Scalar> W_reduce;   ///< `D x D'` (init N(0, 1/D')), weight decay
    /// Visits `f(name, data, size, weight_decay)` for each tensor of `reduce_head_tensors`, in that order.
    template <class F>
    void visit(F&& f) {
      const index_t D = has_reduce ? W_reduce.rows() : 0;
      for (const tensor_spec& t : reduce_head_tensors<M, N>(D)) {
        Scalar* data = t.name == "gn_weight" ? gn_weight.data() : t.name == "gn_bias" ? gn_bias.data() : W_reduce.data();
        f(t.name, data, t.size(), t.decay);
      }
    }
    /// Sets every entry to zero.
    void set_zero() {
      gn_weight.setZero();
      gn_bias.setZero();
      W_reduce.setZero();
    }
  };
  /// Saved state between forward and backward.
  struct workspace {
    index_t tokens = 0;       ///< T of the last forward
    matrix<Scalar> normed;  ///< `T x D'` GroupNorm output (the reduce input)
    matrix<Scalar> mean;    ///< `T x r` group means
    matrix<Scalar> rstd;    ///< `T x r` group 1/std
  };

  parameters params;  ///< the parameters
  parameters grads;   ///< accumulated gradients

  /// Head for backbone width `D` (a positive multiple of `M`).
  explicit reduce_head(index_t D, std::uint64_t seed = 2)
      : widths<M, N>(name() + "::reduce_head", D) {
    for (parameters* p : {&params, &grads}) {
      if constexpr (has_groupnorm) {
        p->gn_weight.resize(wide_width());
        p->gn_bias.resize(wide_width());
      }
      if constexpr (has_reduce) p->W_reduce.resize(D, wide_width());
    }
    reset_parameters(seed);
    zero_grad();
  }

  /// Library name with shape.
  static std::string name() { return "vwn::reduce_head<" + std::to_string(M) + "," + std::to_string(N) + ">"; }

  /// GroupNorm weight 1, bias 0, `W_reduce` from N(0, 1/D').
  void reset_parameters(std::uint64_t seed) {
    params.gn_weight.setOnes();
    params.gn_bias.setZero();
    rng r(seed);
    r.fill_normal(params.W_reduce, 1.0 / std::sqrt(double(wide_width())));
  }
  /// Clears the accumulated gradients.
  void zero_grad() { grads.set_zero(); }

  /// `h` (`T x D`) from the last over-width state `H` (`T x D'`).
  void forward(host_t, matrix_cref<Scalar> H, matrix_ref<Scalar> h, workspace& ws) const;

  /// `dH` (`T x D'`, overwritten) from `dh` (`T x D`); accumulates the parameter gradients.
  void backward(host_t, matrix_cref<Scalar> H, matrix_cref<Scalar> dh, matrix_ref<Scalar> dH, workspace& ws);

 private:
  detail::reduce_head_checks checks(const std::string& where) const { return {where, D_, wide_width()}; }

  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

template <int M, int N, class Scalar>
void reduce_head<M, N, Scalar>::forward(host_t, matrix_cref<Scalar> H, matrix_ref<Scalar> h, workspace& ws) const {
  const std::string where = name() + "::forward";
  const index_t T = checks(where).forward(H, h);
  if constexpr (has_groupnorm) {
    ws.normed.resize(T, wide_width());
    ws.mean.resize(T, groups);
    ws.rstd.resize(T, groups);
  }
  ws.tokens = T;
  if constexpr (!has_reduce) {
    h = H;
  } else if constexpr (!has_groupnorm) {
    detail::product(h, H, params.W_reduce.transpose());
  } else {
    const Scalar n = Scalar(D_);
    detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
      for (index_t t = t0; t < t1; ++t)
        for (int k = 0; k < groups; ++k) {
          const auto seg = Eigen::seqN(k * D_, D_);
          const auto x = H.row(t)(seg).array();
          const Scalar mean = math::mean_of(x.sum(), n);
          const Scalar rstd = math::inverse_rms((x - mean).square().sum(), n);
          ws.mean(t, k) = mean;
          ws.rstd(t, k) = rstd;
          math::group_forward(x, mean, rstd, params.gn_weight(seg).transpose().array(),
                              params.gn_bias(seg).transpose().array(), ws.normed.row(t)(seg).array());
        }
    });
    detail::product(h, ws.normed, params.W_reduce.transpose());
  }
}

template <int M, int N, class Scalar>
void reduce_head<M, N, Scalar>::backward(host_t, matrix_cref<Scalar> H, matrix_cref<Scalar> dh, matrix_ref<Scalar> dH, workspace& ws) {
  const std::string where = name() + "::backward";
  checks(where).backward(ws.tokens, H, dh, dH);
  const index_t T = ws.tokens;
  if constexpr (!has_reduce) {
    dH = dh;
  } else if constexpr (!has_groupnorm) {
    detail::product<true>(grads.W_reduce, dh.transpose(), H);
    detail::product(dH, dh, params.W_reduce);
  } else {
    detail::product<true>(grads.W_reduce, dh.transpose(), ws.normed);
    matrix<Scalar> dnormed(T, wide_width());  // T x D'
    detail::product(dnormed, dh, params.W_reduce);
    const index_t chunks = detail::chunk_count(T);
    std::vector<matrix<Scalar>> dw(std::size_t(chunks), matrix<Scalar>::Zero(1, wide_width()));
    std::vector<matrix<Scalar>> db(std::size_t(chunks), matrix<Scalar>::Zero(1, wide_width()));
    const Scalar n = Scalar(D_);
    detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
      detail::row_array<Scalar> xh(D_), dxh(D_);
      for (index_t t = t0; t < t1; ++t)
        for (int k = 0; k < groups; ++k) {
          const auto seg = Eigen::seqN(k * D_, D_);
          const auto dy = dnormed.row(t)(seg).array();
          math::group_unit(H.row(t)(seg).array(), ws.mean(t, k), ws.rstd(t, k), xh);
          dxh = dy * params.gn_weight(seg).transpose().array();  // dxh = dy w
          dw[std::size_t(c)].row(0)(seg).array() += dy * xh;
          db[std::size_t(c)].row(0)(seg) += dnormed.row(t)(seg);
          math::group_backward(dxh, xh, ws.rstd(t, k), math::mean_of(dxh.sum(), n), math::mean_of((dxh * xh).sum(), n),
                               dH.row(t)(seg).array());
        }
    });
    for (index_t c = 0; c < chunks; ++c) {
      grads.gn_weight += dw[std::size_t(c)].transpose();
      grads.gn_bias += db[std::size_t(c)].transpose();
    }
  }
}

}  // namespace vwn

// With VWN_EXTERN_COMPILED_SHAPES defined, the compiled shapes are instantiated once, where
// VWN_INSTANTIATE_SHAPE(m, n, Scalar) is written (<vwn/precompiled.hpp>), not in every translation unit.
#ifdef VWN_EXTERN_COMPILED_SHAPES
#define VWN_EXTERN_REDUCE_(m, n) \
  extern template class vwn::reduce_head<m, n, float>; \
  extern template class vwn::reduce_head<m, n, double>;
VWN_COMPILED_SHAPES(VWN_EXTERN_REDUCE_)
#undef VWN_EXTERN_REDUCE_
#endif
