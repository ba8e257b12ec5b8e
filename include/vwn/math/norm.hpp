#pragma once
/// \file norm.hpp
/// The normalisations of vwn, forward and backward, one formula each: the RMSNorm of one row (DGHC's per-slot
/// norm, and the reference transformer's norms) and the GroupNorm of one group (the reduce head). The sums over
/// a row or a group (of squares, of products) are the caller's: each back end reduces in its own order (Eigen's
/// packets, a warp's butterfly) and passes the sum here. Element formulas are written once for any value type:
/// a `float` or `double` on either back end, or an Eigen array expression of a whole row on the host.
///
/// RMSNorm of a row `x` of `n` values with weight `g`:
///   `r = 1 / sqrt(sum(x^2) / n + eps)`, `u = x r`, `y = u g`;
///   backward, with `dy` given: `dg += dy u`, `proj = sum(dy g u) / n`, `dx = r (dy g - proj u)`.
/// GroupNorm of a group `x` of `n` values with affine `w`, `b`:
///   `mean = sum(x) / n`, `rstd = 1 / sqrt(sum((x - mean)^2) / n + eps)`, `xh = (x - mean) rstd`, `y = xh w + b`;
///   backward: `dxh = dy w`, `dw += dy xh`, `db += dy`, `dx = rstd (dxh - sum(dxh) / n - xh sum(dxh xh) / n)`.

#include <cmath>

#include "../core/config.hpp"
#include "../core/host_device.hpp"

namespace vwn::math {

/// `sum / count`: a mean from a sum (RMSNorm's and GroupNorm's means, the projections of their backward).
template <class T>
VWN_HOST_DEVICE T mean_of(T sum, T count) {
  return sum / count;
}

/// `1 / sqrt(sum_sq / count + eps)`: the inverse RMS of a row from its sum of squares, and the inverse standard
/// deviation of a group from its sum of squared deviations.
template <class T>
VWN_HOST_DEVICE T inverse_rms(T sum_sq, T count) {
  using std::sqrt;
  return T(1) / sqrt(sum_sq / count + T(norm_eps));
}

/// RMSNorm, the unit part: `u = x r`.
VWN_GENERIC template <class X, class R, class U>
VWN_HOST_DEVICE void rms_unit(const X& x, R r, U&& u) {
  u = x * r;
}

/// RMSNorm forward: `y = x r g`.
VWN_GENERIC template <class X, class R, class G, class Y>
VWN_HOST_DEVICE void rms_forward(const X& x, R r, const G& g, Y&& y) {
  y = x * r * g;
}

/// RMSNorm backward into `dx`: `dx = r (dyg - proj u)`, with `dyg = dy g`, `u = x r` and `proj = mean(dyg u)`.
/// `Accumulate` adds to `dx` instead.
VWN_GENERIC template <bool Accumulate = false, class DYG, class U, class R, class DX>
VWN_HOST_DEVICE void rms_backward(const DYG& dyg, const U& u, R proj, R r, DX&& dx) {
  if constexpr (Accumulate)
    dx += r * (dyg - proj * u);
  else
    dx = r * (dyg - proj * u);
}

/// GroupNorm forward: `y = (x - mean) rstd w + b`.
VWN_GENERIC template <class X, class R, class W, class B, class Y>
VWN_HOST_DEVICE void group_forward(const X& x, R mean, R rstd, const W& w, const B& b, Y&& y) {
  y = (x - mean) * rstd * w + b;
}

/// GroupNorm, the normalised value: `xh = (x - mean) rstd`.
VWN_GENERIC template <class X, class R, class XH>
VWN_HOST_DEVICE void group_unit(const X& x, R mean, R rstd, XH&& xh) {
  xh = (x - mean) * rstd;
}

/// GroupNorm backward into `dx`: `dx = rstd (dxh - mean_dxh - xh mean_dxh_xh)`, with `dxh = dy w`.
VWN_GENERIC template <class DXH, class XH, class R, class DX>
VWN_HOST_DEVICE void group_backward(const DXH& dxh, const XH& xh, R rstd, R mean_dxh, R mean_dxh_xh, DX&& dx) {
  dx = rstd * (dxh - mean_dxh - xh * mean_dxh_xh);
}

}  // namespace vwn::math
