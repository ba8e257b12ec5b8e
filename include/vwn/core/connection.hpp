#pragma once
/// \file connection.hpp
/// The connection family of a width connection: how its per-token coefficients `[a | b]` are formed, a compile-time
/// policy beside the shape `(m, n)` (`vwn::basic_ghc<M, N, Scalar, Dynamic, Connection>`). docs/mhc.md describes each.
///
/// | policy                 | name       | coefficients                                                                  |
/// |------------------------|------------|-------------------------------------------------------------------------------|
/// | `vwn_connection`       | `vwn`      | the VWN paper's: static `[alpha | beta]` plus, dynamic, `S . tanh(Hn W / sqrt(db))` (default) |
/// | `mhc_connection`       | `mhc`      | mHC (arXiv 2512.24880): `sigmoid` pre, `2 sigmoid` post, Sinkhorn-projected carry (20 iterations) |
/// | `mhc_lite_connection`  | `mhc-lite` | mHC-lite (arXiv 2601.05732): carry a softmax mixture of the `n!` permutation matrices, `n <= 5` |
/// | `mhc_v4_connection`    | `mhc-v4`   | DeepSeek-V4's hyper-connection as released: softmax-started Sinkhorn with epsilons, carry not transposed |
///
/// The run-time choice (`vwn-train --connection`) follows from `VWN_ALL_CONNECTIONS`, the one list of them.

#include <string>
#include <string_view>


namespace vwn {

/// `n!` (the permutation count of mHC-lite's carry).
constexpr int factorial(int n) { return n <= 1 ? 1 : n * factorial(n - 1); }

/// `N!` as a constant (usable in device code, where a host constexpr function is not).
template <int N>
inline constexpr int factorial_v = N * factorial_v<N - 1>;
template <>
inline constexpr int factorial_v<0> = 1;

/// How a carry is projected onto the doubly stochastic matrices, and the maps of the pre and post coefficients.
struct manifold_rule {
  bool permutations = false;   ///< mHC-lite: a softmax mixture of the `n!` permutation matrices (else Sinkhorn)
  int iterations = 20;         ///< Sinkhorn: full (A, B) passes, the softmax counting as the first A
  bool columns_first = false;  ///< Sinkhorn: axis A is the columns (else the rows)
  double add_eps = 0;          ///< Sinkhorn: added to every entry after the softmax
  double div_eps = 0;          ///< Sinkhorn: added to every line sum it divides by
  bool transpose_carry = true; ///< `A_c = P^T` (mHC's `H_res` applied as `H_res x`); false: `A_c = P`
  double pre_eps = 0;          ///< added to every `sigmoid` of the pre map
  double post_scale = 2;       ///< scale of the `sigmoid` of the post map
};

/// The number of carry logits `R`: `n^2` (Sinkhorn) or `n!` (permutations).
constexpr int carry_logits(bool permutations, int n) { return permutations ? factorial(n) : n * n; }

/// The VWN paper's coefficients (eqs. 13-16): the default of every GHC, unchanged.
struct vwn_connection {
  static constexpr std::string_view name = "vwn";  ///< run-time name
  static constexpr bool manifold = false;          ///< not a manifold-constrained family
  static constexpr int max_n = 1 << 20;            ///< offered for every shape
};

/// mHC (Xie et al., arXiv 2512.24880, eqs. 7-9 and 14-19): `a_pre = sigmoid`, `b = 2 sigmoid`, carry
/// `H_res = Sinkhorn(z)` from `M(0) = exp(z)`, each iteration a column then a row normalisation (eq. 9), 20 iterations,
/// applied as `H_res x` (`A_c = H_res^T`).
struct mhc_connection {
  static constexpr std::string_view name = "mhc";
  static constexpr bool manifold = true;
  static constexpr int max_n = 64;
  static constexpr manifold_rule rule{false, 20, true, 0.0, 0.0, true, 0.0, 2.0};
};

/// mHC-lite (Yang and Gao, arXiv 2601.05732): carry `H_res = sum_p w_p P_p`, `w = softmax(z)` over the `n!`
/// permutation matrices (exactly doubly stochastic, no iterations); pre and post as mHC. Offered for `n <= 5`
/// (120 permutations): the logits, the projection's columns and the mixture's work grow as `n!` (720 at `n = 6`,
/// 40320 at `n = 8`, against mHC's `n^2`).
struct mhc_lite_connection {
  static constexpr std::string_view name = "mhc-lite";
  static constexpr bool manifold = true;
  static constexpr int max_n = 5;
  static constexpr manifold_rule rule{true, 0, false, 0.0, 0.0, true, 0.0, 2.0};
};

/// DeepSeek-V4's hyper-connection as its released code computes it (Hugging Face `DeepseekV4HyperConnection`):
/// `a_pre = sigmoid + 1e-6`, `b = 2 sigmoid`, carry `comb = softmax_rows(z) + 1e-6`, then a column normalisation,
/// then 19 times rows and columns, every division by a line sum plus 1e-6; applied as `comb^T x` (`A_c = comb`).
/// The logits are `[pre | post | comb]`, each group scaled by its own scalar, as in mHC.
struct mhc_v4_connection {
  static constexpr std::string_view name = "mhc-v4";
  static constexpr bool manifold = true;
  static constexpr int max_n = 64;
  static constexpr manifold_rule rule{false, 20, false, 1e-6, 1e-6, false, 1e-6, 2.0};
};

/// Every connection family, `X(policy)` for each, in the order of `connection_names_text`.
#define VWN_ALL_CONNECTIONS(X) X(vwn_connection) X(mhc_connection) X(mhc_lite_connection) X(mhc_v4_connection)

/// Whether `Connection` is offered for `N` slots (mHC-lite only up to 5).
template <class Connection, int N>
inline constexpr bool connection_offered = N <= Connection::max_n;

/// Calls `f.template operator()<Connection>()` for the family named `name` and returns true; false for any other
/// name (calling nothing).
template <class F>
bool dispatch_connection(std::string_view name, F&& f) {
#define VWN_DISPATCH_CONNECTION_(C) \
  if (name == C::name) {            \
    f.template operator()<C>();     \
    return true;                    \
  }
  VWN_ALL_CONNECTIONS(VWN_DISPATCH_CONNECTION_)
#undef VWN_DISPATCH_CONNECTION_
  return false;
}

/// "vwn mhc mhc-lite mhc-v4".
inline std::string connection_names_text() {
  std::string out;
#define VWN_CONNECTION_NAME_(C) out += (out.empty() ? "" : " ") + std::string(C::name);
  VWN_ALL_CONNECTIONS(VWN_CONNECTION_NAME_)
#undef VWN_CONNECTION_NAME_
  return out;
}

}  // namespace vwn
