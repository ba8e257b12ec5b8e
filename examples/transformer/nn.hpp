#pragma once
/// \file nn.hpp
/// Host building blocks of the reference transformer (decoder-only, pre-norm, no biases), each with a
/// forward and a hand-written backward. `Scalar` is float or double.
///
/// Conventions shared by every block:
///  - a batch of `B` sequences of `T` tokens is a row-major `(B*T) x width` matrix, sequence `b` in rows
///    `b*T .. b*T+T-1`; views (`matrix_cref` / `matrix_ref`) may have any outer stride, so column blocks of
///    a fused matrix (e.g. `q | k | v`) can be passed directly;
///  - the execution policy `vwn::host` comes first;
///  - `forward` fills a `workspace` with what `backward` needs (blocks that need nothing take none);
///  - `backward` overwrites input gradients (`dx`, `dq`, ...) and accumulates parameter gradients into `grads`
///    (cleared by `zero_grad()`), as in llm.c and PyTorch;
///  - blocks with parameters hold `params` and `grads` of the same shapes, with
///    `visit(f(name, data, size, weight_decay))` for the optimiser, as the other vwn modules do;
///  - sizes are checked once at the API boundary (std::invalid_argument naming what was expected and what was
///    got); class targets out of range throw std::out_of_range naming the position and the value.
///
/// The blocks:
/// ```
///   nn::rmsnorm<S>          norm(C);             norm.forward(host, x, y, ws);             // x, y: N x C
///                                                norm.backward(host, x, dy, dx, ws);
///   nn::linear<S>           proj(in, out);       proj.forward(host, x, y);                 // x: N x in, y: N x out
///                                                proj.backward(host, x, dy, dx);
///   nn::rope<S>             rot(hd, max_T);      rot.forward(host, q, T);                  // q: (B*T) x (H*hd), in place
///                                                rot.backward(host, dq, T);                // in place
///   nn::causal_attention<S> attn(H, hd);         attn.forward(host, q, k, v, T, y, ws);    // all (B*T) x (H*hd)
///                                                attn.backward(host, q, k, v, dy, dq, dk, dv, ws);
///   nn::swiglu<S>           ffn(C, F);           ffn.forward(host, x, y, ws);              // x, y: N x C
///                                                ffn.backward(host, x, dy, dx, ws);
///   nn::cross_entropy<S>    ce(V);               double L = ce.forward(host, logits, targets, ws); // N x V
///                                                ce.backward(host, targets, dlogits, ws, scale);
/// ```

#include <cmath>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <vwn/core/checks.hpp>
#include <vwn/core/config.hpp>
#include <vwn/core/random.hpp>
#include <vwn/detail/parallel.hpp>
#include <vwn/detail/rows.hpp>
#include <vwn/math/norm.hpp>

namespace vwn {

/// Building blocks of the reference transformer (host back end).
namespace nn {

/// RMSNorm over the rows of `x` (`N x C`): `y = x / sqrt(mean(x^2) + eps) * w`, `eps = vwn::norm_eps`,
/// weight `w` of length `C`.
template <class Scalar>
class rmsnorm {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Parameters (or their gradients).
  struct parameters {
    vector<Scalar> w;  ///< `C` scale (init 1), no weight decay
    /// Visits `f(name, data, size, weight_decay)`.
    template <class F>
    void visit(F&& f) {
      f("w", w.data(), index_t(w.size()), false);
    }
    /// Sets every entry to zero.
    void set_zero() { w.setZero(); }
  };
  /// Saved state between forward and backward.
  struct workspace {
    index_t rows = 0;     ///< N of the last forward
    vector<Scalar> rstd;  ///< `N` per-row 1/rms
  };

  parameters params;  ///< the weight
  parameters grads;   ///< accumulated gradient

  /// RMSNorm of width `C >= 1`, weight 1.
  explicit rmsnorm(index_t C) : C_(C) {
    detail::expect_positive("vwn::nn::rmsnorm", "width C", C);
    params.w.resize(C);
    grads.w.resize(C);
    reset_parameters();
    zero_grad();
  }

  /// Width `C`.
  index_t width() const { return C_; }
  /// Weight 1.
  void reset_parameters() { params.w.setOnes(); }
  /// Clears the accumulated gradient.
  void zero_grad() { grads.set_zero(); }

  /// `y` (`N x C`) from `x` (`N x C`); saves `rstd` (`N`).
  void forward(host_t, matrix_cref<Scalar> x, matrix_ref<Scalar> y, workspace& ws) const {
    const std::string_view where = "vwn::nn::rmsnorm::forward";
    const index_t N = detail::expect_tokens(where, "x", x, C_);
    detail::expect_shape(where, "y", y, N, C_);
    detail::expect_no_alias(where, "y", y, "x", x);
    ws.rows = N;
    ws.rstd.resize(N);
    detail::for_ranges(N, detail::elementwise_tasks, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r) {
        const Scalar rstd = math::inverse_rms(x.row(r).squaredNorm(), Scalar(C_));
        ws.rstd(r) = rstd;
        math::rms_forward(x.row(r).array(), rstd, params.w.transpose().array(), y.row(r).array());
      }
    });
  }

  /// `dx` (`N x C`, overwritten) from `dy` (`N x C`); accumulates the gradient of `w`.
  void backward(host_t, matrix_cref<Scalar> x, matrix_cref<Scalar> dy, matrix_ref<Scalar> dx, const workspace& ws) {
    const std::string_view where = "vwn::nn::rmsnorm::backward";
    if (ws.rows == 0) detail::fail(where, "workspace", "one filled by forward", "an empty workspace");
    const index_t N = ws.rows;
    detail::expect_shape(where, "x", x, N, C_);
    detail::expect_shape(where, "dy", dy, N, C_);
    detail::expect_shape(where, "dx", dx, N, C_);
    detail::expect_no_alias(where, "dx", dx, "x", x);
    detail::expect_no_alias(where, "dx", dx, "dy", dy);
    // Per-chunk partial dw, added in chunk order: the result does not depend on the thread count.
    const index_t chunks = detail::chunk_count(N);
    dw_.setZero(chunks, C_);  // (chunks, C)
    detail::for_tasks(
        chunks,
        [&](index_t c) {
          const index_t r0 = N * c / chunks, r1 = N * (c + 1) / chunks;
          detail::row_array<Scalar> u(C_);
          for (index_t r = r0; r < r1; ++r) {
            // u = x r, dw += dy u, dx = r (dy w - u mean(dy w u)) (math/norm.hpp).
            const Scalar rstd = ws.rstd(r);
            math::rms_unit(x.row(r).array(), rstd, u);
            dw_.row(c).array() += dy.row(r).array() * u;
            const Scalar proj =
                math::mean_of(dy.row(r).cwiseProduct(params.w.transpose()).dot(u.matrix()), Scalar(C_));
            dx.row(r).setZero();
            math::rms_backward<true>(dy.row(r).array() * params.w.transpose().array(), u, proj, rstd, dx.row(r).array());
          }
        },
        N >= detail::parallel_threshold);
    for (index_t c = 0; c < chunks; ++c) grads.w += dw_.row(c).transpose();
  }

 private:
  index_t C_;
  matrix<Scalar> dw_;  // (chunks, C) per-chunk partial gradients of w
};

/// Linear map without bias: `y = x W^T`, `x` of `N x in`, `W` of `out x in`, `y` of `N x out`.
template <class Scalar>
class linear {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Parameters (or their gradients).
  struct parameters {
    matrix<Scalar> W;  ///< `out x in` (init N(0, 1/in)), weight decay
    /// Visits `f(name, data, size, weight_decay)`.
    template <class F>
    void visit(F&& f) {
      f("W", W.data(), index_t(W.size()), true);
    }
    /// Sets every entry to zero.
    void set_zero() { W.setZero(); }
  };

  parameters params;  ///< the weight
  parameters grads;   ///< accumulated gradient

  /// Linear map `in -> out` (both >= 1), `W` drawn from N(0, 1/in) with `seed`.
  linear(index_t in, index_t out, std::uint64_t seed = 4) : in_(in), out_(out) {
    detail::expect_positive("vwn::nn::linear", "input width", in);
    detail::expect_positive("vwn::nn::linear", "output width", out);
    params.W.resize(out, in);
    grads.W.resize(out, in);
    reset_parameters(seed);
    zero_grad();
  }

  /// Input width.
  index_t in_width() const { return in_; }
  /// Output width.
  index_t out_width() const { return out_; }
  /// `W` from N(0, 1/in).
  void reset_parameters(std::uint64_t seed) {
    rng r(seed);
    r.fill_normal(params.W, 1.0 / std::sqrt(double(in_)));
  }
  /// Clears the accumulated gradient.
  void zero_grad() { grads.set_zero(); }

  /// `y = x W^T` (`N x out`) from `x` (`N x in`).
  void forward(host_t, matrix_cref<Scalar> x, matrix_ref<Scalar> y) const {
    const std::string_view where = "vwn::nn::linear::forward";
    const index_t N = detail::expect_tokens(where, "x", x, in_);
    detail::expect_shape(where, "y", y, N, out_);
    detail::expect_no_alias(where, "y", y, "x", x);
    detail::product(y, x, params.W.transpose());  // (N, out)
  }

  /// `dx = dy W` (`N x in`, overwritten) from `dy` (`N x out`); accumulates `dW += dy^T x`.
  void backward(host_t, matrix_cref<Scalar> x, matrix_cref<Scalar> dy, matrix_ref<Scalar> dx) {
    const std::string_view where = "vwn::nn::linear::backward";
    const index_t N = detail::expect_tokens(where, "x", x, in_);
    detail::expect_shape(where, "dy", dy, N, out_);
    detail::expect_shape(where, "dx", dx, N, in_);
    detail::expect_no_alias(where, "dx", dx, "x", x);
    detail::expect_no_alias(where, "dx", dx, "dy", dy);
    detail::product<true>(grads.W, dy.transpose(), x);  // (out, in)
    detail::product(dx, dy, params.W);                  // (N, in)
  }

 private:
  index_t in_, out_;
};

/// Rotary position embedding, rotate-half convention: within each head of width `hd` (even), the pair
/// `(x_i, x_{i+hd/2})`, `i < hd/2`, at position `p` is rotated by the angle `p * base^(-2i/hd)`. Applied in
/// place to `q` or `k` of `(B*T) x (heads*hd)`, positions `0..T-1` within each of the `B` sequences.
template <class Scalar>
class rope {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;

  /// Tables for head width `head_dim` (even, >= 2) and positions `0 .. max_tokens-1`; angles in double.
  rope(index_t head_dim, index_t max_tokens, double base = 10000.0) : hd_(head_dim), base_(base) {
    const std::string_view where = "vwn::nn::rope";
    if (head_dim < 2 || head_dim % 2 != 0)
      detail::fail(where, "head width hd", "an even number >= 2", std::to_string(head_dim));
    detail::expect_positive(where, "maximum sequence length", max_tokens);
    if (!(base > 0)) detail::fail(where, "base", "> 0", std::to_string(base));
    const index_t half = head_dim / 2;
    cos_.resize(max_tokens, half);
    sin_.resize(max_tokens, half);
    for (index_t i = 0; i < half; ++i) {
      const double freq = std::pow(base, -2.0 * double(i) / double(head_dim));
      for (index_t p = 0; p < max_tokens; ++p) {
        cos_(p, i) = Scalar(std::cos(double(p) * freq));
        sin_(p, i) = Scalar(std::sin(double(p) * freq));
      }
    }
  }

  /// Head width `hd`.
  index_t head_dim() const { return hd_; }
  /// Longest sequence the tables cover.
  index_t max_tokens() const { return cos_.rows(); }
  /// Frequency base.
  double base() const { return base_; }
  /// `cos(p * base^(-2i/hd))`, `max_tokens x hd/2`.
  const matrix<Scalar>& cos_table() const { return cos_; }
  /// `sin(p * base^(-2i/hd))`, `max_tokens x hd/2`.
  const matrix<Scalar>& sin_table() const { return sin_; }

  /// Rotates `x` (`(B*T) x (heads*hd)`) in place; `T` is the sequence length (`1 <= T <= max_tokens`).
  void forward(host_t, matrix_ref<Scalar> x, index_t T) const { apply("vwn::nn::rope::forward", x, T, Scalar(1)); }

  /// Gradient through `forward`: rotates `dx` (`(B*T) x (heads*hd)`) in place by the inverse angles.
  void backward(host_t, matrix_ref<Scalar> dx, index_t T) const {
    apply("vwn::nn::rope::backward", dx, T, Scalar(-1));
  }

  /// Rotates every row of `x` (`N x (heads*hd)`) in place as the token at `position` (`0 <= position < max_tokens`):
  /// the rotation `forward` gives row `position` of a sequence, for incremental decoding.
  void forward_at(host_t, matrix_ref<Scalar> x, index_t position) const {
    const std::string_view where = "vwn::nn::rope::forward_at";
    check_width(where, x);
    if (position < 0 || position >= max_tokens())
      detail::fail(where, "position", "0 <= position < " + std::to_string(max_tokens()) + " (the table size)",
                   std::to_string(position));
    for (index_t r = 0; r < x.rows(); ++r) rotate(detail::row_ptr(x, r), x.cols() / hd_, position, Scalar(1));
  }

 private:
  void check_width(std::string_view where, matrix_ref<Scalar> x) const {
    if (x.rows() == 0) detail::fail(where, "x token count", "at least 1 token", "0 (empty batch)");
    if (x.cols() == 0 || x.cols() % hd_ != 0)
      detail::fail(where, "x width", "a positive multiple of the head width " + std::to_string(hd_),
                   std::to_string(x.cols()) + " columns");
  }

  void apply(std::string_view where, matrix_ref<Scalar> x, index_t T, Scalar sign) const {
    check_width(where, x);
    detail::expect_sequences(where, "x", x.rows(), T);
    if (T > max_tokens())
      detail::fail(where, "sequence length T", "at most " + std::to_string(max_tokens()) + " (the table size)",
                   "T = " + std::to_string(T));
    const index_t heads = x.cols() / hd_;
    detail::for_ranges(x.rows(), detail::elementwise_tasks, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r) rotate(detail::row_ptr(x, r), heads, r % T, sign);
    });
  }

  // Rotates the `heads` heads of one row as position `p` (by the inverse angles for sign -1).
  void rotate(Scalar* row, index_t heads, index_t p, Scalar sign) const {
    const index_t half = hd_ / 2;
    for (index_t h = 0; h < heads; ++h) {
      Scalar* x1 = row + h * hd_;  // (hd/2) first halves
      Scalar* x2 = x1 + half;      // (hd/2) second halves
      for (index_t i = 0; i < half; ++i) {
        const Scalar c = cos_(p, i), s = sign * sin_(p, i);
        const Scalar a = x1[i], b = x2[i];
        x1[i] = a * c - b * s;
        x2[i] = a * s + b * c;
      }
    }
  }

  index_t hd_;
  double base_;
  matrix<Scalar> cos_;  // (max_tokens, hd/2)
  matrix<Scalar> sin_;  // (max_tokens, hd/2)
};

/// Causal multi-head self-attention core: per sequence `b` and head `h`,
/// `P = softmax(mask(Q K^T / sqrt(hd)))`, `y = P V`, with `Q, K, V` the `T x hd` column blocks of head `h`.
/// `q`, `k`, `v`, `y`: `(B*T) x (H*hd)` (after rope; the output projection is a separate `linear`).
template <class Scalar>
class causal_attention {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Saved state between forward and backward.
  struct workspace {
    index_t batch = 0;     ///< B of the last forward
    index_t tokens = 0;    ///< T of the last forward
    matrix<Scalar> probs;  ///< `B x H x T x T` as `(B*H*T) x T`; the block of (b, h) starts at row `(b*H + h)*T`
  };

  /// Attention over `heads >= 1` heads of width `head_dim >= 1`.
  causal_attention(index_t heads, index_t head_dim) : H_(heads), hd_(head_dim) {
    detail::expect_positive("vwn::nn::causal_attention", "head count", heads);
    detail::expect_positive("vwn::nn::causal_attention", "head width", head_dim);
  }

  /// Number of heads `H`.
  index_t heads() const { return H_; }
  /// Head width `hd`.
  index_t head_dim() const { return hd_; }
  /// Model width `H*hd`.
  index_t width() const { return H_ * hd_; }

  /// `y` (`(B*T) x (H*hd)`) from `q`, `k`, `v` (same shape); `T` is the sequence length. Saves the
  /// attention probabilities.
  void forward(host_t, matrix_cref<Scalar> q, matrix_cref<Scalar> k, matrix_cref<Scalar> v, index_t T,
               matrix_ref<Scalar> y, workspace& ws) const {
    const std::string_view where = "vwn::nn::causal_attention::forward";
    const index_t BT = detail::expect_tokens(where, "q", q, width());
    const index_t B = detail::expect_sequences(where, "q", BT, T);
    detail::expect_shape(where, "k", k, BT, width());
    detail::expect_shape(where, "v", v, BT, width());
    detail::expect_shape(where, "y", y, BT, width());
    detail::expect_no_alias(where, "y", y, "q", q);
    detail::expect_no_alias(where, "y", y, "k", k);
    detail::expect_no_alias(where, "y", y, "v", v);
    ws.batch = B;
    ws.tokens = T;
    ws.probs.resize(B * H_ * T, T);
    const Scalar scale = Scalar(1) / std::sqrt(Scalar(hd_));
    // One task per (sequence, head). Queries go in tiles of `tile` rows; tile [r0, r1) sees keys 0..r1-1
    // only, so the products skip most of the masked upper triangle.
    detail::for_tasks(B * H_, [&](index_t i) {
      const index_t b = i / H_, h = i % H_;
      const auto Q = q.block(b * T, h * hd_, T, hd_);  // (T, hd)
      const auto K = k.block(b * T, h * hd_, T, hd_);  // (T, hd)
      const auto V = v.block(b * T, h * hd_, T, hd_);  // (T, hd)
      auto Y = y.block(b * T, h * hd_, T, hd_);        // (T, hd)
      Eigen::Map<matrix<Scalar>> P(ws.probs.data() + i * T * T, T, T);  // (T, T)
      for (index_t r0 = 0; r0 < T; r0 += tile) {
        const index_t r1 = std::min(T, r0 + tile), n = r1 - r0;
        auto S = P.block(r0, 0, n, r1);  // (n, r1) scores, then probabilities
        S.noalias() = scale * Q.middleRows(r0, n) * K.topRows(r1).transpose();
        for (index_t t = r0; t < r1; ++t) {
          softmax(P.row(t).head(t + 1));  // keys 0..t
          P.row(t).tail(T - t - 1).setZero();
        }
        Y.middleRows(r0, n).noalias() = S * V.topRows(r1);  // (n, hd)
      }
    }, BT >= detail::parallel_threshold);
  }

  /// Incremental decoding: `y` (`1 x (H*hd)`) of the last token of a sequence whose keys and values so far are the
  /// `t >= 1` rows of `k` and `v` (`t x (H*hd)`, the last row that token's own); `q` (`1 x (H*hd)`) is its query.
  /// The same values as row `t-1` of `forward` on the whole sequence, up to the order of the sums in the products.
  /// Saves nothing (no backward).
  void forward_last(host_t, matrix_cref<Scalar> q, matrix_cref<Scalar> k, matrix_cref<Scalar> v,
                    matrix_ref<Scalar> y) const {
    const std::string_view where = "vwn::nn::causal_attention::forward_last";
    detail::expect_shape(where, "q", q, 1, width());
    const index_t t = detail::expect_tokens(where, "k", k, width());
    detail::expect_shape(where, "v", v, t, width());
    detail::expect_shape(where, "y", y, 1, width());
    detail::expect_no_alias(where, "y", y, "q", q);
    const Scalar scale = Scalar(1) / std::sqrt(Scalar(hd_));
    thread_local vector<Scalar> p;  // (t) scores, then probabilities; per thread, kept between calls
    p.resize(t);
    for (index_t h = 0; h < H_; ++h) {
      p.noalias() = scale * k.middleCols(h * hd_, hd_) * q.middleCols(h * hd_, hd_).transpose();  // (t)
      softmax(p);
      y.middleCols(h * hd_, hd_).noalias() = p.transpose() * v.middleCols(h * hd_, hd_);  // (1, hd)
    }
  }

  /// `dq`, `dk`, `dv` (`(B*T) x (H*hd)`, overwritten) from `dy` and the inputs of the forward that filled `ws`.
  void backward(host_t, matrix_cref<Scalar> q, matrix_cref<Scalar> k, matrix_cref<Scalar> v, matrix_cref<Scalar> dy,
                matrix_ref<Scalar> dq, matrix_ref<Scalar> dk, matrix_ref<Scalar> dv, const workspace& ws) const {
    const std::string_view where = "vwn::nn::causal_attention::backward";
    if (ws.tokens == 0) detail::fail(where, "workspace", "one filled by forward", "an empty workspace");
    const index_t B = ws.batch, T = ws.tokens, BT = B * T;
    detail::expect_shape(where, "q", q, BT, width());
    detail::expect_shape(where, "k", k, BT, width());
    detail::expect_shape(where, "v", v, BT, width());
    detail::expect_shape(where, "dy", dy, BT, width());
    detail::expect_shape(where, "dq", dq, BT, width());
    detail::expect_shape(where, "dk", dk, BT, width());
    detail::expect_shape(where, "dv", dv, BT, width());
    for (const matrix_cref<Scalar>* in : {&q, &k, &v, &dy}) {
      detail::expect_no_alias(where, "dq", dq, "an input", *in);
      detail::expect_no_alias(where, "dk", dk, "an input", *in);
      detail::expect_no_alias(where, "dv", dv, "an input", *in);
    }
    const Scalar scale = Scalar(1) / std::sqrt(Scalar(hd_));
    detail::for_tasks(B * H_, [&](index_t i) {
      thread_local matrix<Scalar> dP;  // (T, T) gradient of P, then of the scores; per thread, kept between calls
      dP.resize(T, T);
      const index_t b = i / H_, h = i % H_;
      const auto Q = q.block(b * T, h * hd_, T, hd_);    // (T, hd)
      const auto K = k.block(b * T, h * hd_, T, hd_);    // (T, hd)
      const auto V = v.block(b * T, h * hd_, T, hd_);    // (T, hd)
      const auto dY = dy.block(b * T, h * hd_, T, hd_);  // (T, hd)
      const Eigen::Map<const matrix<Scalar>> P(ws.probs.data() + i * T * T, T, T);  // (T, T)
      // Query tiles as in forward: rows [r0, r1) of dP and dS exist for keys 0..r1-1 only.
      for (index_t r0 = 0; r0 < T; r0 += tile) {
        const index_t r1 = std::min(T, r0 + tile), n = r1 - r0;
        auto dS = dP.block(r0, 0, n, r1);  // (n, r1)
        dS.noalias() = dY.middleRows(r0, n) * V.topRows(r1).transpose();
        // Softmax backward per row: dS = P . (dP - <P, dP>); masked entries have P = 0, so dS = 0 there.
        for (index_t t = r0; t < r1; ++t) {
          const auto p = P.row(t).head(r1);
          auto d = dP.row(t).head(r1);
          const Scalar proj = p.dot(d);
          d = (p.array() * (d.array() - proj)).matrix();
        }
        dq.block(b * T + r0, h * hd_, n, hd_).noalias() = scale * dS * K.topRows(r1);
      }
      // Key tiles [c0, c1): only queries c0..T-1 see them, and their rows of P and dS cover these keys.
      for (index_t c0 = 0; c0 < T; c0 += tile) {
        const index_t c1 = std::min(T, c0 + tile), n = c1 - c0, rows = T - c0;
        dv.block(b * T + c0, h * hd_, n, hd_).noalias() = P.block(c0, c0, rows, n).transpose() * dY.bottomRows(rows);
        dk.block(b * T + c0, h * hd_, n, hd_).noalias() =
            scale * dP.block(c0, c0, rows, n).transpose() * Q.bottomRows(rows);
      }
    }, BT >= detail::parallel_threshold);
  }

 private:
  // Softmax of one row of scores, in place.
  template <class Row>
  static void softmax(Row&& row) {
    const Scalar mx = row.maxCoeff();
    row = (row.array() - mx).exp().matrix();
    row /= row.sum();
  }

  static constexpr index_t tile = 64;  // query (and key) rows per tile
  index_t H_, hd_;
};

/// SwiGLU feed-forward: `a = x W1^T`, `g = x W3^T` (`N x F`), `h = silu(a) . g`, `y = h W2^T` (`N x C`);
/// `W1`, `W3` of `F x C`, `W2` of `C x F`.
template <class Scalar>
class swiglu {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Parameters (or their gradients).
  struct parameters {
    matrix<Scalar> W1;  ///< `F x C` gate projection (init N(0, 1/C)), weight decay
    matrix<Scalar> W2;  ///< `C x F` output projection (init N(0, 1/F)), weight decay
    matrix<Scalar> W3;  ///< `F x C` value projection (init N(0, 1/C)), weight decay
    /// Visits `f(name, data, size, weight_decay)`.
    template <class F>
    void visit(F&& f) {
      f("W1", W1.data(), index_t(W1.size()), true);
      f("W2", W2.data(), index_t(W2.size()), true);
      f("W3", W3.data(), index_t(W3.size()), true);
    }
    /// Sets every entry to zero.
    void set_zero() {
      W1.setZero();
      W2.setZero();
      W3.setZero();
    }
  };
  /// Saved state between forward and backward.
  struct workspace {
    index_t rows = 0;  ///< N of the last forward
    matrix<Scalar> a;  ///< `N x F` gate pre-activation `x W1^T`
    matrix<Scalar> g;  ///< `N x F` value `x W3^T`
    matrix<Scalar> h;  ///< `N x F` hidden `silu(a) . g`
  };

  parameters params;  ///< the weights
  parameters grads;   ///< accumulated gradients

  /// FFN of width `C >= 1` and hidden width `F >= 1`, weights drawn with `seed`.
  swiglu(index_t C, index_t F, std::uint64_t seed = 5) : C_(C), F_(F) {
    detail::expect_positive("vwn::nn::swiglu", "width C", C);
    detail::expect_positive("vwn::nn::swiglu", "hidden width F", F);
    for (parameters* p : {&params, &grads}) {
      p->W1.resize(F, C);
      p->W2.resize(C, F);
      p->W3.resize(F, C);
    }
    reset_parameters(seed);
    zero_grad();
  }

  /// Width `C`.
  index_t width() const { return C_; }
  /// Hidden width `F`.
  index_t hidden_width() const { return F_; }
  /// `W1`, `W3` from N(0, 1/C), `W2` from N(0, 1/F).
  void reset_parameters(std::uint64_t seed) {
    rng r(seed);
    r.fill_normal(params.W1, 1.0 / std::sqrt(double(C_)));
    r.fill_normal(params.W2, 1.0 / std::sqrt(double(F_)));
    r.fill_normal(params.W3, 1.0 / std::sqrt(double(C_)));
  }
  /// Clears the accumulated gradients.
  void zero_grad() { grads.set_zero(); }

  /// `y` (`N x C`) from `x` (`N x C`); saves `a`, `g`, `h`.
  void forward(host_t, matrix_cref<Scalar> x, matrix_ref<Scalar> y, workspace& ws) const {
    const std::string_view where = "vwn::nn::swiglu::forward";
    const index_t N = detail::expect_tokens(where, "x", x, C_);
    detail::expect_shape(where, "y", y, N, C_);
    detail::expect_no_alias(where, "y", y, "x", x);
    ws.rows = N;
    ws.a.resize(N, F_);
    ws.g.resize(N, F_);
    ws.h.resize(N, F_);
    // Every step is row-local: one task per row panel does the whole FFN for its rows.
    detail::for_ranges(N, detail::product_panels(N), [&](index_t r0, index_t r1) {
      const index_t n = r1 - r0;
      const auto xs = x.middleRows(r0, n);  // (n, C)
      auto a = ws.a.middleRows(r0, n);      // (n, F)
      auto g = ws.g.middleRows(r0, n);      // (n, F)
      auto h = ws.h.middleRows(r0, n);      // (n, F)
      detail::serial_product(a, xs, params.W1.transpose());
      detail::serial_product(g, xs, params.W3.transpose());
      h = (a.array() / (Scalar(1) + (-a.array()).exp()) * g.array()).matrix();  // silu(a) g
      detail::serial_product(y.middleRows(r0, n), h, params.W2.transpose());  // (n, C)
    });
  }

  /// `dx` (`N x C`, overwritten) from `dy` (`N x C`); accumulates the gradients of `W1`, `W2`, `W3`.
  void backward(host_t, matrix_cref<Scalar> x, matrix_cref<Scalar> dy, matrix_ref<Scalar> dx, const workspace& ws) {
    const std::string_view where = "vwn::nn::swiglu::backward";
    if (ws.rows == 0) detail::fail(where, "workspace", "one filled by forward", "an empty workspace");
    const index_t N = ws.rows;
    detail::expect_shape(where, "x", x, N, C_);
    detail::expect_shape(where, "dy", dy, N, C_);
    detail::expect_shape(where, "dx", dx, N, C_);
    detail::expect_no_alias(where, "dx", dx, "x", x);
    detail::expect_no_alias(where, "dx", dx, "dy", dy);
    da_.resize(N, F_);
    dg_.resize(N, F_);
    // Row-local part, one task per row panel: dh = dy W2, then da = dh g silu'(a) (with
    // silu'(a) = sig (1 + a (1 - sig))), dg = dh silu(a), and dx = da W1 + dg W3.
    detail::for_ranges(N, detail::product_panels(N), [&](index_t r0, index_t r1) {
      const index_t n = r1 - r0;
      auto da = da_.middleRows(r0, n);  // (n, F) dh, then da
      auto dg = dg_.middleRows(r0, n);  // (n, F)
      detail::serial_product(da, dy.middleRows(r0, n), params.W2);
      thread_local Eigen::Array<Scalar, 1, Eigen::Dynamic> sig;  // (F) sigmoid(a) of one row
      for (index_t r = 0; r < n; ++r) {
        const auto ar = ws.a.row(r0 + r).array();
        sig = (Scalar(1) + (-ar).exp()).inverse();
        const auto dh = da.row(r).array();
        dg.row(r) = (dh * ar * sig).matrix();
        da.row(r) = (dh * ws.g.row(r0 + r).array() * sig * (Scalar(1) + ar * (Scalar(1) - sig))).matrix();
      }
      auto dxs = dx.middleRows(r0, n);  // (n, C)
      detail::serial_product(dxs, da, params.W1);
      detail::serial_product<true>(dxs, dg, params.W3);
    });
    // Weight gradients: reductions over the rows, split by rows of the gradient instead.
    detail::product<true>(grads.W2, dy.transpose(), ws.h);  // (C, F)
    detail::product<true>(grads.W1, da_.transpose(), x);    // (F, C)
    detail::product<true>(grads.W3, dg_.transpose(), x);    // (F, C)
  }

 private:
  index_t C_, F_;
  matrix<Scalar> da_, dg_;  // (N, F) backward scratch, kept between calls
};

/// Softmax cross-entropy over `V` classes: `L = mean_i (logsumexp(logits_i) - logits_i[target_i])`, logits
/// `N x V`, targets of length `N`, each in `[0, V)`.
template <class Scalar>
class cross_entropy {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Saved state between forward and backward.
  struct workspace {
    index_t rows = 0;      ///< N of the last forward
    matrix<Scalar> probs;  ///< `N x V` softmax of the logits
    Eigen::VectorXd loss;  ///< `N` per-row losses
  };

  /// Loss over `V >= 1` classes.
  explicit cross_entropy(index_t V) : V_(V) { detail::expect_positive("vwn::nn::cross_entropy", "class count V", V); }

  /// Number of classes `V`.
  index_t classes() const { return V_; }

  /// Mean loss over the `N` rows of `logits` (`N x V`); saves the softmax. Stable (the row maximum is
  /// subtracted); the mean is summed in double in row order.
  double forward(host_t, matrix_cref<Scalar> logits, std::span<const std::int32_t> targets, workspace& ws) const {
    const std::string_view where = "vwn::nn::cross_entropy::forward";
    const index_t N = detail::expect_tokens(where, "logits", logits, V_);
    check_targets(where, targets, N);
    ws.rows = N;
    ws.probs.resize(N, V_);
    ws.loss.resize(N);
    detail::for_ranges(N, detail::elementwise_tasks, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r) {
        const auto z = logits.row(r);  // (V)
        const Scalar mx = z.maxCoeff();
        auto p = ws.probs.row(r);  // (V)
        p = (z.array() - mx).exp().matrix();
        const Scalar sum = p.sum();
        p /= sum;
        ws.loss(r) = double(std::log(sum)) + double(mx) - double(z(targets[std::size_t(r)]));
      }
    });
    double total = 0;
    for (index_t r = 0; r < N; ++r) total += ws.loss(r);
    return total / double(N);
  }

  /// `dlogits = scale * (softmax - onehot(targets)) / N` (`N x V`, overwritten; may be the logits' own
  /// storage); `scale` folds in a loss weight (e.g. the MTP lambda).
  void backward(host_t, std::span<const std::int32_t> targets, matrix_ref<Scalar> dlogits, const workspace& ws,
                Scalar scale = Scalar(1)) const {
    const std::string_view where = "vwn::nn::cross_entropy::backward";
    if (ws.rows == 0) detail::fail(where, "workspace", "one filled by forward", "an empty workspace");
    const index_t N = ws.rows;
    check_targets(where, targets, N);
    detail::expect_shape(where, "dlogits", dlogits, N, V_);
    const Scalar s = scale / Scalar(N);
    detail::for_ranges(N, detail::elementwise_tasks, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r) {
        dlogits.row(r) = s * ws.probs.row(r);
        dlogits(r, targets[std::size_t(r)]) -= s;
      }
    });
  }

 private:
  // Length N and every target in [0, V); std::out_of_range names the position and the value.
  void check_targets(std::string_view where, std::span<const std::int32_t> targets, index_t N) const {
    if (index_t(targets.size()) != N)
      detail::fail(where, "target count", std::to_string(N) + " (one per logits row)", std::to_string(targets.size()));
    for (std::size_t i = 0; i < targets.size(); ++i)
      if (targets[i] < 0 || targets[i] >= V_)
        throw std::out_of_range(std::string(where) + ": target at position " + std::to_string(i) + " is " +
                                std::to_string(targets[i]) + ", expected 0 <= target < class count " +
                                std::to_string(V_));
  }

  index_t V_;
};

}  // namespace nn
}  // namespace vwn
