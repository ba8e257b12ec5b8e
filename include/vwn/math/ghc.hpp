#pragma once
/// \file ghc.hpp
/// The formulas of one GHC sub-layer for one token, forward and backward: the only copy, called by the host back
/// end (`<vwn/ghc.hpp>`, with Eigen rows of `db` values as values) and by the CUDA kernels (`<vwn/cuda/ghc.cuh>`,
/// one `float` per thread and column). What is not here is about threads, memory and reductions: the sums over
/// a slot's `db` columns (`H dmix^T`, the sum of squares, the projection `Hn W`) and over tokens (parameter
/// gradients) are each back end's own.
///
/// Per token, with `H` the `n x db` over-width state (slot `j` = row `j`), `[a | b]` the `n x (2m+n)` coefficients:
///   dynamic coefficients  `Hn_j = H_j r_j g` (math/norm.hpp), `P = tanh(Hn W / sqrt(db))`,
///                         `[a | b] = S . P + [alpha | beta]`                      (`coefficients`, `projection`)
///   width connection      `X_i = sum_j a(j, i) H_j`, `C_i = sum_j a(j, m + i) H_j`  (`mix_width`, `mix_row`)
///   depth connection      `H_out_j = sum_k b(j, k) Z_k + C_j`                       (`depth_slot`)
///   backward              `dZ_k = sum_j b(j, k) dH_out_j`          (`depth_backward`, `depth_backward_segment`)
///                         `dH_j = sum_i a(j, i) [dX; dC]_i` (+ the norm's path)      (`mix_width_backward`)
///                         `dQ = dab . S . (1 - P^2) / sqrt(db)`                       (`projection_backward`)
///                         `dHn_j = sum_k dQ(j, k) W_k`                               (`projection_input_backward`)
///
/// Accessor conventions (see contract.hpp): coefficient accessors are callables `(j, k) -> scalar`, value
/// accessors `j -> value`, targets `i -> assignable`.

#include <cmath>

#include "../core/host_device.hpp"
#include "contract.hpp"
#include "norm.hpp"

namespace vwn::math {

/// `1 / sqrt(db)`: the scale inside the tanh of the dynamic coefficients (`tau = sqrt(D / m)`, eq. 13-14).
template <class T>
VWN_HOST_DEVICE T inverse_tau(T db) {
  using std::sqrt;
  return T(1) / sqrt(db);
}

/// Dynamic coefficients from the tanh outputs: `ab = scale . p + stat` elementwise, with `scale` the entries of
/// `[S_alpha | S_beta]` and `stat` those of `[alpha | beta]` (one entry, or a whole `n x (2m+n)` array).
VWN_GENERIC template <class Scale, class P, class Stat, class Out>
VWN_HOST_DEVICE void coefficients(const Scale& scale, const P& p, const Stat& stat, Out&& ab) {
  ab = scale * p + stat;
}

/// The tanh of the projection: `p = tanh(q / tau)` with `q = Hn [W_alpha | W_beta]`, `inv_tau = 1 / sqrt(db)`.
VWN_GENERIC template <class Q, class T, class Out>
VWN_HOST_DEVICE void projection(const Q& q, T inv_tau, Out&& p) {
  using std::tanh;
  p = tanh(q * inv_tau);
}

/// The projection weight with the norm's weight folded in: `gw = g w`, entry `(d, k)` of `g . [W_alpha | W_beta]`.
/// Prepared once per call, it lets a back end form a slot's projection from the raw values it stores
/// (`projection_from_raw`): `Hn_j W = r_j (H_j (g . W))`, since `Hn_j = H_j r_j g`.
VWN_GENERIC template <class G, class W, class Out>
VWN_HOST_DEVICE void folded_weight(const G& g, const W& w, Out&& gw) {
  gw = g * w;
}

/// One entry of a slot's projection `q = Hn_j W` from `s = sum_d H_j(d) gw(d, k)` (with `gw` from `folded_weight`)
/// and the slot's inverse RMS `r`: `q = s r`.
VWN_GENERIC template <class Sum, class R, class Out>
VWN_HOST_DEVICE void projection_from_raw(const Sum& s, R r, Out&& q) {
  q = s * r;
}

/// The norm's projection in the RMSNorm backward of slot `j` (`proj = mean_d(dHn_j g u_j)`, math/norm.hpp) from the
/// projection itself: `proj = (1/db) sum_k dq(j, k) q(j, k)`, since `dHn_j = sum_k dq(j, k) W_k` and
/// `q(j, k) = sum_d u_j(d) g(d) W(d, k)`: `2m + n` terms instead of a sweep over the slot's `db` values.
VWN_GENERIC template <int K, class DQ, class Q, class T, class Out>
VWN_HOST_DEVICE void slot_norm_projection(const DQ& dq, const Q& q, int j, T db, Out&& proj) {
  T s;
  weighted_sum<K>(row_of<DQ>{dq, j}, row_of<Q>{q, j}, s);
  proj = mean_of(s, db);
}

/// Gradient through `projection` and `coefficients`: `dq = dab . scale . (1 - p^2) / tau`.
VWN_GENERIC template <class DAB, class Scale, class P, class T, class Out>
VWN_HOST_DEVICE void projection_backward(const DAB& dab, const Scale& scale, const P& p, T inv_tau, Out&& dq) {
  dq = dab * scale * (T(1) - p * p) * inv_tau;
}

/// Row `i` of the width mixing `mix = a^T H` of one token: `out = sum_j a(j, i) h(j)`. Rows `0 .. m-1` are the
/// backbone input `X`, rows `m .. m+n-1` the carried state `C`.
VWN_GENERIC template <int N, class A, class H, class Out>
VWN_HOST_DEVICE void mix_row(const A& a, int i, const H& h, Out&& out) {
  weighted_sum<N>(column_of<A>{a, i}, h, out);
}

/// Width connection of one token: `x(i) = sum_j a(j, i) h(j)` for the `m` backbone segments and
/// `c(i) = sum_j a(j, m + i) h(j)` for the `n` carried slots (`mix_row` for every row).
VWN_GENERIC template <int M, int N, class A, class H, class X, class C>
VWN_HOST_DEVICE void mix_width(const A& a, const H& h, const X& x, const C& c) {
  for (int i = 0; i < M; ++i) mix_row<N>(a, i, h, x(i));
  for (int i = 0; i < N; ++i) mix_row<N>(a, M + i, h, c(i));
}

/// Depth connection of slot `j` of one token: `out = sum_k b(j, k) z(k) + c`, the sum formed in `acc` first
/// (`acc` may be `out`, unless `out` is `c` itself).
VWN_GENERIC template <int M, class B, class Z, class CV, class Acc, class Out>
VWN_HOST_DEVICE void depth_slot(const B& b, int j, const Z& z, const CV& c, Acc&& acc, Out&& out) {
  weighted_sum<M>(row_of<B>{b, j}, z, acc);
  out = acc + c;
}

/// Depth connection, backward, segment `k` of one token: `dz = sum_j b(j, k) dh_out(j)`.
VWN_GENERIC template <int N, class B, class G, class DZ>
VWN_HOST_DEVICE void depth_backward_segment(const B& b, int k, const G& dh_out, DZ&& dz) {
  weighted_sum<N>(column_of<B>{b, k}, dh_out, dz);
}

/// Depth connection, backward, of one token: `dz(k) = sum_j b(j, k) dh_out(j)` for the `m` segments.
VWN_GENERIC template <int M, int N, class B, class G, class DZ>
VWN_HOST_DEVICE void depth_backward(const B& b, const G& dh_out, const DZ& dz) {
  for (int k = 0; k < M; ++k) depth_backward_segment<N>(b, k, dh_out, dz(k));
}

/// Width connection, backward, mixing path of slot `j`: `dh = sum_i a(j, i) dmix(i)` over the `m + n` rows of
/// `dmix = [dX; dC]`.
VWN_GENERIC template <int M, int N, class A, class DMix, class DH>
VWN_HOST_DEVICE void mix_width_backward(const A& a, int j, const DMix& dmix, DH&& dh) {
  weighted_sum<M + N>(row_of<A>{a, j}, dmix, dh);
}

/// Gradient of the normalised slot `j` through the projection: `dhn = sum_k dq(j, k) w(k)` over the `2m + n`
/// rows `w(k)` of `[W_alpha | W_beta]^T`.
VWN_GENERIC template <int M, int N, class DQ, class W, class Out>
VWN_HOST_DEVICE void projection_input_backward(const DQ& dq, int j, const W& w, Out&& dhn) {
  weighted_sum<2 * M + N>(row_of<DQ>{dq, j}, w, dhn);
}

}  // namespace vwn::math
