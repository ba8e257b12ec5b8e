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
/// The per-token formulas are those of <vwn/math/ghc.hpp> and <vwn/math/norm.hpp>, shared with the CUDA back end;
/// this file holds the host's loops over tokens, its reductions and its argument checks.

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "core/checks.hpp"
#include "core/config.hpp"
#include "core/connection.hpp"
#include "core/random.hpp"
#include "core/shape.hpp"
#include "core/shapes.hpp"
#include "core/tensors.hpp"
#include "detail/parallel.hpp"
#include "detail/rows.hpp"
#include "math/ghc.hpp"
#include "math/norm.hpp"

namespace vwn {

/// The parameter tensors of a GHC sub-layer of shape `(M, N)` and block width `db`, in visit order: `alpha`
/// (`n x (m+n)`), `beta` (`n x m`), and for DGHC `W_alpha` (`db x (m+n)`), `W_beta` (`db x m`), `S_alpha`,
/// `S_beta` and `g` (`db`). Weight decay applies to the dynamic projections and scales, never to the static
/// matrices or the norm weight. Both back ends name and lay out their tensors from this list.
template <int M, int N, bool Dynamic>
constexpr auto ghc_tensors(index_t db) {
  constexpr int count = Dynamic ? 7 : 2;
  const tensor_spec all[7] = {{"alpha", N, M + N, false},   {"beta", N, M, false},    {"W_alpha", db, M + N, true},
                              {"W_beta", db, M, true},      {"S_alpha", N, M + N, true}, {"S_beta", N, M, true},
                              {"g", db, 1, false}};
  std::array<tensor_spec, count> out{};
  for (int i = 0; i < count; ++i) out[std::size_t(i)] = all[i];
  return out;
}

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
  /// Visits `f(name, data, size, weight_decay)` for each tensor of `ghc_tensors`, in that order.
  template <class F>
  void visit(F&& f) {
    Scalar* data[2] = {alpha.data(), beta.data()};
    int i = 0;
    for (const tensor_spec& t : ghc_tensors<M, N, false>(0)) f(t.name, data[i++], t.size(), t.decay);
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
  /// Visits `f(name, data, size, weight_decay)` for each tensor of `ghc_tensors`, in that order.
  template <class F>
  void visit(F&& f) {
    Scalar* data[7] = {alpha.data(), beta.data(), W_alpha.data(), W_beta.data(), S_alpha.data(), S_beta.data(), g.data()};
    int i = 0;
    for (const tensor_spec& t : ghc_tensors<M, N, true>(g.size())) f(t.name, data[i++], t.size(), t.decay);
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

/// The argument checks of a GHC sub-layer of shape `(M, N)`, backbone width `D`, over-width `Dw`, shared by the
/// host and device classes (views of either kind). Each throws std::invalid_argument before anything is written.
struct ghc_checks {
  std::string_view where;
  index_t D, Dw;

  /// `H` (`T x D'`) -> `X` (`T x D`), `C` (`T x D'`), no overlaps; returns `T`.
  template <class HV, class XV, class CV>
  index_t forward_width(const HV& H, const XV& X, const CV& C) const {
    const index_t T = expect_tokens(where, "H", H, Dw);
    expect_shape(where, "X", X, T, D);
    expect_shape(where, "C", C, T, Dw);
    expect_no_alias(where, "X", X, "H", H);
    expect_no_alias(where, "C", C, "H", H);
    expect_no_alias(where, "C", C, "X", X);
    return T;
  }
  /// `Z`, `C` -> `H_out` for the `T` tokens of the saved state; `H_out` may be exactly `C` (returns whether it is).
  template <class ZV, class CV, class OV>
  bool forward_depth(index_t T, const ZV& Z, const CV& C, const OV& H_out) const {
    saved(T, Z);
    expect_shape(where, "C", C, T, Dw);
    expect_shape(where, "H_out", H_out, T, Dw);
    expect_no_alias(where, "H_out", H_out, "Z", Z);
    const bool in_place = same_view(H_out, C);
    if (!in_place) expect_no_alias(where, "H_out", H_out, "C (other than exactly in place)", C);
    return in_place;
  }
  /// `dH_out`, `Z` -> `dZ`.
  template <class GV, class ZV, class DZV>
  void backward_depth(index_t T, const GV& dH_out, const ZV& Z, const DZV& dZ) const {
    saved(T, Z);
    expect_shape(where, "dH_out", dH_out, T, Dw);
    expect_shape(where, "dZ", dZ, T, D);
    expect_no_alias(where, "dZ", dZ, "dH_out", dH_out);
    expect_no_alias(where, "dZ", dZ, "Z", Z);
  }
  /// `H`, `dX`, `dC` -> `dH`.
  template <class HV, class XV, class CV, class DHV>
  void backward_width(index_t T, const HV& H, const XV& dX, const CV& dC, const DHV& dH) const {
    saved(T, dX);
    expect_shape(where, "H", H, T, Dw);
    expect_shape(where, "dC", dC, T, Dw);
    expect_shape(where, "dH", dH, T, Dw);
    expect_no_alias(where, "dH", dH, "H", H);
    expect_no_alias(where, "dH", dH, "dX", dX);
    expect_no_alias(where, "dH", dH, "dC", dC);
  }
  /// A saved state of `T` tokens from `forward_width`, and a backbone-width argument of `T` rows.
  template <class A>
  void saved(index_t T, const A& a) const {
    if (T == 0) fail(where, "workspace", "one filled by forward_width", "an empty workspace");
    expect_shape(where, "backbone-width argument", a, T, D);
  }
};

/// Whether the host evaluates the token products of shape `(M, N)` as Eigen GEMMs: for coefficient blocks of
/// more than 384 entries ((8,32), (8,64)) one blocked product beats `m+n` rows of `n` vectorised axpys. Below
/// that, the host calls the math layer's weighted sums directly. Both compute the same contraction.
template <int M, int N>
inline constexpr bool ghc_uses_gemm = N * (M + N) > 16 * 24;

// Register tiles of `small_product_nt`: `RA x CB` dot products of rows of `l` with rows of `r`, over `n` values,
// every loaded vector used `CB` (or `RA`) times. Sums are formed per vector lane and then across lanes, in an order
// that depends only on `n` and the vector width of the build.
template <int RA, int CB, class Scalar>
void dot_tile(const Scalar* const* l, const Scalar* const* r, index_t n, Scalar (&out)[RA][CB]) {
  namespace ei = Eigen::internal;
  using packet = typename ei::packet_traits<Scalar>::type;
  constexpr index_t lanes = ei::packet_traits<Scalar>::size;
  packet acc[RA][CB];
  for (int a = 0; a < RA; ++a)
    for (int b = 0; b < CB; ++b) acc[a][b] = ei::pset1<packet>(Scalar(0));
  index_t d = 0;
  for (; d + lanes <= n; d += lanes) {
    packet lv[RA], rv[CB];
    for (int a = 0; a < RA; ++a) lv[a] = ei::ploadu<packet>(l[a] + d);
    for (int b = 0; b < CB; ++b) rv[b] = ei::ploadu<packet>(r[b] + d);
    for (int a = 0; a < RA; ++a)
      for (int b = 0; b < CB; ++b) acc[a][b] = ei::pmadd(lv[a], rv[b], acc[a][b]);
  }
  for (int a = 0; a < RA; ++a)
    for (int b = 0; b < CB; ++b) {
      Scalar v = ei::predux(acc[a][b]);
      for (index_t e = d; e < n; ++e) v += l[a][e] * r[b][e];
      out[a][b] = v;
    }
}

#ifdef EIGEN_VECTORIZE_AVX512
inline constexpr int dot_tile_rows = 4, dot_tile_cols = 3;  // 12 accumulators + 7 operands of 32 registers
#else
inline constexpr int dot_tile_rows = 3, dot_tile_cols = 2;  // 6 + 5 of 16
#endif

template <int RA, int CB, bool Accumulate, class Dst, class Scalar>
void dot_block(Dst& dst, int i0, int j0, const Scalar* const* l, const Scalar* const* r, index_t n) {
  Scalar out[RA][CB];
  dot_tile<RA, CB>(l + i0, r + j0, n, out);
  for (int a = 0; a < RA; ++a)
    for (int b = 0; b < CB; ++b) {
      if constexpr (Accumulate)
        dst(i0 + a, j0 + b) += out[a][b];
      else
        dst(i0 + a, j0 + b) = out[a][b];
    }
}

template <int RA, bool Accumulate, class Dst, class Scalar>
void dot_row_block(Dst& dst, int i0, int j0, int cb, const Scalar* const* l, const Scalar* const* r, index_t n) {
  switch (cb) {
    case 1: return dot_block<RA, 1, Accumulate>(dst, i0, j0, l, r, n);
    case 2: return dot_block<RA, 2, Accumulate>(dst, i0, j0, l, r, n);
    default: return dot_block<RA, 3, Accumulate>(dst, i0, j0, l, r, n);
  }
}

// dst (+)= lhs * rhs^T where the result is a fixed small matrix and the inner size (db) is long: register-tiled
// dot products of contiguous rows (a reduction over the slot width), each row of lhs and rhs read once per tile.
// Larger results go to Eigen's product.
template <bool Accumulate, class Dst, class Lhs, class Rhs>
void small_product_nt(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  using D = std::remove_reference_t<Dst>;
  constexpr int R = D::RowsAtCompileTime, C = D::ColsAtCompileTime;
  if constexpr (R != Eigen::Dynamic && C != Eigen::Dynamic && R * C <= 16 * 24) {
    using Scalar = typename D::Scalar;
    const index_t n = lhs.cols();
    const Scalar* l[R];
    const Scalar* r[C];
    static_assert(Lhs::IsRowMajor && Rhs::IsRowMajor, "small_product_nt: rows of values stored contiguously");
    for (int a = 0; a < R; ++a) l[a] = lhs.data() + index_t(a) * lhs.outerStride();
    for (int b = 0; b < C; ++b) r[b] = rhs.data() + index_t(b) * rhs.outerStride();
    for (int i0 = 0; i0 < R; i0 += dot_tile_rows) {
      const int ra = std::min(dot_tile_rows, R - i0);
      for (int j0 = 0; j0 < C; j0 += dot_tile_cols) {
        const int cb = std::min(dot_tile_cols, C - j0);
        switch (ra) {
          case 1: dot_row_block<1, Accumulate>(dst, i0, j0, cb, l, r, n); break;
          case 2: dot_row_block<2, Accumulate>(dst, i0, j0, cb, l, r, n); break;
          case 3: dot_row_block<3, Accumulate>(dst, i0, j0, cb, l, r, n); break;
          default: dot_row_block<4, Accumulate>(dst, i0, j0, cb, l, r, n); break;
        }
      }
    }
  } else {
    if constexpr (Accumulate)
      dst.noalias() += lhs * rhs.transpose();
    else
      dst.noalias() = lhs * rhs.transpose();
  }
}

/// The per-token width and depth connections of shape `(M, N)` given a token's coefficients `[a | b]`, on rows of
/// `db` values: the host loops every connection family shares (`basic_ghc` of each family calls them).
template <int M, int N, class Scalar>
struct ghc_token_ops {
  using coefficients = fixed_matrix<Scalar, N, 2 * M + N>;
  using slot_matrix = Eigen::Matrix<Scalar, N, Eigen::Dynamic, Eigen::RowMajor>;
  using segment_matrix = Eigen::Matrix<Scalar, M, Eigen::Dynamic, Eigen::RowMajor>;
  index_t db;

  // Token t of a T x (n db) batch as an n x db matrix (and T x (m db) as m x db).
  template <class Ref>
  auto slots(Ref& a, index_t t) const {
    using Map = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(a.data())>>,
                                   Eigen::Map<const slot_matrix>, Eigen::Map<slot_matrix>>;
    return Map(row_ptr(a, t), N, db);
  }
  template <class Ref>
  auto segments(Ref& a, index_t t) const {
    using Map = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(a.data())>>,
                                   Eigen::Map<const segment_matrix>, Eigen::Map<segment_matrix>>;
    return Map(row_ptr(a, t), M, db);
  }

  /// X_t = a[:, :m]^T H_t, C_t = a[:, m:m+n]^T H_t.
  void mix(const coefficients& ab, const matrix_cref<Scalar>& H, matrix_ref<Scalar>& X, matrix_ref<Scalar>& C,
           index_t t) const {
    if constexpr (ghc_uses_gemm<M, N>) {
      const auto Ht = slots(H, t);
      segments(X, t).noalias() = ab.template leftCols<M>().transpose() * Ht;
      slots(C, t).noalias() = ab.template middleCols<N>(M).transpose() * Ht;
    } else {
      math::mix_width<M, N>(entries<coefficients>{ab}, rows<const Scalar>{row_ptr(H, t), db},
                            rows<Scalar>{row_ptr(X, t), db}, rows<Scalar>{row_ptr(C, t), db});
    }
  }

  /// H_out_t = b Z_t + C_t (`acc` a row of `db` values for the in-place case).
  void depth(const coefficients& ab, const matrix_cref<Scalar>& Z, const matrix_cref<Scalar>& C,
             matrix_ref<Scalar>& H_out, index_t t, bool in_place, row_array<Scalar>& acc) const {
    if constexpr (ghc_uses_gemm<M, N>) {
      auto Ho = slots(H_out, t);
      if (in_place) {
        const slot_matrix bz = ab.template rightCols<M>() * segments(Z, t);
        Ho += bz;
      } else {
        Ho.noalias() = ab.template rightCols<M>() * segments(Z, t);
        Ho += slots(C, t);
      }
    } else {
      const rows<const Scalar> z{row_ptr(Z, t), db}, c{row_ptr(C, t), db};
      const rows<Scalar> out{row_ptr(H_out, t), db};
      const auto b = [&](int j, int k) { return ab(j, M + N + k); };  // b = ab[:, m+n:]
      for (int j = 0; j < N; ++j) {
        if (in_place)
          math::depth_slot<M>(b, j, z, c(j), acc, out(j));
        else
          math::depth_slot<M>(b, j, z, c(j), out(j), out(j));
      }
    }
  }

  /// dZ_t = b^T dH_out_t.
  void depth_backward(const coefficients& ab, const matrix_cref<Scalar>& dH_out, matrix_ref<Scalar>& dZ,
                      index_t t) const {
    if constexpr (ghc_uses_gemm<M, N>) {
      segments(dZ, t).noalias() = ab.template rightCols<M>().transpose() * slots(dH_out, t);
    } else {
      const auto b = [&](int j, int k) { return ab(j, M + N + k); };
      math::depth_backward<M, N>(b, rows<const Scalar>{row_ptr(dH_out, t), db}, rows<Scalar>{row_ptr(dZ, t), db});
    }
  }

  /// Through the mixing: dH_t = a [dX_t; dC_t] into `dHt` (`n x db`), and d a = H_t [dX_t; dC_t]^T into `da`.
  void mix_backward(const coefficients& ab, const matrix_cref<Scalar>& H, const matrix_cref<Scalar>& dX,
                    const matrix_cref<Scalar>& dC, index_t t, slot_matrix& dHt,
                    fixed_matrix<Scalar, N, M + N>& da) const {
    const auto Ht = slots(H, t);
    const auto dXt = segments(dX, t);
    const auto dCt = slots(dC, t);
    if constexpr (ghc_uses_gemm<M, N>) {
      dHt.noalias() = ab.template leftCols<M>() * dXt;
      dHt.noalias() += ab.template middleCols<N>(M) * dCt;
    } else {
      const rows<const Scalar> dx{row_ptr(dX, t), db}, dc{row_ptr(dC, t), db};
      const auto dmix = [&](int i) { return i < M ? dx(i) : dc(i - M); };
      const rows<Scalar> dh{dHt.data(), db};
      for (int j = 0; j < N; ++j) math::mix_width_backward<M, N>(entries<coefficients>{ab}, j, dmix, dh(j));
    }
    small_product_nt<false>(da.template leftCols<M>(), Ht, dXt);
    small_product_nt<false>(da.template rightCols<N>(), Ht, dCt);
  }
};

}  // namespace detail

template <int M, int N, class Scalar, bool Dynamic, class Connection = vwn_connection>
class basic_ghc;

/// A Generalized Hyper-Connection sub-layer of compile-time shape `(M, N)`, static (`Dynamic = false`)
/// or dynamic (`Dynamic = true`), on the host back end, with the VWN paper's coefficients (`vwn_connection`; the
/// manifold-constrained families are the specialisations of <vwn/mhc.hpp>). Use the aliases `vwn::ghc` and `vwn::dghc`.
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
template <int M, int N, class Scalar, bool Dynamic, class Connection>
class basic_ghc : public widths<M, N> {
  static_assert(std::is_same_v<Connection, vwn_connection>, "vwn::basic_ghc: the manifold families are in <vwn/mhc.hpp>");
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using shape = width_shape<M, N>;
  using scalar = Scalar;
  /// The connection family (`vwn_connection`).
  using connection = Connection;
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
  void forward_width(host_t, matrix_cref<Scalar> H, matrix_ref<Scalar> X, matrix_ref<Scalar> C, workspace& ws) const;

  /// Depth connection, forward: `H_out = b Z + C` per token, with `Z` (`T x D`) the backbone output.
  /// `H_out` may be `C` itself (in place); any other overlap is rejected.
  void forward_depth(host_t, matrix_cref<Scalar> Z, matrix_cref<Scalar> C, matrix_ref<Scalar> H_out,
                     const workspace& ws) const;

  /// Depth connection, backward: from `dH_out` (`T x D'`) and the saved backbone output `Z`, writes `dZ`
  /// (`T x D`) and accumulates the gradient of `beta` (static) or keeps the gradient of each token's `b`
  /// in `ws` for `backward_width` (dynamic). The gradient of `C` equals `dH_out`.
  void backward_depth(host_t, matrix_cref<Scalar> dH_out, matrix_cref<Scalar> Z, matrix_ref<Scalar> dZ,
                      workspace& ws);

  /// Width connection, backward: from `dX` (`T x D`) and the total gradient `dC` of the carried state
  /// (`T x D'`, normally `dH_out` of the depth connection plus any other use of C), writes `dH`
  /// (`T x D'`, overwritten) and accumulates every parameter gradient. For DGHC this includes the path
  /// through the coefficients (tanh, projection, RMSNorm) back into `H`.
  void backward_width(host_t, matrix_cref<Scalar> H, matrix_cref<Scalar> dX, matrix_cref<Scalar> dC,
                      matrix_ref<Scalar> dH, workspace& ws);

  /// The coefficients `[a | b]` (`n x (2m+n)`) the last forward used for token `t` (for inspection/tests).
  coefficients token_coefficients(const workspace& ws, index_t t) const;

 private:
  static constexpr int K = 2 * M + N;
  using slot_matrix = Eigen::Matrix<Scalar, N, Eigen::Dynamic, Eigen::RowMajor>;
  using segment_matrix = Eigen::Matrix<Scalar, M, Eigen::Dynamic, Eigen::RowMajor>;

  detail::ghc_checks checks(const std::string& where) const { return {where, D_, wide_width()}; }

  // Token t of a T x (n db) batch as an n x db matrix (and T x (m db) as m x db).
  template <class Ref>
  auto slots(Ref& a, index_t t) const {
    return ops().slots(a, t);
  }
  template <class Ref>
  auto segments(Ref& a, index_t t) const {
    return ops().segments(a, t);
  }

  // [alpha | beta]
  coefficients static_coefficients() const {
    coefficients ab;
    ab << params.alpha, params.beta;
    return ab;
  }
  // [S_alpha | S_beta]
  coefficients scales() const {
    coefficients s;
    if constexpr (Dynamic) s << params.S_alpha, params.S_beta;
    return s;
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
  void mix(const coefficients& ab, const matrix_cref<Scalar>& H, matrix_ref<Scalar>& X, matrix_ref<Scalar>& C,
           index_t t) const {
    ops().mix(ab, H, X, C, t);
  }
  detail::ghc_token_ops<M, N, Scalar> ops() const { return {db_}; }

  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

template <int M, int N, class Scalar, bool Dynamic, class Connection>
void basic_ghc<M, N, Scalar, Dynamic, Connection>::forward_width(host_t, matrix_cref<Scalar> H, matrix_ref<Scalar> X, matrix_ref<Scalar> C, workspace& ws) const {
  const std::string where = name() + "::forward_width";
  const index_t T = checks(where).forward_width(H, X, C);
  if constexpr (Dynamic) {
    ws.rstd.resize(T * N);
    ws.P.resize(T * N, K);
    ws.dB.resize(T * N, M);
  }
  ws.tokens = T;
  if constexpr (Dynamic) {
    // The norm's weight folded into the projection (math::folded_weight), so that a slot's projection comes from
    // its raw values in the same sweep that finds its RMS: Q_j = r_j (H_j gw), without writing the normalised slot.
    const matrix<Scalar> WT = projection_transposed();  // (2m+n) x db
    matrix<Scalar> gw(K, db_);
    for (int k = 0; k < K; ++k) math::folded_weight(params.g.transpose().array(), WT.row(k).array(), gw.row(k).array());
    const Scalar inv_tau = math::inverse_tau(Scalar(db_));
    const coefficients scale = scales(), stat = static_coefficients();
    detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
      for (index_t t = t0; t < t1; ++t) {
        const auto Ht = slots(H, t);
        coefficients Pt;
        detail::small_product_nt<false>(Pt, Ht, gw);  // sum_d H_j(d) gw(d, k), a reduction over the slot width
        for (int j = 0; j < N; ++j) {
          const Scalar r = math::inverse_rms(Ht.row(j).squaredNorm(), Scalar(db_));
          ws.rstd(t * N + j) = r;
          math::projection_from_raw(Pt.row(j).array(), r, Pt.row(j).array());
        }
        math::projection(Pt.array(), inv_tau, Pt.array());
        Eigen::Map<coefficients>(ws.P.data() + t * N * K) = Pt;
        coefficients ab;
        math::coefficients(scale.array(), Pt.array(), stat.array(), ab.array());
        mix(ab, H, X, C, t);
      }
    });
  } else {
    const coefficients ab = static_coefficients();
    detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
      for (index_t t = t0; t < t1; ++t) mix(ab, H, X, C, t);
    });
  }
}

template <int M, int N, class Scalar, bool Dynamic, class Connection>
void basic_ghc<M, N, Scalar, Dynamic, Connection>::forward_depth(host_t, matrix_cref<Scalar> Z, matrix_cref<Scalar> C, matrix_ref<Scalar> H_out,
                     const workspace& ws) const {
  const std::string where = name() + "::forward_depth";
  const bool in_place = checks(where).forward_depth(ws.tokens, Z, C, H_out);
  const index_t T = ws.tokens;
  detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
    detail::row_array<Scalar> acc(db_);  // the sum b Z of one slot, when H_out is C
    for (index_t t = t0; t < t1; ++t) ops().depth(token_coefficients(ws, t), Z, C, H_out, t, in_place, acc);
  });
}

template <int M, int N, class Scalar, bool Dynamic, class Connection>
void basic_ghc<M, N, Scalar, Dynamic, Connection>::backward_depth(host_t, matrix_cref<Scalar> dH_out, matrix_cref<Scalar> Z, matrix_ref<Scalar> dZ,
                      workspace& ws) {
  const std::string where = name() + "::backward_depth";
  checks(where).backward_depth(ws.tokens, dH_out, Z, dZ);
  const index_t T = ws.tokens;
  const index_t chunks = detail::chunk_count(T);
  std::vector<fixed_matrix<Scalar, N, M>> partial(static_cast<std::size_t>(chunks),
                                                  fixed_matrix<Scalar, N, M>::Zero());
  detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; ++t) {
      const auto dHo = slots(dH_out, t);
      const auto Zt = segments(Z, t);
      ops().depth_backward(token_coefficients(ws, t), dH_out, dZ, t);
      // d b = dH_out Z^T, a reduction over the slot width.
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

template <int M, int N, class Scalar, bool Dynamic, class Connection>
void basic_ghc<M, N, Scalar, Dynamic, Connection>::backward_width(host_t, matrix_cref<Scalar> H, matrix_cref<Scalar> dX, matrix_cref<Scalar> dC,
                      matrix_ref<Scalar> dH, workspace& ws) {
  const std::string where = name() + "::backward_width";
  checks(where).backward_width(ws.tokens, H, dX, dC, dH);
  const index_t T = ws.tokens;
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
    scale = scales();
  }
  const Scalar inv_tau = math::inverse_tau(Scalar(db_));
  detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
    partial_grads& pg = partial[std::size_t(c)];
    slot_matrix hn, dhn;
    if constexpr (Dynamic) {
      pg.dWT.setZero(K, db_);
      pg.dg.setZero(1, db_);
      hn.resize(N, db_);
      dhn.resize(N, db_);
    }
    slot_matrix dHt(N, db_);  // this token's dH, formed in the cache and written to dH once complete
    for (index_t t = t0; t < t1; ++t) {
      const auto Ht = slots(H, t);
      // Through the mixing: dH = a [dX; dC], and d a = H [dX; dC]^T (a reduction over the slot width).
      fixed_matrix<Scalar, N, M + N> da;
      ops().mix_backward(token_coefficients(ws, t), H, dX, dC, t, dHt, da);
      if constexpr (Dynamic) {
        coefficients dab;
        dab << da, Eigen::Map<const fixed_matrix<Scalar, N, M>>(ws.dB.data() + t * N * M);
        const Eigen::Map<const coefficients> Pt(ws.P.data() + t * N * K);
        pg.d_static += dab;
        pg.d_scale += dab.cwiseProduct(Pt);
        coefficients dQ;
        math::projection_backward(dab.array(), scale.array(), Pt.array(), inv_tau, dQ.array());
        // Recompute the normalised slots, then dW^T += dQ^T hn (a reduction over tokens) and dhn = dQ W^T.
        for (int j = 0; j < N; ++j)
          math::rms_forward(Ht.row(j).array(), ws.rstd(t * N + j), params.g.transpose().array(), hn.row(j).array());
        if constexpr (detail::ghc_uses_gemm<M, N>)
          pg.dWT.noalias() += dQ.transpose() * hn;
        else
          pg.dWT.noalias() += dQ.transpose().lazyProduct(hn);  // 2m+n rows of n-term sums, no packing
        if constexpr (detail::ghc_uses_gemm<M, N>) {
          dhn.noalias() = dQ * WT;
        } else {
          const detail::rows<const Scalar> w{WT.data(), db_};
          for (int j = 0; j < N; ++j)
            math::projection_input_backward<M, N>(detail::entries<coefficients>{dQ}, j, w,
                                                  detail::row_map<Scalar>(dhn.row(j).data(), db_));
        }
        // Through the per-slot RMSNorm: u = x r, dg += dhn u, dH += r (dhn g - u mean(dhn g u)).
        for (int j = 0; j < N; ++j) {
          const Scalar r = ws.rstd(t * N + j);
          auto u = hn.row(j);  // hn is free again: it holds u now
          math::rms_unit(Ht.row(j).array(), r, u.array());
          pg.dg.row(0) += dhn.row(j).cwiseProduct(u);
          const Scalar proj = math::mean_of(dhn.row(j).cwiseProduct(params.g.transpose()).dot(u), Scalar(db_));
          math::rms_backward<true>(dhn.row(j).array() * params.g.transpose().array(), u.array(), proj, r,
                                   dHt.row(j).array());
        }
      } else {
        pg.d_static.template leftCols<M + N>() += da;
      }
      std::copy_n(dHt.data(), N * db_, detail::row_ptr(dH, t));
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

template <int M, int N, class Scalar, bool Dynamic, class Connection>
typename basic_ghc<M, N, Scalar, Dynamic, Connection>::coefficients basic_ghc<M, N, Scalar, Dynamic, Connection>::token_coefficients(const workspace& ws, index_t t) const {
  if constexpr (Dynamic) {
    coefficients ab;
    math::coefficients(scales().array(), Eigen::Map<const coefficients>(ws.P.data() + t * N * K).array(),
                       static_coefficients().array(), ab.array());
    return ab;
  } else {
    return static_coefficients();
  }
}

/// Static Generalized Hyper-Connection of shape `(M, N)`: `ghc<2, 3>` widens by 1.5x.
template <int M, int N, class Scalar = float, class Connection = vwn_connection>
using ghc = basic_ghc<M, N, Scalar, false, Connection>;

/// Dynamic Generalized Hyper-Connection of shape `(M, N)`.
template <int M, int N, class Scalar = float, class Connection = vwn_connection>
using dghc = basic_ghc<M, N, Scalar, true, Connection>;

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

// With VWN_EXTERN_COMPILED_SHAPES defined, the compiled shapes are instantiated once, where
// VWN_INSTANTIATE_SHAPE(m, n, Scalar) is written (<vwn/precompiled.hpp>), not in every translation unit.
#ifdef VWN_EXTERN_COMPILED_SHAPES
#define VWN_EXTERN_GHC_(m, n) \
  extern template class vwn::basic_ghc<m, n, float, false>;  \
  extern template class vwn::basic_ghc<m, n, float, true>;   \
  extern template class vwn::basic_ghc<m, n, double, false>; \
  extern template class vwn::basic_ghc<m, n, double, true>;
VWN_COMPILED_SHAPES(VWN_EXTERN_GHC_)
#undef VWN_EXTERN_GHC_
#endif
