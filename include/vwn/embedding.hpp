#pragma once
/// \file embedding.hpp
/// Over-width token embeddings (paper section 3.2): a direct `V x D'` table, or a low-rank form
/// `H0 = W_expand E_base[token]` with `E_base` of `V x D` and `W_expand` of `D' x D` (eq. 3).
/// Table gradients are sparse: only the rows of tokens in the batch, summed per distinct token.

#include <algorithm>
#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/checks.hpp"
#include "core/config.hpp"
#include "core/random.hpp"
#include "core/shape.hpp"
#include "core/shapes.hpp"
#include "core/tensors.hpp"
#include "detail/parallel.hpp"

namespace vwn {

/// The parameter tensor of a direct over-width embedding of shape `(M, N)`: `E` (`V x D'`), no weight decay.
template <int M, int N>
constexpr std::array<tensor_spec, 1> overwidth_embedding_tensors(index_t V, index_t D) {
  return {{{"E", V, N * (D / M), false}}};
}

/// The parameter tensors of a low-rank over-width embedding of shape `(M, N)`: `E_base` (`V x D`, no weight
/// decay, an embedding) and `W_expand` (`D' x D`, weight decay, a dense matrix).
template <int M, int N>
constexpr std::array<tensor_spec, 2> lowrank_overwidth_embedding_tensors(index_t V, index_t D) {
  return {{{"E_base", V, D, false}, {"W_expand", N * (D / M), D, true}}};
}

/// Sparse gradient of an embedding table: `rows[i]` (sorted, distinct) has gradient `values.row(i)`.
template <class Scalar>
struct sparse_rows {
  std::vector<std::int32_t> rows;  ///< distinct table rows touched, ascending
  matrix<Scalar> values;           ///< `rows.size() x width` summed gradients

  /// Adds `scale *` this gradient into the dense table `dense` (`V x width`).
  void add_to(matrix_ref<Scalar> dense, Scalar scale = Scalar(1)) const {
    for (std::size_t i = 0; i < rows.size(); ++i) dense.row(rows[i]) += scale * values.row(index_t(i));
  }
  /// Empties the gradient.
  void clear() {
    rows.clear();
    values.resize(0, values.cols());
  }
};

namespace detail {

// Checks tokens against the vocabulary; throws std::out_of_range naming the position and value.
inline void check_tokens(std::string_view where, std::span<const std::int32_t> tokens, index_t vocab) {
  if (tokens.empty()) fail(where, "token count", "at least 1 token", "0 (empty batch)");
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw std::out_of_range(std::string(where) + ": token at position " + std::to_string(i) + " is " +
                              std::to_string(tokens[i]) + ", expected 0 <= token < vocabulary size " +
                              std::to_string(vocab));
}

// Accumulates g (T x W, one row per token) into a sparse row gradient, merging with what it holds.
// Deterministic: rows are summed in token order per distinct row.
template <class Scalar, class G>
void accumulate_sparse(sparse_rows<Scalar>& out, std::span<const std::int32_t> tokens, const G& g) {
  std::vector<std::int32_t> rows(out.rows);
  rows.insert(rows.end(), tokens.begin(), tokens.end());
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  matrix<Scalar> values = matrix<Scalar>::Zero(index_t(rows.size()), g.cols());
  auto slot = [&](std::int32_t r) { return index_t(std::lower_bound(rows.begin(), rows.end(), r) - rows.begin()); };
  for (std::size_t i = 0; i < out.rows.size(); ++i) values.row(slot(out.rows[i])) += out.values.row(index_t(i));
  for (std::size_t t = 0; t < tokens.size(); ++t) values.row(slot(tokens[t])) += g.row(index_t(t));
  out.rows = std::move(rows);
  out.values = std::move(values);
}

}  // namespace detail

/// Direct over-width embedding of shape `(M, N)`: table `E` of `V x D'`, `H0[t] = E[token[t]]`.
template <int M, int N, class Scalar = float>
class overwidth_embedding : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Parameters: the table.
  struct parameters {
    matrix<Scalar> E;  ///< `V x D'`, init N(0, 0.02^2); no weight decay (an embedding)
    /// Visits `f(name, data, size, weight_decay)` for the tensor of `overwidth_embedding_tensors`.
    template <class F>
    void visit(F&& f) {
      const tensor_spec t = overwidth_embedding_tensors<M, N>(E.rows(), M * (E.cols() / N))[0];
      f(t.name, E.data(), t.size(), t.decay);
    }
  };
  /// Sparse gradient of the table.
  struct gradients {
    sparse_rows<Scalar> E;  ///< rows of E touched since the last zero_grad
  };

  parameters params;  ///< the table
  gradients grads;    ///< accumulated sparse gradient

  /// Embedding for vocabulary size `V` and backbone width `D` (a positive multiple of `M`).
  overwidth_embedding(index_t V, index_t D, std::uint64_t seed = 1)
      : widths<M, N>(name() + "::overwidth_embedding", D), V_(V) {
    if (V <= 0) detail::fail(name(), "vocabulary size", "V >= 1", std::to_string(V));
    params.E.resize(V, wide_width());
    reset_parameters(seed);
    zero_grad();
  }

  /// Library name with shape.
  static std::string name() { return "vwn::overwidth_embedding<" + std::to_string(M) + "," + std::to_string(N) + ">"; }
  /// Vocabulary size.
  index_t vocabulary() const { return V_; }

  /// Draws `E` from N(0, 0.02^2) with the given seed.
  void reset_parameters(std::uint64_t seed) {
    rng r(seed);
    r.fill_normal(params.E, 0.02);
  }
  /// Clears the sparse gradient.
  void zero_grad() {
    grads.E.clear();
    grads.E.values.resize(0, wide_width());
  }

  /// `H0` (`T x D'`) from `tokens` (length `T`, each in `[0, V)`).
  void forward(host_t, std::span<const std::int32_t> tokens, matrix_ref<Scalar> H0) const;

  /// Accumulates the sparse gradient of `E` from `dH0` (`T x D'`).
  void backward(host_t, std::span<const std::int32_t> tokens, matrix_cref<Scalar> dH0);

 private:
  index_t V_;
  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

template <int M, int N, class Scalar>
void overwidth_embedding<M, N, Scalar>::forward(host_t, std::span<const std::int32_t> tokens, matrix_ref<Scalar> H0) const {
  const std::string where = name() + "::forward";
  detail::check_tokens(where, tokens, V_);
  detail::expect_shape(where, "H0", H0, index_t(tokens.size()), wide_width());
  for (std::size_t t = 0; t < tokens.size(); ++t) H0.row(index_t(t)) = params.E.row(tokens[t]);
}

template <int M, int N, class Scalar>
void overwidth_embedding<M, N, Scalar>::backward(host_t, std::span<const std::int32_t> tokens, matrix_cref<Scalar> dH0) {
  const std::string where = name() + "::backward";
  detail::check_tokens(where, tokens, V_);
  detail::expect_shape(where, "dH0", dH0, index_t(tokens.size()), wide_width());
  detail::accumulate_sparse(grads.E, tokens, dH0);
}

/// Low-rank over-width embedding of shape `(M, N)` (eq. 3): `H0[t] = W_expand E_base[token[t]]`.
template <int M, int N, class Scalar = float>
class lowrank_overwidth_embedding : public widths<M, N> {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn: Scalar must be float or double");

 public:
  using scalar = Scalar;
  /// Parameters: the base table and the expansion.
  struct parameters {
    matrix<Scalar> E_base;    ///< `V x D`, init N(0, 0.02^2); no weight decay (an embedding)
    matrix<Scalar> W_expand;  ///< `D' x D`, init N(0, 1/D) so H0 has the scale of E_base; weight decay
    /// Visits `f(name, data, size, weight_decay)` for the tensors of `lowrank_overwidth_embedding_tensors`.
    template <class F>
    void visit(F&& f) {
      const auto t = lowrank_overwidth_embedding_tensors<M, N>(E_base.rows(), E_base.cols());
      f(t[0].name, E_base.data(), t[0].size(), t[0].decay);
      f(t[1].name, W_expand.data(), t[1].size(), t[1].decay);
    }
  };
  /// Gradients: sparse rows for the table, dense for the expansion.
  struct gradients {
    sparse_rows<Scalar> E_base;  ///< rows of E_base touched since the last zero_grad
    matrix<Scalar> W_expand;     ///< `D' x D`
  };

  parameters params;  ///< the parameters
  gradients grads;    ///< accumulated gradients

  /// Embedding for vocabulary size `V` and backbone width `D` (a positive multiple of `M`).
  lowrank_overwidth_embedding(index_t V, index_t D, std::uint64_t seed = 1)
      : widths<M, N>(name() + "::lowrank_overwidth_embedding", D), V_(V) {
    if (V <= 0) detail::fail(name(), "vocabulary size", "V >= 1", std::to_string(V));
    params.E_base.resize(V, D);
    params.W_expand.resize(wide_width(), D);
    reset_parameters(seed);
    zero_grad();
  }

  /// Library name with shape.
  static std::string name() {
    return "vwn::lowrank_overwidth_embedding<" + std::to_string(M) + "," + std::to_string(N) + ">";
  }
  /// Vocabulary size.
  index_t vocabulary() const { return V_; }

  /// Draws `E_base` from N(0, 0.02^2) and `W_expand` from N(0, 1/D).
  void reset_parameters(std::uint64_t seed) {
    rng r(seed);
    r.fill_normal(params.E_base, 0.02);
    r.fill_normal(params.W_expand, 1.0 / std::sqrt(double(D_)));
  }
  /// Clears the gradients.
  void zero_grad() {
    grads.E_base.clear();
    grads.E_base.values.resize(0, D_);
    grads.W_expand.setZero(wide_width(), D_);
  }

  /// `H0` (`T x D'`) from `tokens` (length `T`, each in `[0, V)`).
  void forward(host_t, std::span<const std::int32_t> tokens, matrix_ref<Scalar> H0) const;

  /// Accumulates the gradients from `dH0` (`T x D'`).
  void backward(host_t, std::span<const std::int32_t> tokens, matrix_cref<Scalar> dH0);

 private:
  matrix<Scalar> gather(std::span<const std::int32_t> tokens) const {
    matrix<Scalar> e(index_t(tokens.size()), D_);
    for (std::size_t t = 0; t < tokens.size(); ++t) e.row(index_t(t)) = params.E_base.row(tokens[t]);
    return e;
  }

  index_t V_;
  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

template <int M, int N, class Scalar>
void lowrank_overwidth_embedding<M, N, Scalar>::forward(host_t, std::span<const std::int32_t> tokens, matrix_ref<Scalar> H0) const {
  const std::string where = name() + "::forward";
  detail::check_tokens(where, tokens, V_);
  detail::expect_shape(where, "H0", H0, index_t(tokens.size()), wide_width());
  detail::product(H0, gather(tokens), params.W_expand.transpose());
}

template <int M, int N, class Scalar>
void lowrank_overwidth_embedding<M, N, Scalar>::backward(host_t, std::span<const std::int32_t> tokens, matrix_cref<Scalar> dH0) {
  const std::string where = name() + "::backward";
  detail::check_tokens(where, tokens, V_);
  detail::expect_shape(where, "dH0", dH0, index_t(tokens.size()), wide_width());
  detail::product<true>(grads.W_expand, dH0.transpose(), gather(tokens));
  matrix<Scalar> dE(dH0.rows(), D_);  // T x D
  detail::product(dE, dH0, params.W_expand);
  detail::accumulate_sparse(grads.E_base, tokens, dE);
}

}  // namespace vwn

// With VWN_EXTERN_COMPILED_SHAPES defined, the compiled shapes are instantiated once, where
// VWN_INSTANTIATE_SHAPE(m, n, Scalar) is written (<vwn/precompiled.hpp>), not in every translation unit.
#ifdef VWN_EXTERN_COMPILED_SHAPES
#define VWN_EXTERN_EMBEDDING_(m, n) \
  extern template class vwn::overwidth_embedding<m, n, float>;         \
  extern template class vwn::overwidth_embedding<m, n, double>;        \
  extern template class vwn::lowrank_overwidth_embedding<m, n, float>; \
  extern template class vwn::lowrank_overwidth_embedding<m, n, double>;
VWN_COMPILED_SHAPES(VWN_EXTERN_EMBEDDING_)
#undef VWN_EXTERN_EMBEDDING_
#endif
