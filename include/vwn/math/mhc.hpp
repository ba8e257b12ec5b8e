#pragma once
/// \file mhc.hpp
/// The formulas of the manifold-constrained width connections, forward and backward, for one token: the only copy,
/// called by the host back end (`<vwn/mhc.hpp>`) and written for the device back end alike (plain arrays, no
/// allocation; VWN_HOST_DEVICE). docs/mhc.md derives each formula; docs/math.md lists them with shapes.
///
/// One token's coefficients come from a vector of `K = 2 n m + R` logits `z = [z_pre | z_post | z_res]`:
///   `a_pre(j, i)  = sigmoid(z_pre(j, i)) + pre_eps`                 (`n x m`, slot `j` into segment `i`)
///   `b(j, k)      = post_scale sigmoid(z_post(j, k))`                (`n x m`, segment `k` back into slot `j`)
///   carry `A_c`   (`n x n`, `C_i = sum_j A_c(j, i) H_j`):
///     mHC           `A_c = Sinkhorn(z_res)^T` (`z_res` read `n x n` as `H_res(i, j)`, row `i` the output slot),
///                   or `Sinkhorn(z_res)` itself where the rule says so (the DeepSeek-V4 layout)
///     mHC-lite      `A_c(j, i) = sum_p w_p [pi_p(i) = j]`, `w = softmax(z_res)` over the `R = n!` permutations
///                   `pi_p` in lexicographic order (`p = 0` the identity): `H_res = sum_p w_p P_p`, `P_p(i, pi_p(i)) = 1`.
/// Sinkhorn(`z`), `n x n`, with `iterations` `t`, a first axis `A` and the other axis `B` (rows, columns):
///   `Y = softmax_A(z) + add_eps`, then normalise along `B`, then `t - 1` times along `A` and along `B`, where
///   normalising along an axis divides every line by its sum plus `div_eps`. With `add_eps = div_eps = 0` this is the
///   paper's `M(0) = exp(z)` followed by `t` alternating normalisations (the softmax is the first of them, computed from
///   `exp(z - max)`, which the normalisation makes independent of the shift).
/// Backward of one normalisation `y = x / (s + e)`, `s` the line sums: `dx = (dy - <dy, y>_line) / (s + e)`; of the
/// softmax: `dz = y (dy - <dy, y>_line)`. The backward recomputes the forward from `z`, keeping only the line sums, and
/// walks back rebuilding each normalisation's input as `x = y (s + e)` (mHC's recomputation: nothing per iterate is
/// stored between the passes). Where a line underflows in the linear domain (logits spread beyond the exponent range),
/// a rule without epsilons runs the same normalisations in the log domain, `l -= logsumexp_line(l)`, whose backward is
/// `dl_in = dl - exp(l) sum_line(dl)`.

#include <cmath>

#include "../core/connection.hpp"
#include "../core/host_device.hpp"

namespace vwn::math {

/// `1 / (1 + exp(-x))`.
template <class T>
VWN_HOST_DEVICE T sigmoid(T x) {
  using std::exp;
  return T(1) / (T(1) + exp(-x));
}

/// Scratch values (of the scalar type) `sinkhorn_backward` needs for an `n x n` carry and `t` iterations.
constexpr int sinkhorn_scratch(int n, int iterations) { return 2 * iterations * n + 2 * n * n; }

namespace detail {

// Line `l` of an `N x N` row-major matrix along an axis: rows (`columns = false`, line `l` = row `l`) or columns.
template <int N>
VWN_HOST_DEVICE int at(bool columns, int line, int k) {
  return columns ? k * N + line : line * N + k;
}

// Every line along the axis divided by its sum plus `eps`; the sums (without `eps`) into `sums`.
template <int N, class T>
VWN_HOST_DEVICE void normalise_lines(T* x, bool columns, T eps, T* sums) {
  for (int l = 0; l < N; ++l) {
    T s = x[at<N>(columns, l, 0)];
    for (int k = 1; k < N; ++k) s += x[at<N>(columns, l, k)];
    sums[l] = s;
    const T inv = T(1) / (s + eps);
    for (int k = 0; k < N; ++k) x[at<N>(columns, l, k)] *= inv;
  }
}

// Backward of `normalise_lines`: `y` its output (rebuilt in place into its input `x = y (s + eps)`), `dy` the
// gradient of `y` (replaced by that of `x`).
template <int N, class T>
VWN_HOST_DEVICE void normalise_lines_backward(T* y, T* dy, bool columns, T eps, const T* sums) {
  for (int l = 0; l < N; ++l) {
    T dot = dy[at<N>(columns, l, 0)] * y[at<N>(columns, l, 0)];
    for (int k = 1; k < N; ++k) dot += dy[at<N>(columns, l, k)] * y[at<N>(columns, l, k)];
    const T d = sums[l] + eps, inv = T(1) / d;
    for (int k = 0; k < N; ++k) {
      const int e = at<N>(columns, l, k);
      dy[e] = (dy[e] - dot) * inv;
      y[e] *= d;
    }
  }
}

// `y = softmax(z)` along every line of `K` values (`lines` of them, line `l` at `l * K`); `K = N` for Sinkhorn's rows,
// or along columns through `columns`.
template <int N, class T>
VWN_HOST_DEVICE void softmax_lines(const T* z, T* y, bool columns) {
  using std::exp;
  for (int l = 0; l < N; ++l) {
    T mx = z[at<N>(columns, l, 0)];
    for (int k = 1; k < N; ++k) mx = z[at<N>(columns, l, k)] > mx ? z[at<N>(columns, l, k)] : mx;
    T s = T(0);
    for (int k = 0; k < N; ++k) {
      const int e = at<N>(columns, l, k);
      y[e] = exp(z[e] - mx);
      s += y[e];
    }
    const T inv = T(1) / s;
    for (int k = 0; k < N; ++k) y[at<N>(columns, l, k)] *= inv;
  }
}

// Backward of a softmax along lines: `dz = y (dy - <dy, y>_line)`.
template <int N, class T>
VWN_HOST_DEVICE void softmax_lines_backward(const T* y, const T* dy, T* dz, bool columns) {
  for (int l = 0; l < N; ++l) {
    T dot = dy[at<N>(columns, l, 0)] * y[at<N>(columns, l, 0)];
    for (int k = 1; k < N; ++k) dot += dy[at<N>(columns, l, k)] * y[at<N>(columns, l, k)];
    for (int k = 0; k < N; ++k) {
      const int e = at<N>(columns, l, k);
      dz[e] = y[e] * (dy[e] - dot);
    }
  }
}

// The smallest line sum the linear-domain iteration trusts: a line whose entries all lie more than about 40 (float) or
// 345 (double) nats below the largest of their lines' has underflowed, and the log domain takes over (`sinkhorn`).
template <class T>
VWN_HOST_DEVICE constexpr T trusted_sum() {
  return sizeof(T) == 4 ? T(1e-18) : T(1e-150);
}

// `l -= logsumexp(l)` along every line; the logsumexps into `lse`.
template <int N, class T>
VWN_HOST_DEVICE void log_normalise_lines(T* l, bool columns, T* lse) {
  using std::exp;
  using std::log;
  for (int line = 0; line < N; ++line) {
    T mx = l[at<N>(columns, line, 0)];
    for (int k = 1; k < N; ++k) mx = l[at<N>(columns, line, k)] > mx ? l[at<N>(columns, line, k)] : mx;
    T s = T(0);
    for (int k = 0; k < N; ++k) s += exp(l[at<N>(columns, line, k)] - mx);
    const T v = mx + log(s);
    lse[line] = v;
    for (int k = 0; k < N; ++k) l[at<N>(columns, line, k)] -= v;
  }
}

// Backward of `log_normalise_lines`: `l` its output (rebuilt in place into its input `l + lse`), `dl` the gradient
// of the output (replaced by that of the input): `dl_in = dl - exp(l) sum_line(dl)`.
template <int N, class T>
VWN_HOST_DEVICE void log_normalise_lines_backward(T* l, T* dl, bool columns, const T* lse) {
  using std::exp;
  for (int line = 0; line < N; ++line) {
    T s = dl[at<N>(columns, line, 0)];
    for (int k = 1; k < N; ++k) s += dl[at<N>(columns, line, k)];
    for (int k = 0; k < N; ++k) {
      const int e = at<N>(columns, line, k);
      dl[e] -= exp(l[e]) * s;
      l[e] += lse[line];
    }
  }
}

// Sinkhorn in the linear domain (see the file comment), the line sums of the normalisations after the softmax into
// `sums` (`(2 t - 1) N`, or a local line when null). Returns false when a sum fell below `trusted_sum` (or is not a
// number): then `p` is not to be used.
template <int N, class T>
VWN_HOST_DEVICE bool sinkhorn_linear(const T* z, T* p, const manifold_rule& rule, T* sums) {
  const bool a = rule.columns_first, b = !a;
  const T add = T(rule.add_eps), eps = T(rule.div_eps);
  T local[N];
  softmax_lines<N>(z, p, a);
  if (add != T(0))
    for (int e = 0; e < N * N; ++e) p[e] += add;
  bool trusted = true;
  for (int step = 0; step < 2 * rule.iterations - 1; ++step) {
    T* s = sums ? sums + step * N : local;
    normalise_lines<N>(p, step % 2 == 0 ? b : a, eps, s);
    for (int l = 0; l < N; ++l) trusted = trusted && s[l] + eps >= trusted_sum<T>();
  }
  return trusted;
}

// Sinkhorn without epsilons in the log domain: `l = log P` from `2t` normalisations of `z` along alternating axes (the
// first one the softmax), the logsumexps into `lse` (`2 t N`).
template <int N, class T>
VWN_HOST_DEVICE void sinkhorn_log(const T* z, T* l, const manifold_rule& rule, T* lse) {
  const bool a = rule.columns_first, b = !a;
  for (int e = 0; e < N * N; ++e) l[e] = z[e];
  for (int step = 0; step < 2 * rule.iterations; ++step) log_normalise_lines<N>(l, step % 2 == 0 ? a : b, lse + step * N);
}

}  // namespace detail

/// Sinkhorn of the `N x N` logits `z` (row-major) into `p` under `rule`. In the linear domain (exponentials once, then
/// divisions), unless a line underflows there (logits spread over more than the scalar's exponent range, which the
/// paper's `exp(z)` start cannot hold): then, for a rule without epsilons, the same normalisations in the log domain,
/// which give the same matrix without the underflow. A rule with epsilons keeps the linear domain (its epsilons are
/// part of it and keep every line sum positive).
template <int N, class T>
VWN_HOST_DEVICE void sinkhorn(const T* z, T* p, const manifold_rule& rule) {
  if (detail::sinkhorn_linear<N>(z, p, rule, static_cast<T*>(nullptr)) || rule.add_eps != 0 || rule.div_eps != 0) return;
  using std::exp;
  T lse[N];  // the forward alone needs no logsumexp after its step
  for (int e = 0; e < N * N; ++e) p[e] = z[e];
  for (int step = 0; step < 2 * rule.iterations; ++step)
    detail::log_normalise_lines<N>(p, step % 2 == 0 ? rule.columns_first : !rule.columns_first, lse);
  for (int e = 0; e < N * N; ++e) p[e] = exp(p[e]);
}

/// Gradient of `sinkhorn`: `dz` from `dp` (both `N x N`), recomputing the forward from `z` (in the domain the forward
/// used) into `scratch` (`sinkhorn_scratch(N, t)` values). `dz` may be `dp`.
template <int N, class T>
VWN_HOST_DEVICE void sinkhorn_backward(const T* z, const T* dp, T* dz, const manifold_rule& rule, T* scratch) {
  const bool a = rule.columns_first, b = !a;
  T* sums = scratch;
  T* y = scratch + 2 * rule.iterations * N;
  T* dy = y + N * N;
  if (detail::sinkhorn_linear<N>(z, y, rule, sums) || rule.add_eps != 0 || rule.div_eps != 0) {
    const int steps = 2 * rule.iterations - 1;
    for (int e = 0; e < N * N; ++e) dy[e] = dp[e];
    for (int step = steps - 1; step >= 0; --step)
      detail::normalise_lines_backward<N>(y, dy, step % 2 == 0 ? b : a, T(rule.div_eps), sums + step * N);
    if (rule.add_eps != 0)
      for (int e = 0; e < N * N; ++e) y[e] -= T(rule.add_eps);
    detail::softmax_lines_backward<N>(y, dy, dz, a);
    return;
  }
  using std::exp;
  detail::sinkhorn_log<N>(z, y, rule, sums);  // y = log P
  for (int e = 0; e < N * N; ++e) dy[e] = dp[e] * exp(y[e]);
  for (int step = 2 * rule.iterations - 1; step >= 0; --step)
    detail::log_normalise_lines_backward<N>(y, dy, step % 2 == 0 ? a : b, sums + step * N);
  for (int e = 0; e < N * N; ++e) dz[e] = dy[e];
}

/// The `p`-th permutation of `0 .. N-1` in lexicographic order (`p < N!`; `p = 0` is the identity): `perm[i] = pi(i)`.
template <int N>
VWN_HOST_DEVICE void permutation(int p, int (&perm)[N]) {
  bool used[N];
  for (int i = 0; i < N; ++i) perm[i] = 0;
  for (int i = 0; i < N; ++i) used[i] = false;
  constexpr int first_radix = factorial_v<N - 1>;
  int radix = first_radix;
  for (int i = 0; i < N; ++i) {
    int digit = p / radix;
    p -= digit * radix;
    if (i < N - 1) radix /= (N - 1 - i);
    for (int v = 0; v < N; ++v)
      if (!used[v] && digit-- == 0) {
        perm[i] = v;
        used[v] = true;
        break;
      }
  }
}

/// mHC-lite's carry: `w = softmax(z)` over the `N!` logits (into `w`), `p = sum_q w_q P_q` (`N x N` row-major,
/// `P_q(i, pi_q(i)) = 1`), every entry a sum in the order `q = 0 .. N!-1`.
template <int N, class T>
VWN_HOST_DEVICE void permutation_mixture(const T* z, T* w, T* p) {
  using std::exp;
  constexpr int R = factorial_v<N>;
  T mx = z[0];
  for (int q = 1; q < R; ++q) mx = z[q] > mx ? z[q] : mx;
  T s = T(0);
  for (int q = 0; q < R; ++q) {
    w[q] = exp(z[q] - mx);
    s += w[q];
  }
  const T inv = T(1) / s;
  for (int q = 0; q < R; ++q) w[q] *= inv;
  for (int e = 0; e < N * N; ++e) p[e] = T(0);
  int perm[N] = {};
  for (int q = 0; q < R; ++q) {
    permutation<N>(q, perm);
    for (int i = 0; i < N; ++i) p[i * N + perm[i]] += w[q];
  }
}

/// Gradient of `permutation_mixture`: `dz` from `dp` and the weights `w`: `dw_q = sum_i dp(i, pi_q(i))`,
/// `dz = w (dw - <dw, w>)`. `dw` holds `N!` scratch values.
template <int N, class T>
VWN_HOST_DEVICE void permutation_mixture_backward(const T* w, const T* dp, T* dw, T* dz) {
  constexpr int R = factorial_v<N>;
  int perm[N] = {};
  T dot = T(0);
  for (int q = 0; q < R; ++q) {
    permutation<N>(q, perm);
    T s = dp[perm[0]];
    for (int i = 1; i < N; ++i) s += dp[i * N + perm[i]];
    dw[q] = s;
    dot += s * w[q];
  }
  for (int q = 0; q < R; ++q) dz[q] = w[q] * (dw[q] - dot);
}

/// The group of logit `k` of `[z_pre | z_post | z_res]` (`N x M`, `N x M`, then the carry's): 0, 1 or 2.
template <int M, int N>
VWN_HOST_DEVICE int logit_group(int k) {
  return k < N * M ? 0 : (k < 2 * N * M ? 1 : 2);
}

/// A token's logits from its normalised projection `q = r (x phi)` (mHC eq. 16): `z_k = gate_g q_k + bias_k`, `g` the
/// group of `k` (`gate` = `[alpha_pre, alpha_post, alpha_res]`), for the `count` logits.
template <int M, int N, class T>
VWN_HOST_DEVICE void manifold_logits(const T* q, const T* gate, const T* bias, T* z, int count) {
  for (int k = 0; k < count; ++k) z[k] = gate[logit_group<M, N>(k)] * q[k] + bias[k];
}

/// Gradient of `manifold_logits` given `dz`: `dq_k = gate_g dz_k` into `dq`, `dgate_g += sum_k dz_k q_k` (the bias's
/// gradient is `dz` itself).
template <int M, int N, class T>
VWN_HOST_DEVICE void manifold_logits_backward(const T* q, const T* gate, const T* dz, T* dq, T* dgate, int count) {
  for (int k = 0; k < count; ++k) {
    const int g = logit_group<M, N>(k);
    dgate[g] += dz[k] * q[k];
    dq[k] = gate[g] * dz[k];
  }
}

/// Scratch values `manifold_coefficients` and `manifold_coefficients_backward` need: the carry's projection
/// (`N x N`, its gradient, and Sinkhorn's scratch or the `N!` weights twice).
constexpr int manifold_scratch(const manifold_rule& rule, int n) {
  return 2 * n * n + (rule.permutations ? 2 * factorial(n) : sinkhorn_scratch(n, rule.iterations));
}

/// One token's coefficients `ab = [a_pre | A_c | b]` (`N x (2M+N)` row-major) from its logits
/// `z = [z_pre (N x M) | z_post (N x M) | z_res (R)]`, under `rule` (see the file comment). `scratch` holds
/// `manifold_scratch(rule, N)` values.
template <int M, int N, class T>
VWN_HOST_DEVICE void manifold_coefficients(const T* z, T* ab, const manifold_rule& rule, T* scratch) {
  constexpr int K = 2 * M + N;
  const T* z_pre = z;
  const T* z_post = z + N * M;
  const T* z_res = z + 2 * N * M;
  for (int j = 0; j < N; ++j)
    for (int i = 0; i < M; ++i) {
      ab[j * K + i] = sigmoid(z_pre[j * M + i]) + T(rule.pre_eps);
      ab[j * K + M + N + i] = T(rule.post_scale) * sigmoid(z_post[j * M + i]);
    }
  T* p = scratch;
  if (rule.permutations) {
    if constexpr (N <= 8) permutation_mixture<N>(z_res, scratch + 2 * N * N, p);
  } else {
    sinkhorn<N>(z_res, p, rule);
  }
  for (int j = 0; j < N; ++j)
    for (int i = 0; i < N; ++i) ab[j * K + M + i] = rule.transpose_carry ? p[i * N + j] : p[j * N + i];
}

/// Gradient of `manifold_coefficients`: `dz` (`2NM + R`) from `dab` (`N x (2M+N)`), recomputing the carry's
/// projection from `z`.
template <int M, int N, class T>
VWN_HOST_DEVICE void manifold_coefficients_backward(const T* z, const T* dab, T* dz, const manifold_rule& rule,
                                                    T* scratch) {
  constexpr int K = 2 * M + N;
  for (int j = 0; j < N; ++j)
    for (int i = 0; i < M; ++i) {
      const T sp = sigmoid(z[j * M + i]), so = sigmoid(z[N * M + j * M + i]);
      dz[j * M + i] = dab[j * K + i] * sp * (T(1) - sp);
      dz[N * M + j * M + i] = dab[j * K + M + N + i] * T(rule.post_scale) * so * (T(1) - so);
    }
  T* dp = scratch;
  for (int j = 0; j < N; ++j)
    for (int i = 0; i < N; ++i) (rule.transpose_carry ? dp[i * N + j] : dp[j * N + i]) = dab[j * K + M + i];
  const T* z_res = z + 2 * N * M;
  T* dz_res = dz + 2 * N * M;
  if (rule.permutations) {
    if constexpr (N <= 8) {
      T* w = scratch + 2 * N * N;
      T* p = scratch + N * N;
      permutation_mixture<N>(z_res, w, p);
      constexpr int R = factorial_v<N>;
      permutation_mixture_backward<N>(w, dp, w + R, dz_res);
    }
  } else {
    sinkhorn_backward<N>(z_res, dp, dz_res, rule, scratch + N * N);
  }
}

}  // namespace vwn::math
