#pragma once
/// \file ghc.hpp
/// Generalized Hyper-Connections (GHC, static) and Dynamic GHC (DGHC) on the host back end.
///
/// Per token the over-width state `H` is `n x db` (slot `j` = `H[j, :]`, contiguous), a batch is `T x (n db)`.
/// One sub-layer around a backbone function `T_l`:
///   width connection  `mix = a^T H` (`(m+n) x db`), `X = mix[0:m]` (the backbone input, length `D = m db`),
///                     `C = mix[m:m+n]` (the carried state);
///   backbone          `Z = T_l(X)` (length `D`, read as `m x db`);
///   depth connection  `H_out = b Z + C`.
/// Static GHC: `a = alpha` (`n x (m+n)`), `b = beta` (`n x m`). Dynamic GHC, per token:
///   `Hn = rmsnorm_rows(H) * g`, `P = tanh(Hn [W_alpha | W_beta] / sqrt(db))` (`n x (2m+n)`),
///   `a = S_alpha . P[:, :m+n] + alpha`, `b = S_beta . P[:, m+n:] + beta`.

#include <cmath>
#include <string>
#include <vector>

#include "config.hpp"
#include "detail/norm.hpp"
#include "random.hpp"
#include "shape.hpp"

namespace vwn {

/// Parameters (or their gradients) of a GHC sub-layer. The static part is always present; the dynamic
/// part only when `Dynamic`.
template <int M, int N, class Scalar, bool Dynamic>
struct ghc_parameters;

/// Parameters of a static GHC.
template <int M, int N, class Scalar>
struct ghc_parameters<M, N, Scalar, false> {
  fixed_matrix<Scalar, N, M + N> alpha;  ///< static A, `n x (m+n)`; columns `0..m-1` feed X, `m..m+n-1` feed C
  fixed_matrix<Scalar, N, M> beta;       ///< static B^T, `n x m`; `H_out = beta Z + C`

  /// Sets every entry to zero (used for gradients).
  void set_zero() {
    alpha.setZero();
    beta.setZero();
  }
  /// Visits `f(name, data, size, weight_decay)` for each tensor, in a fixed order.
  template <class F>
  void visit(F&& f) {
    f("alpha", alpha.data(), index_t(alpha.size()), false);
    f("beta", beta.data(), index_t(beta.size()), false);
  }
};

/// Parameters of a dynamic GHC: the static part plus the coefficient projection.
template <int M, int N, class Scalar>
struct ghc_parameters<M, N, Scalar, true> {
  fixed_matrix<Scalar, N, M + N> alpha;    ///< static A, `n x (m+n)`
  fixed_matrix<Scalar, N, M> beta;         ///< static B^T, `n x m`
  matrix<Scalar> W_alpha;                  ///< `db x (m+n)` projection for A (init 0)
  matrix<Scalar> W_beta;                   ///< `db x m` projection for B (init 0)
  fixed_matrix<Scalar, N, M + N> S_alpha;  ///< `n x (m+n)` scale of tanh part of A (init 1)
  fixed_matrix<Scalar, N, M> S_beta;       ///< `n x m` scale of tanh part of B (init 1)
  vector<Scalar> g;                        ///< `db` per-slot RMSNorm weight (init 1)

  /// Sets every entry to zero (used for gradients).
  void set_zero() {
    alpha.setZero();
    beta.setZero();
    W_alpha.setZero();
    W_beta.setZero();
    S_alpha.setZero();
    S_beta.setZero();
    g.setZero();
  }
  /// Visits `f(name, data, size, weight_decay)` for each tensor, in a fixed order. Weight decay applies
  /// to the dynamic projections and scales, never to the static matrices or the norm weight.
  template <class F>
  void visit(F&& f) {
    f("alpha", alpha.data(), index_t(alpha.size()), false);
    f("beta", beta.data(), index_t(beta.size()), false);
    f("W_alpha", W_alpha.data(), index_t(W_alpha.size()), true);
    f("W_beta", W_beta.data(), index_t(W_beta.size()), true);
    f("S_alpha", S_alpha.data(), index_t(S_alpha.size()), true);
    f("S_beta", S_beta.data(), index_t(S_beta.size()), true);
    f("g", g.data(), index_t(g.size()), false);
  }
};

/// Host-side saved state of one GHC sub-layer between its forward and backward calls. Sized by
/// `forward_width`; the static GHC keeps only the token count.
template <int M, int N, class Scalar, bool Dynamic>
struct ghc_workspace {
  index_t tokens = 0;               ///< T of the last forward_width
  vector<Scalar> rstd;            ///< dynamic: `T n` per-slot 1/rms
  matrix<Scalar> P;               ///< dynamic: `T n x (2m+n)` tanh outputs
  matrix<Scalar> dB;              ///< dynamic: `T n x m` gradient of each token's b (from backward_depth)
};

namespace detail {

// Small-matrix product dst = lhs * rhs: coefficient-based (unrolled over the fixed inner size) for small
// shapes, Eigen's blocked GEMM for large ones such as (8, 64).
template <bool Accumulate = false, class Dst, class Lhs, class Rhs>
void small_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  constexpr int inner = Lhs::ColsAtCompileTime;
  constexpr int rows = Lhs::RowsAtCompileTime;
  if constexpr (inner != Eigen::Dynamic && rows != Eigen::Dynamic && inner * rows <= 16 * 24) {
    // Row axpys: dst.row(c) (+)= sum_j lhs(c, j) rhs.row(j); each row stays in L1 while it accumulates.
    for (int c = 0; c < rows; ++c) {
      auto d = dst.row(c);
      if constexpr (Accumulate)
        d += lhs(c, 0) * rhs.row(0);
      else
        d = lhs(c, 0) * rhs.row(0);
      for (int j = 1; j < inner; ++j) d += lhs(c, j) * rhs.row(j);
    }
  } else {
    if constexpr (Accumulate)
      dst.noalias() += lhs * rhs;
    else
      dst.noalias() = lhs * rhs;
  }
}

// dst (+)= lhs * rhs^T where the result is a fixed small matrix and the inner size (db) is long:
// coefficient-based dot products of contiguous rows for small results.
template <bool Accumulate, class Dst, class Lhs, class Rhs>
void small_product_nt(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  constexpr int size = std::remove_reference_t<Dst>::SizeAtCompileTime;
  if constexpr (size != Eigen::Dynamic && size <= 16 * 24) {
    if constexpr (Accumulate)
      dst.noalias() += lhs.lazyProduct(rhs.transpose());
    else
      dst.noalias() = lhs.lazyProduct(rhs.transpose());
  } else {
    if constexpr (Accumulate)
      dst.noalias() += lhs * rhs.transpose();
    else
      dst.noalias() = lhs * rhs.transpose();
  }
}

}  // namespace detail

/// A Generalized Hyper-Connection sub-layer of compile-time shape `(M, N)`, static (`Dynamic = false`)
/// or dynamic (`Dynamic = true`), on the host back end. Use the aliases `vwn::ghc` and `vwn::dghc`.
///
/// Call order for one sub-layer, forward then backward:
/// ```
///   layer.forward_width(vwn::host, H, X, C, ws);     // H: T x D', X: T x D, C: T x D'
///   Z = backbone(X);                                 // Z: T x D
///   layer.forward_depth(vwn::host, Z, C, H_out, ws); // H_out: T x D'
///   layer.backward_depth(vwn::host, dH_out, Z, dZ, ws);  // dZ: T x D; gradient of C is dH_out itself
///   dX = backbone_backward(dZ);
///   layer.backward_width(vwn::host, H, dX, dH_out, dH, ws); // dH: T x D'
/// ```
/// Parameter gradients accumulate into `grads` (`zero_grad()` clears them), as in llm.c and PyTorch.
template <int M, int N, class Scalar, bool Dynamic>
class basic_ghc : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using shape = width_shape<M, N>;
  using scalar = Scalar;
  using parameters = ghc_parameters<M, N, Scalar, Dynamic>;
  using workspace = ghc_workspace<M, N, Scalar, Dynamic>;
  /// Per-token coefficient block `[a | b]`, `n x (2m+n)`.
  using coefficients = fixed_matrix<Scalar, N, 2 * M + N>;
  /// Whether the coefficients depend on the input (DGHC).
  static constexpr bool is_dynamic = Dynamic;

  parameters params;  ///< the parameters, initialised as in the paper (eq. 15, 16; dynamic part 0 / 1)
  parameters grads;   ///< accumulated gradients, same shapes

  /// A sub-layer for backbone width `D` (must be a positive multiple of `M`), initialised per the paper.
  explicit basic_ghc(index_t D) : widths<M, N>(name() + "::basic_ghc", D) {
    if constexpr (Dynamic) {
      for (parameters* p : {&params, &grads}) {
        p->W_alpha.resize(db_, M + N);
        p->W_beta.resize(db_, M);
        p->g.resize(db_);
      }
    }
    reset_parameters();
    zero_grad();
  }

  /// Library name with shape, e.g. "vwn::dghc<2,3>".
  static std::string name() {
    return std::string(Dynamic ? "vwn::dghc<" : "vwn::ghc<") + std::to_string(M) + "," + std::to_string(N) + ">";
  }

  /// Restores the paper's initialisation: alpha per eq. (16), beta per eq. (15); W = 0, S = 1, g = 1.
  void reset_parameters() {
    params.alpha.setZero();
    for (int j = 0; j < M; ++j) params.alpha(j, j) = params.alpha(j, M + j) = Scalar(1);
    for (int j = M; j < N; ++j) params.alpha(j, M + j) = Scalar(1);
    params.beta.setZero();
    for (int j = 0; j < N; ++j) params.beta(j, j % M) = Scalar(1);
    if constexpr (Dynamic) {
      params.W_alpha.setZero();
      params.W_beta.setZero();
      params.S_alpha.setOnes();
      params.S_beta.setOnes();
      params.g.setOnes();
    }
  }

  /// Clears the accumulated gradients.
  void zero_grad() { grads.set_zero(); }

  /// Width connection, forward: `H` (`T x D'`) -> `X` (`T x D`, backbone input) and `C` (`T x D'`, carried
  /// state). Saves what backward needs in `ws`.
  void forward_width(host_t, matrix_cref<Scalar> H, matrix_ref<Scalar> X, matrix_ref<Scalar> C, workspace& ws) const {
    const std::string where = name() + "::forward_width";
    const index_t T = detail::expect_tokens(where, "H", H, wide_width());
    detail::expect_shape(where, "X", X, T, D_);
    detail::expect_shape(where, "C", C, T, wide_width());
    detail::expect_no_alias(where, "X", X, "H", H);
    detail::expect_no_alias(where, "C", C, "H", H);
    detail::expect_no_alias(where, "C", C, "X", X);
    ws.tokens = T;
    if constexpr (Dynamic) {
      ws.rstd.resize(T * N);
      ws.P.resize(T * N, K);
      ws.dB.resize(T * N, M);
      const matrix<Scalar> WT = projection_transposed();  // (2m+n) x db
      const Scalar inv_tau = Scalar(1) / std::sqrt(Scalar(db_));
      detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
        slot_matrix hn(N, db_);
        for (index_t t = t0; t < t1; ++t) {
          const auto Ht = slots(H, t);
          for (int j = 0; j < N; ++j)
            ws.rstd(t * N + j) = detail::rms_row_forward(Ht.row(j), params.g.transpose(), hn.row(j));
          coefficients Pt;
          detail::small_product_nt<false>(Pt, hn, WT);
          Pt = (Pt * inv_tau).array().tanh().matrix();
          Eigen::Map<coefficients>(ws.P.data() + t * N * K) = Pt;
          const coefficients ab = combine(Pt);
          mix(ab, Ht, X, C, t);
        }
      });
    } else {
      const coefficients ab = static_coefficients();
      detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
        for (index_t t = t0; t < t1; ++t) mix(ab, slots(H, t), X, C, t);
      });
    }
  }

  /// Depth connection, forward: `H_out = b Z + C` per token, with `Z` (`T x D`) the backbone output.
  /// `H_out` may be `C` itself (in place); any other overlap is rejected.
  void forward_depth(host_t, matrix_cref<Scalar> Z, matrix_cref<Scalar> C, matrix_ref<Scalar> H_out,
                     const workspace& ws) const {
    const std::string where = name() + "::forward_depth";
    const index_t T = check_saved(where, ws, Z);
    detail::expect_shape(where, "C", C, T, wide_width());
    detail::expect_shape(where, "H_out", H_out, T, wide_width());
    detail::expect_no_alias(where, "H_out", H_out, "Z", Z);
    const bool in_place = H_out.data() == C.data() && H_out.outerStride() == C.outerStride();
    if (!in_place) detail::expect_no_alias(where, "H_out", H_out, "C (other than exactly in place)", C);
    detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
      for (index_t t = t0; t < t1; ++t) {
        const coefficients ab = token_coefficients(ws, t);
        auto Ho = slots(H_out, t);
        if (in_place) {
          detail::small_product<true>(Ho, ab.template rightCols<M>(), segments(Z, t));
        } else {
          detail::small_product(Ho, ab.template rightCols<M>(), segments(Z, t));
          Ho += slots(C, t);
        }
      }
    });
  }

  /// Depth connection, backward: from `dH_out` (`T x D'`) and the saved backbone output `Z`, writes `dZ`
  /// (`T x D`) and accumulates the gradient of `beta` (static) or keeps the gradient of each token's `b`
  /// in `ws` for `backward_width` (dynamic). The gradient of `C` equals `dH_out`.
  void backward_depth(host_t, matrix_cref<Scalar> dH_out, matrix_cref<Scalar> Z, matrix_ref<Scalar> dZ,
                      workspace& ws) {
    const std::string where = name() + "::backward_depth";
    const index_t T = check_saved(where, ws, Z);
    detail::expect_shape(where, "dH_out", dH_out, T, wide_width());
    detail::expect_shape(where, "dZ", dZ, T, D_);
    detail::expect_no_alias(where, "dZ", dZ, "dH_out", dH_out);
    detail::expect_no_alias(where, "dZ", dZ, "Z", Z);
    const index_t chunks = detail::chunk_count(T);
    std::vector<fixed_matrix<Scalar, N, M>> partial(static_cast<std::size_t>(chunks),
                                                    fixed_matrix<Scalar, N, M>::Zero());
    detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
      for (index_t t = t0; t < t1; ++t) {
        const coefficients ab = token_coefficients(ws, t);
        const auto dHo = slots(dH_out, t);
        const auto Zt = segments(Z, t);
        auto dZt = segments(dZ, t);
        detail::small_product(dZt, ab.template rightCols<M>().transpose(), dHo);
        if constexpr (Dynamic) {
          Eigen::Map<fixed_matrix<Scalar, N, M>> dbt(ws.dB.data() + t * N * M);
          detail::small_product_nt<false>(dbt, dHo, Zt);
        } else {
          detail::small_product_nt<true>(partial[std::size_t(c)], dHo, Zt);
        }
      }
    });
    if constexpr (!Dynamic)
      for (const auto& p : partial) grads.beta += p;
  }

  /// Width connection, backward: from `dX` (`T x D`) and the total gradient `dC` of the carried state
  /// (`T x D'`, normally `dH_out` of the depth connection plus any other use of C), writes `dH`
  /// (`T x D'`, overwritten) and accumulates every parameter gradient. For DGHC this includes the path
  /// through the coefficients (tanh, projection, RMSNorm) back into `H`.
  void backward_width(host_t, matrix_cref<Scalar> H, matrix_cref<Scalar> dX, matrix_cref<Scalar> dC,
                      matrix_ref<Scalar> dH, workspace& ws) {
    const std::string where = name() + "::backward_width";
    const index_t T = check_saved(where, ws, dX);
    detail::expect_shape(where, "H", H, T, wide_width());
    detail::expect_shape(where, "dC", dC, T, wide_width());
    detail::expect_shape(where, "dH", dH, T, wide_width());
    detail::expect_no_alias(where, "dH", dH, "H", H);
    detail::expect_no_alias(where, "dH", dH, "dX", dX);
    detail::expect_no_alias(where, "dH", dH, "dC", dC);
    const index_t chunks = detail::chunk_count(T);
    struct partial_grads {
      coefficients d_static = coefficients::Zero();  // [dalpha | dbeta]
      coefficients d_scale = coefficients::Zero();   // [dS_alpha | dS_beta]
      matrix<Scalar> dWT;                            // (2m+n) x db
      matrix<Scalar> dg;                             // 1 x db
    };
    std::vector<partial_grads> partial(static_cast<std::size_t>(chunks));
    matrix<Scalar> WT;
    coefficients scale;
    if constexpr (Dynamic) {
      WT = projection_transposed();
      scale << params.S_alpha, params.S_beta;
    }
    const Scalar inv_tau = Scalar(1) / std::sqrt(Scalar(db_));
    detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
      partial_grads& pg = partial[std::size_t(c)];
      slot_matrix hn, dhn;
      if constexpr (Dynamic) {
        pg.dWT.setZero(K, db_);
        pg.dg.setZero(1, db_);
        hn.resize(N, db_);
        dhn.resize(N, db_);
      }
      for (index_t t = t0; t < t1; ++t) {
        const coefficients ab = token_coefficients(ws, t);
        const auto Ht = slots(H, t);
        const auto dXt = segments(dX, t);
        const auto dCt = slots(dC, t);
        auto dHt = slots(dH, t);
        // Through the mixing: dH = a [dX; dC], da = H [dX; dC]^T.
        detail::small_product(dHt, ab.template leftCols<M>(), dXt);
        detail::small_product<true>(dHt, ab.template middleCols<N>(M), dCt);
        fixed_matrix<Scalar, N, M + N> da;
        detail::small_product_nt<false>(da.template leftCols<M>(), Ht, dXt);
        detail::small_product_nt<false>(da.template rightCols<N>(), Ht, dCt);
        if constexpr (Dynamic) {
          coefficients dab;
          dab << da, Eigen::Map<const fixed_matrix<Scalar, N, M>>(ws.dB.data() + t * N * M);
          const Eigen::Map<const coefficients> Pt(ws.P.data() + t * N * K);
          pg.d_static += dab;
          pg.d_scale += dab.cwiseProduct(Pt);
          // Through tanh and the 1/tau scale: dQ = dab . S . (1 - P^2) / tau.
          const coefficients dQ =
              (dab.array() * scale.array() * (Scalar(1) - Pt.array().square()) * inv_tau).matrix();
          // Recompute the normalised slots, then dW^T += dQ^T hn and dhn = dQ W^T.
          for (int j = 0; j < N; ++j) hn.row(j) = Ht.row(j) * ws.rstd(t * N + j);  // u = x r (no g yet)
          for (int j = 0; j < N; ++j) hn.row(j) = hn.row(j).cwiseProduct(params.g.transpose());
          pg.dWT.noalias() += dQ.transpose() * hn;
          detail::small_product(dhn, dQ, WT);
          for (int j = 0; j < N; ++j)
            detail::rms_row_backward(Ht.row(j), ws.rstd(t * N + j), params.g.transpose(), dhn.row(j), dHt.row(j),
                                     pg.dg);
        } else {
          pg.d_static.template leftCols<M + N>() += da;
        }
      }
    });
    for (const partial_grads& pg : partial) {
      grads.alpha += pg.d_static.template leftCols<M + N>();
      if constexpr (Dynamic) {
        grads.beta += pg.d_static.template rightCols<M>();
        grads.S_alpha += pg.d_scale.template leftCols<M + N>();
        grads.S_beta += pg.d_scale.template rightCols<M>();
        grads.W_alpha += pg.dWT.topRows(M + N).transpose();
        grads.W_beta += pg.dWT.bottomRows(M).transpose();
        grads.g += pg.dg.transpose();
      }
    }
  }

  /// The coefficients `[a | b]` (`n x (2m+n)`) the last forward used for token `t` (for inspection/tests).
  coefficients token_coefficients(const workspace& ws, index_t t) const {
    if constexpr (Dynamic)
      return combine(Eigen::Map<const coefficients>(ws.P.data() + t * N * K));
    else
      return static_coefficients();
  }

 private:
  static constexpr int K = 2 * M + N;
  using slot_matrix = Eigen::Matrix<Scalar, N, Eigen::Dynamic, Eigen::RowMajor>;
  using segment_matrix = Eigen::Matrix<Scalar, M, Eigen::Dynamic, Eigen::RowMajor>;

  // Token t of a T x (n db) batch as an n x db matrix (and T x (m db) as m x db).
  template <class Ref>
  auto slots(Ref& a, index_t t) const {
    using Map = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(a.data())>>,
                                   Eigen::Map<const slot_matrix>, Eigen::Map<slot_matrix>>;
    return Map(detail::row_ptr(a, t), N, db_);
  }
  template <class Ref>
  auto segments(Ref& a, index_t t) const {
    using Map = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(a.data())>>,
                                   Eigen::Map<const segment_matrix>, Eigen::Map<segment_matrix>>;
    return Map(detail::row_ptr(a, t), M, db_);
  }

  coefficients static_coefficients() const {
    coefficients ab;
    ab << params.alpha, params.beta;
    return ab;
  }

  // [a | b] = S . P + [alpha | beta]
  template <class P>
  coefficients combine(const P& Pt) const {
    coefficients ab;
    if constexpr (Dynamic) {
      ab << params.S_alpha, params.S_beta;
      ab = ab.cwiseProduct(Pt) + static_coefficients();
    } else {
      ab = static_coefficients();
    }
    return ab;
  }

  // [W_alpha | W_beta]^T, (2m+n) x db.
  matrix<Scalar> projection_transposed() const {
    matrix<Scalar> WT(K, db_);
    if constexpr (Dynamic) {
      WT.topRows(M + N) = params.W_alpha.transpose();
      WT.bottomRows(M) = params.W_beta.transpose();
    }
    return WT;
  }

  // X_t = a[:, :m]^T H_t, C_t = a[:, m:m+n]^T H_t.
  template <class Ht>
  void mix(const coefficients& ab, const Ht& H_t, matrix_ref<Scalar>& X, matrix_ref<Scalar>& C, index_t t) const {
    auto Xt = segments(X, t);
    auto Ct = slots(C, t);
    detail::small_product(Xt, ab.template leftCols<M>().transpose(), H_t);
    detail::small_product(Ct, ab.template middleCols<N>(M).transpose(), H_t);
  }

  template <class A>
  index_t check_saved(const std::string& where, const workspace& ws, const A& a) const {
    if (ws.tokens == 0) detail::fail(where, "workspace", "one filled by forward_width", "an empty workspace");
    detail::expect_shape(where, "backbone-width argument", a, ws.tokens, D_);
    return ws.tokens;
  }

  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

/// Static Generalized Hyper-Connection of shape `(M, N)`: `ghc<2, 3>` widens by 1.5x.
template <int M, int N, class Scalar = float>
using ghc = basic_ghc<M, N, Scalar, false>;

/// Dynamic Generalized Hyper-Connection of shape `(M, N)`.
template <int M, int N, class Scalar = float>
using dghc = basic_ghc<M, N, Scalar, true>;

/// Hyper-Connections (expansion rate `N`, `m = 1`), static.
template <int N, class Scalar = float>
using hyper_connection = ghc<1, N, Scalar>;
/// Hyper-Connections, dynamic.
template <int N, class Scalar = float>
using dynamic_hyper_connection = dghc<1, N, Scalar>;
/// Frac-Connections (`n = m = M`), static.
template <int M, class Scalar = float>
using frac_connection = ghc<M, M, Scalar>;
/// Frac-Connections, dynamic.
template <int M, class Scalar = float>
using dynamic_frac_connection = dghc<M, M, Scalar>;

}  // namespace vwn
