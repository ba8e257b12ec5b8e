#pragma once
// Row-wise normalisation kernels shared by DGHC's per-slot RMSNorm, the model's norms and GroupNorm.

#include <cmath>

#include "../config.hpp"

namespace vwn::detail {

// y = x * r * g with r = 1/sqrt(mean(x^2) + eps); returns r. x, y, g are row vectors of equal length.
template <class X, class G, class Y>
typename X::Scalar rms_row_forward(const X& x, const G& g, Y&& y) {
  using S = typename X::Scalar;
  const S r = S(1) / std::sqrt(x.squaredNorm() / S(x.size()) + S(norm_eps));
  y = (x * r).cwiseProduct(g);
  return r;
}

// Given dy for y = rms(x) * g with saved r: dx += r (dy*g - u mean(dy*g . u)), dg += dy . u, u = x r.
template <class X, class G, class DY, class DX, class DG>
void rms_row_backward(const X& x, typename X::Scalar r, const G& g, const DY& dy, DX&& dx, DG&& dg) {
  using S = typename X::Scalar;
  const auto u = x * r;
  dg += dy.cwiseProduct(u);
  const S proj = dy.cwiseProduct(g).dot(u) / S(x.size());
  dx += r * (dy.cwiseProduct(g) - proj * u);
}

// Group statistics: y = (x - mean) * rstd * w + b over one group; returns rstd, writes mean.
template <class X, class W, class B, class Y>
typename X::Scalar group_forward(const X& x, const W& w, const B& b, Y&& y, typename X::Scalar& mean) {
  using S = typename X::Scalar;
  mean = x.mean();
  const S var = (x.array() - mean).square().mean();
  const S rstd = S(1) / std::sqrt(var + S(norm_eps));
  y = ((x.array() - mean) * rstd * w.array() + b.array()).matrix();
  return rstd;
}

// Backward of group_forward: dx = rstd (dxh - mean(dxh) - xh mean(dxh xh)), dxh = dy w, xh = (x-mean) rstd.
template <class X, class W, class DY, class DX, class DW, class DB>
void group_backward(const X& x, typename X::Scalar mean, typename X::Scalar rstd, const W& w, const DY& dy, DX&& dx,
                    DW&& dw, DB&& db) {
  using S = typename X::Scalar;
  const auto xh = (x.array() - mean) * rstd;
  const auto dxh = dy.array() * w.array();
  dw.array() += dy.array() * xh;
  db += dy;
  const S n = S(x.size());
  const S mean_dxh = dxh.sum() / n;
  const S mean_dxh_xh = (dxh * xh).sum() / n;
  dx = (rstd * (dxh - mean_dxh - xh * mean_dxh_xh)).matrix();
}

}  // namespace vwn::detail
