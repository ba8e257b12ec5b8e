#pragma once
/// \file reduce.hpp
/// The head's reduce (paper eq. 4, Algorithm 1 line 14): `h = W_reduce GroupNorm(H_L)`, `W_reduce` of
/// `D x D'`, GroupNorm over `r = D'/D` groups of `D` contiguous values when `r` is an integer; without the
/// GroupNorm when `D' % D != 0` (fractional r, as the paper does at 1.5x); the identity when `n == m`.

#include <string>
#include <vector>

#include "config.hpp"
#include "detail/norm.hpp"
#include "detail/parallel.hpp"
#include "random.hpp"
#include "shape.hpp"

namespace vwn {

/// GroupNorm + linear reduce `D' -> D` of shape `(M, N)`.
template <int M, int N, class Scalar = float>
class reduce_head : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Whether there is anything to reduce (`D' != D`, i.e. `n != m`); otherwise forward is a copy.
  static constexpr bool has_reduce = N != M;
  /// Whether a GroupNorm (group size `D`) precedes the reduce (`n % m == 0` and `n != m`).
  static constexpr bool has_groupnorm = has_reduce && (N % M == 0);
  /// Number of GroupNorm groups, `r = n / m` (0 without GroupNorm).
  static constexpr int groups = has_groupnorm ? N / M : 0;

  /// Parameters (empty tensors where the configuration has none).
  struct parameters {
    vector<Scalar> gn_weight;  ///< `D'` GroupNorm scale (init 1), no weight decay
    vector<Scalar> gn_bias;    ///< `D'` GroupNorm shift (init 0), no weight decay
    matrix<Scalar> W_reduce;   ///< `D x D'` (init N(0, 1/D')), weight decay
    /// Visits `f(name, data, size, weight_decay)` for each present tensor.
    template <class F>
    void visit(F&& f) {
      if (gn_weight.size()) f("gn_weight", gn_weight.data(), index_t(gn_weight.size()), false);
      if (gn_bias.size()) f("gn_bias", gn_bias.data(), index_t(gn_bias.size()), false);
      if (W_reduce.size()) f("W_reduce", W_reduce.data(), index_t(W_reduce.size()), true);
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
  void forward(host_t, matrix_cref<Scalar> H, matrix_ref<Scalar> h, workspace& ws) const {
    const std::string where = name() + "::forward";
    const index_t T = detail::expect_tokens(where, "H", H, wide_width());
    detail::expect_shape(where, "h", h, T, D_);
    ws.tokens = T;
    if constexpr (!has_reduce) {
      h = H;
    } else if constexpr (!has_groupnorm) {
      detail::product(h, H, params.W_reduce.transpose());
    } else {
      ws.normed.resize(T, wide_width());
      ws.mean.resize(T, groups);
      ws.rstd.resize(T, groups);
      detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
        for (index_t t = t0; t < t1; ++t)
          for (int k = 0; k < groups; ++k) {
            const auto seg = Eigen::seqN(k * D_, D_);
            ws.rstd(t, k) = detail::group_forward(H.row(t)(seg), params.gn_weight(seg).transpose(),
                                                  params.gn_bias(seg).transpose(), ws.normed.row(t)(seg),
                                                  ws.mean(t, k));
          }
      });
      detail::product(h, ws.normed, params.W_reduce.transpose());
    }
  }

  /// `dH` (`T x D'`, overwritten) from `dh` (`T x D`); accumulates the parameter gradients.
  void backward(host_t, matrix_cref<Scalar> H, matrix_cref<Scalar> dh, matrix_ref<Scalar> dH, workspace& ws) {
    const std::string where = name() + "::backward";
    if (ws.tokens == 0) detail::fail(where, "workspace", "one filled by forward", "an empty workspace");
    const index_t T = ws.tokens;
    detail::expect_shape(where, "H", H, T, wide_width());
    detail::expect_shape(where, "dh", dh, T, D_);
    detail::expect_shape(where, "dH", dH, T, wide_width());
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
      detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
        for (index_t t = t0; t < t1; ++t)
          for (int k = 0; k < groups; ++k) {
            const auto seg = Eigen::seqN(k * D_, D_);
            detail::group_backward(H.row(t)(seg), ws.mean(t, k), ws.rstd(t, k), params.gn_weight(seg).transpose(),
                                   dnormed.row(t)(seg), dH.row(t)(seg), dw[std::size_t(c)].row(0)(seg),
                                   db[std::size_t(c)].row(0)(seg));
          }
      });
      for (index_t c = 0; c < chunks; ++c) {
        grads.gn_weight += dw[std::size_t(c)].transpose();
        grads.gn_bias += db[std::size_t(c)].transpose();
      }
    }
  }

 private:
  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

}  // namespace vwn
