#pragma once
/// \file mhc.hpp
/// The manifold-constrained connection families of a GHC on the host back end: `vwn::basic_ghc<M, N, Scalar,
/// Dynamic, C>` for `C` = `mhc_connection`, `mhc_lite_connection` or `mhc_v4_connection` (<vwn/core/connection.hpp>),
/// with the same calls, checks and workspace protocol as the VWN family of <vwn/ghc.hpp>:
/// ```
///   vwn::dghc<1, 4, float, vwn::mhc_connection> layer(D);  // mHC at the paper's n = 4
///   layer.forward_width(vwn::host, H, X, C, ws);  ...     // as any GHC
/// ```
/// Per token, `K = 2 n m + R` logits `z = [z_pre | z_post | z_res]` (`R = n^2`, or `n!` for mHC-lite):
///   static    `z = bias`                                           (`b_pre`, `b_post`, `b_res`)
///   dynamic   `r = 1 / rms(H_t)` over all `n db` values of the token, `q = r (H_t phi)` (`phi`: `n db x K`),
///             `z_k = gate_g q_k + bias_k` with one gate per group (mHC eqs. 14-16, the RMSNorm weight folded in `phi`)
/// and the coefficients `[a | b]` from `z` by `math::manifold_coefficients` (<vwn/math/mhc.hpp>): `sigmoid` pre
/// (`n x m`: slot `j` into segment `i`), `2 sigmoid` post (`n x m`), the carry projected onto the doubly stochastic
/// matrices. The width and depth connections given `[a | b]` are those of every GHC (`detail::ghc_token_ops`). For
/// `m = 1` this is mHC as the paper defines it; for `m > 1` the pre map sends the `n` slots to `m` segments and the
/// post map the `m` segments to `n` slots, from the same flattened, normalised token (docs/mhc.md).

#include <algorithm>
#include <array>
#include <string>
#include <utility>
#include <vector>

#include "ghc.hpp"
#include "math/mhc.hpp"

namespace vwn {

/// The logit gap of the initialisation: every logit that should vanish starts `init_logit_gap` below the ones that
/// should not (mHC-lite's published initialisation uses 8), so that the initial coefficients are the VWN paper's
/// identity initialisation (eqs. 15, 16) within `sigmoid(-8) = 3.4e-4` (docs/mhc.md).
inline constexpr double init_logit_gap = 8;

/// The initial gate of each group of a dynamic manifold GHC (the paper's `alpha`, Table 5: 0.01).
inline constexpr double init_gate = 0.01;

/// The parameter tensors of a manifold GHC of shape `(M, N)` with `R` carry logits, in visit order: `b_pre` (`n x m`),
/// `b_post` (`n x m`), `b_res` (`n x n`, or `n! x 1`), and for the dynamic family `phi` (`n db x K`) and `gate` (3).
/// Weight decay applies to `phi` and the gates (as to DGHC's projections and scales), never to the biases.
template <int M, int N, bool Dynamic, bool Permutations>
constexpr auto manifold_tensors(index_t db) {
  constexpr int R = carry_logits(Permutations, N), K = 2 * N * M + R;
  constexpr int count = Dynamic ? 5 : 3;
  const tensor_spec all[5] = {{"b_pre", N, M, false},
                              {"b_post", N, M, false},
                              {"b_res", Permutations ? R : N, Permutations ? 1 : N, false},
                              {"phi", N * db, K, true},
                              {"gate", 3, 1, true}};
  std::array<tensor_spec, count> out{};
  for (int i = 0; i < count; ++i) out[std::size_t(i)] = all[i];
  return out;
}

/// Parameters (or their gradients) of a manifold GHC: the biases as one vector of `K` logits
/// `[b_pre | b_post | b_res]` (each block row-major), and for the dynamic family the projection and gates.
template <int M, int N, class Scalar, bool Dynamic, bool Permutations>
struct manifold_parameters {
  /// Carry logits: `n^2` (Sinkhorn) or `n!` (permutations).
  static constexpr int R = carry_logits(Permutations, N);
  /// Logits per token.
  static constexpr int K = 2 * N * M + R;
  vector<Scalar> bias;  ///< `K`: the static logits `[b_pre | b_post | b_res]`
  matrix<Scalar> phi;   ///< dynamic: `n db x K` projection of the flattened token
  vector<Scalar> gate;  ///< dynamic: `[alpha_pre, alpha_post, alpha_res]`

  /// Sets every entry to zero (used for gradients).
  void set_zero() {
    bias.setZero();
    phi.setZero();
    gate.setZero();
  }
  /// Visits `f(name, data, size, weight_decay)` for each tensor of `manifold_tensors`, in that order.
  template <class F>
  void visit(F&& f) {
    Scalar* data[5] = {bias.data(), bias.data() + N * M, bias.data() + 2 * N * M, phi.data(), gate.data()};
    int i = 0;
    for (const tensor_spec& t : manifold_tensors<M, N, Dynamic, Permutations>(phi.rows() / N))
      f(t.name, data[i++], t.size(), t.decay);
  }
};

/// Host-side saved state of a manifold GHC between its forward and backward calls.
template <class Scalar>
struct manifold_workspace {
  index_t tokens = 0;  ///< T of the last forward_width
  vector<Scalar> r;    ///< dynamic: `T` inverse RMS of each token's `n db` values
  matrix<Scalar> q;    ///< dynamic: `T x K` normalised projections `r (H_t phi)`
  matrix<Scalar> ab;   ///< `T x n(2m+n)` coefficients (dynamic), `1 x n(2m+n)` (static)
  matrix<Scalar> dB;   ///< dynamic: `T x n m` gradient of each token's `b` (from backward_depth)
};

/// The host implementation of every manifold family of shape `(M, N)`: `basic_ghc<M, N, Scalar, Dynamic, C>`
/// derives from it with `C`'s rule (families with the same carry kind share the code).
template <int M, int N, class Scalar, bool Dynamic, bool Permutations>
class manifold_ghc : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using shape = width_shape<M, N>;
  using scalar = Scalar;
  using parameters = manifold_parameters<M, N, Scalar, Dynamic, Permutations>;
  using workspace = manifold_workspace<Scalar>;
  /// Per-token coefficient block `[a | b]`, `n x (2m+n)`.
  using coefficients = fixed_matrix<Scalar, N, 2 * M + N>;
  /// Whether the coefficients depend on the input.
  static constexpr bool is_dynamic = Dynamic;
  /// Logits per token.
  static constexpr int logits = parameters::K;

  parameters params;  ///< the parameters (see `reset_parameters`)
  parameters grads;   ///< accumulated gradients, same shapes

  /// The projection rule (Sinkhorn's iterations and epsilons, the maps).
  const manifold_rule& rule() const { return rule_; }

  /// Restores the initialisation: the biases put the VWN identity initialisation's 1s at logit 0 (post, carry) or
  /// `+init_logit_gap` (pre) and its 0s `init_logit_gap` lower; `phi = 0`, every gate `init_gate`.
  void reset_parameters() {
    const Scalar gap = Scalar(init_logit_gap);
    Scalar* pre = params.bias.data();
    Scalar* post = pre + N * M;
    Scalar* res = post + N * M;
    for (int j = 0; j < N; ++j)
      for (int i = 0; i < M; ++i) {
        pre[j * M + i] = j == i ? gap : -gap;
        post[j * M + i] = i == j % M ? Scalar(0) : -gap;
      }
    if constexpr (Permutations) {
      for (int p = 0; p < parameters::R; ++p) res[p] = p == 0 ? Scalar(0) : -gap;  // p = 0: the identity
    } else {
      for (int i = 0; i < N; ++i)
        for (int j = 0; j < N; ++j) res[i * N + j] = i == j ? Scalar(0) : -gap;
    }
    if constexpr (Dynamic) {
      params.phi.setZero();
      params.gate.setConstant(Scalar(init_gate));
    }
  }

  /// Clears the accumulated gradients.
  void zero_grad() { grads.set_zero(); }

  /// Width connection, forward (as `vwn::basic_ghc::forward_width`).
  void forward_width(host_t, matrix_cref<Scalar> H, matrix_ref<Scalar> X, matrix_ref<Scalar> C, workspace& ws) const;
  /// Depth connection, forward (as `vwn::basic_ghc::forward_depth`; `H_out` may be `C`).
  void forward_depth(host_t, matrix_cref<Scalar> Z, matrix_cref<Scalar> C, matrix_ref<Scalar> H_out,
                     const workspace& ws) const;
  /// Depth connection, backward (as `vwn::basic_ghc::backward_depth`): the static family adds the gradient of
  /// `b_post`; the dynamic one keeps each token's `d b` for `backward_width`.
  void backward_depth(host_t, matrix_cref<Scalar> dH_out, matrix_cref<Scalar> Z, matrix_ref<Scalar> dZ, workspace& ws);
  /// Width connection, backward (as `vwn::basic_ghc::backward_width`), through the maps, the carry's projection
  /// (recomputed from the logits) and, dynamic, the projection and the token's RMS back into `H`.
  void backward_width(host_t, matrix_cref<Scalar> H, matrix_cref<Scalar> dX, matrix_cref<Scalar> dC,
                      matrix_ref<Scalar> dH, workspace& ws);
  /// The coefficients `[a | b]` the last forward used for token `t`.
  coefficients token_coefficients(const workspace& ws, index_t t) const {
    return Eigen::Map<const coefficients>(ws.ab.data() + (Dynamic ? t : 0) * N * (2 * M + N));
  }

  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;

 protected:
  manifold_ghc(std::string name, index_t D, const manifold_rule& rule)
      : widths<M, N>(name + "::basic_ghc", D), rule_(rule), name_(std::move(name)) {
    if (!rule.permutations && rule.iterations < 1)
      detail::fail(name_, "Sinkhorn iterations", "at least 1", std::to_string(rule.iterations));
    for (parameters* p : {&params, &grads}) {
      p->bias.resize(parameters::K);
      p->phi.resize(Dynamic ? N * db_ : 0, parameters::K);
      p->gate.resize(Dynamic ? 3 : 0);
    }
    reset_parameters();
    zero_grad();
  }

 private:
  static constexpr int KC = 2 * M + N;  // coefficient columns
  using slot_matrix = typename detail::ghc_token_ops<M, N, Scalar>::slot_matrix;

  detail::ghc_checks checks(const std::string& where) const { return {where, D_, wide_width()}; }
  detail::ghc_token_ops<M, N, Scalar> ops() const { return {db_}; }
  int scratch_size() const { return math::manifold_scratch(rule_, N); }

  // The gradient of the biases from one `[da | db]` block of the static family (the maps depend on the biases only).
  void add_static_gradient(const coefficients& dab) {
    std::vector<Scalar> scratch(static_cast<std::size_t>(scratch_size())), dz(parameters::K);
    math::manifold_coefficients_backward<M, N>(params.bias.data(), dab.data(), dz.data(), rule_, scratch.data());
    grads.bias += Eigen::Map<const vector<Scalar>>(dz.data(), parameters::K);
  }

  manifold_rule rule_;
  std::string name_;
  using widths<M, N>::D_;
  using widths<M, N>::db_;
};

template <int M, int N, class Scalar, bool Dynamic, bool Permutations>
void manifold_ghc<M, N, Scalar, Dynamic, Permutations>::forward_width(host_t, matrix_cref<Scalar> H,
                                                                      matrix_ref<Scalar> X, matrix_ref<Scalar> C,
                                                                      workspace& ws) const {
  const std::string where = name_ + "::forward_width";
  const index_t T = checks(where).forward_width(H, X, C);
  constexpr int K = parameters::K;
  ws.tokens = T;
  ws.ab.resize(Dynamic ? T : 1, N * KC);
  const auto ops = this->ops();
  if constexpr (Dynamic) {
    ws.r.resize(T);
    ws.q.resize(T, K);
    ws.dB.resize(T, N * M);
    detail::gemm<Scalar, false, false, false>(ws.q, H, params.phi);  // H_t phi, normalised per token below
    const Scalar width = Scalar(N * db_);
    detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
      std::vector<Scalar> scratch(static_cast<std::size_t>(scratch_size())), z(K);
      for (index_t t = t0; t < t1; ++t) {
        const Scalar r = math::inverse_rms(H.row(t).squaredNorm(), width);
        ws.r(t) = r;
        Scalar* q = ws.q.data() + t * K;
        for (int k = 0; k < K; ++k) math::projection_from_raw(q[k], r, q[k]);
        math::manifold_logits<M, N>(q, params.gate.data(), params.bias.data(), z.data(), K);
        Scalar* ab = ws.ab.data() + t * N * KC;
        math::manifold_coefficients<M, N>(z.data(), ab, rule_, scratch.data());
        ops.mix(Eigen::Map<const coefficients>(ab), H, X, C, t);
      }
    });
  } else {
    std::vector<Scalar> scratch(static_cast<std::size_t>(scratch_size()));
    math::manifold_coefficients<M, N>(params.bias.data(), ws.ab.data(), rule_, scratch.data());
    const coefficients ab = token_coefficients(ws, 0);
    detail::for_chunks(T, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
      for (index_t t = t0; t < t1; ++t) ops.mix(ab, H, X, C, t);
    });
  }
}

template <int M, int N, class Scalar, bool Dynamic, bool Permutations>
void manifold_ghc<M, N, Scalar, Dynamic, Permutations>::forward_depth(host_t, matrix_cref<Scalar> Z,
                                                                      matrix_cref<Scalar> C, matrix_ref<Scalar> H_out,
                                                                      const workspace& ws) const {
  const std::string where = name_ + "::forward_depth";
  const bool in_place = checks(where).forward_depth(ws.tokens, Z, C, H_out);
  const auto ops = this->ops();
  detail::for_chunks(ws.tokens, detail::reduction_chunks, [&](index_t, index_t t0, index_t t1) {
    detail::row_array<Scalar> acc(db_);
    for (index_t t = t0; t < t1; ++t) ops.depth(token_coefficients(ws, t), Z, C, H_out, t, in_place, acc);
  });
}

template <int M, int N, class Scalar, bool Dynamic, bool Permutations>
void manifold_ghc<M, N, Scalar, Dynamic, Permutations>::backward_depth(host_t, matrix_cref<Scalar> dH_out,
                                                                       matrix_cref<Scalar> Z, matrix_ref<Scalar> dZ,
                                                                       workspace& ws) {
  const std::string where = name_ + "::backward_depth";
  checks(where).backward_depth(ws.tokens, dH_out, Z, dZ);
  const index_t T = ws.tokens;
  const index_t chunks = detail::chunk_count(T);
  const auto ops = this->ops();
  std::vector<fixed_matrix<Scalar, N, M>> partial(std::size_t(chunks), fixed_matrix<Scalar, N, M>::Zero());
  detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
    for (index_t t = t0; t < t1; ++t) {
      ops.depth_backward(token_coefficients(ws, t), dH_out, dZ, t);
      // d b = dH_out Z^T, a reduction over the slot width.
      if constexpr (Dynamic) {
        Eigen::Map<fixed_matrix<Scalar, N, M>> dbt(ws.dB.data() + t * N * M);
        detail::small_product_nt<false>(dbt, ops.slots(dH_out, t), ops.segments(Z, t));
      } else {
        detail::small_product_nt<true>(partial[std::size_t(c)], ops.slots(dH_out, t), ops.segments(Z, t));
      }
    }
  });
  if constexpr (!Dynamic) {
    coefficients dab = coefficients::Zero();
    for (const auto& p : partial) dab.template rightCols<M>() += p;
    add_static_gradient(dab);
  }
}

template <int M, int N, class Scalar, bool Dynamic, bool Permutations>
void manifold_ghc<M, N, Scalar, Dynamic, Permutations>::backward_width(host_t, matrix_cref<Scalar> H,
                                                                       matrix_cref<Scalar> dX, matrix_cref<Scalar> dC,
                                                                       matrix_ref<Scalar> dH, workspace& ws) {
  const std::string where = name_ + "::backward_width";
  checks(where).backward_width(ws.tokens, H, dX, dC, dH);
  constexpr int K = parameters::K;
  const index_t T = ws.tokens;
  const index_t chunks = detail::chunk_count(T);
  const auto ops = this->ops();
  struct partial_grads {
    coefficients d_static = coefficients::Zero();             // static: [da | 0]
    vector<Scalar> d_bias;                                      // dynamic: the biases
    Scalar d_gate[3] = {Scalar(0), Scalar(0), Scalar(0)};
  };
  std::vector<partial_grads> partial(static_cast<std::size_t>(chunks));
  matrix<Scalar> dS;  // dynamic: T x K gradient of the raw projection H_t phi
  if constexpr (Dynamic) dS.resize(T, K);
  const Scalar width = Scalar(N * db_);
  detail::for_chunks(T, chunks, [&](index_t c, index_t t0, index_t t1) {
    partial_grads& pg = partial[std::size_t(c)];
    if constexpr (Dynamic) pg.d_bias.setZero(K);
    slot_matrix dHt(N, db_);
    std::vector<Scalar> scratch(static_cast<std::size_t>(scratch_size())), z(K), dz(K);
    for (index_t t = t0; t < t1; ++t) {
      fixed_matrix<Scalar, N, M + N> da;
      ops.mix_backward(token_coefficients(ws, t), H, dX, dC, t, dHt, da);
      if constexpr (Dynamic) {
        coefficients dab;
        dab << da, Eigen::Map<const fixed_matrix<Scalar, N, M>>(ws.dB.data() + t * N * M);
        const Scalar* q = ws.q.data() + t * K;
        math::manifold_logits<M, N>(q, params.gate.data(), params.bias.data(), z.data(), K);
        math::manifold_coefficients_backward<M, N>(z.data(), dab.data(), dz.data(), rule_, scratch.data());
        pg.d_bias += Eigen::Map<const vector<Scalar>>(dz.data(), K);
        Scalar* dq = dS.data() + t * K;
        math::manifold_logits_backward<M, N>(q, params.gate.data(), dz.data(), dq, pg.d_gate, K);
        // Through q = r (H_t phi): dS = r dq, and through r the RMSNorm's projection, dH_t -= r^2 mean(dq q) H_t.
        Scalar s = Scalar(0);
        for (int k = 0; k < K; ++k) s += dq[k] * q[k];
        const Scalar r = ws.r(t), proj = math::mean_of(s, width);
        for (int k = 0; k < K; ++k) dq[k] *= r;
        const Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>> Ht(detail::row_ptr(H, t), N * db_);
        Eigen::Map<Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(detail::row_ptr(dH, t), N * db_) =
            Eigen::Map<const Eigen::Matrix<Scalar, 1, Eigen::Dynamic>>(dHt.data(), N * db_) - (r * r * proj) * Ht;
      } else {
        pg.d_static.template leftCols<M + N>() += da;
        std::copy_n(dHt.data(), N * db_, detail::row_ptr(dH, t));
      }
    }
  });
  if constexpr (Dynamic) {
    detail::gemm<Scalar, true, false, true>(dH, dS, params.phi);  // dH_t += dS_t phi^T
    detail::gemm<Scalar, true, true, false>(grads.phi, H, dS);    // dphi += H^T dS
    for (const partial_grads& pg : partial) {
      grads.bias += pg.d_bias;
      for (int g = 0; g < 3; ++g) grads.gate(g) += pg.d_gate[g];
    }
  } else {
    coefficients dab = coefficients::Zero();
    for (const partial_grads& pg : partial) dab += pg.d_static;
    add_static_gradient(dab);
  }
}

/// A GHC of a manifold-constrained family `Connection` (`mhc_connection`, `mhc_lite_connection`,
/// `mhc_v4_connection`): the calls of every GHC; parameters `b_pre`, `b_post`, `b_res` (and `phi`, `gate` when
/// dynamic). Use the aliases: `vwn::dghc<1, 4, float, vwn::mhc_connection>`.
template <int M, int N, class Scalar, bool Dynamic, class Connection>
  requires(Connection::manifold)
class basic_ghc<M, N, Scalar, Dynamic, Connection>
    : public manifold_ghc<M, N, Scalar, Dynamic, Connection::rule.permutations> {
  static_assert(N <= Connection::max_n,
                "vwn: mHC-lite mixes all n! permutation matrices and is offered for n <= 5 (120 of them)");
  using base = manifold_ghc<M, N, Scalar, Dynamic, Connection::rule.permutations>;

 public:
  /// The connection family.
  using connection = Connection;

  /// A sub-layer for backbone width `D` (a positive multiple of `M`); `iterations` Sinkhorn iterations (default the
  /// family's, 20; ignored by mHC-lite). Throws std::invalid_argument for a bad `D` or fewer than 1 iteration.
  explicit basic_ghc(index_t D, int iterations = Connection::rule.iterations)
      : base(name(), D, with_iterations(iterations)) {}

  /// Library name with shape and family, e.g. "vwn::dghc<1,4,mhc>".
  static std::string name() {
    return std::string(Dynamic ? "vwn::dghc<" : "vwn::ghc<") + std::to_string(M) + "," + std::to_string(N) + "," +
           std::string(Connection::name) + ">";
  }

 private:
  static manifold_rule with_iterations(int iterations) {
    manifold_rule r = Connection::rule;
    if (!r.permutations) r.iterations = iterations;
    return r;
  }
};

}  // namespace vwn
