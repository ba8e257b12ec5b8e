#pragma once
/// \file width.hpp
/// The width parts of the reference transformer behind small run-time interfaces: the only parts whose code
/// depends on the shape `(m, n)`. The transformer itself (`model.hpp`) is compiled once per scalar type and
/// asks `width_parts(m, n, dynamic)` for the factory of its shape; every compiled shape of
/// `vwn::compiled_shapes` has one, instantiated in its own translation unit (`width_parts.hpp`).
///
/// Each part owns its parameters, gradients and saved state, and visits its tensors as
/// `f(name, param, grad, size, weight_decay)` with the checkpoint names of the transformer.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <vwn/core/checks.hpp>
#include <vwn/core/config.hpp>
#include <vwn/core/connection.hpp>
#include <vwn/core/shapes.hpp>

namespace vwn::model {

/// A width shape with static or dynamic GHC and its connection family, as chosen at run time.
struct shape_choice {
  int m = 1;             ///< fraction rate
  int n = 1;             ///< over-width slots
  bool dynamic = false;  ///< dynamic (DGHC) or static GHC
  std::string connection = "vwn";  ///< connection family (`vwn::connection_names_text()`, <vwn/core/connection.hpp>)
  /// "(2,3) dynamic", "(1,4) dynamic mhc" (the family named when it is not `vwn`).
  std::string label() const {
    return "(" + std::to_string(m) + "," + std::to_string(n) + ") " + (dynamic ? "dynamic" : "static") +
           (connection == vwn_connection::name ? "" : " " + connection);
  }
  bool operator==(const shape_choice&) const = default;
};

/// `f(name, param, grad, size, weight_decay)` over the tensors of a part, names prefixed by the caller.
template <class Scalar>
using tensor_visitor =
    std::function<void(const std::string& name, Scalar* param, Scalar* grad, index_t size, bool decay)>;

/// One GHC sub-layer of shape `(m, n)`, static or dynamic (see `vwn::basic_ghc`). What one use of the sub-layer
/// saves between its forward and backward calls lives in a `state` of its own, so that one sub-layer can serve
/// several uses before their backward passes (an autograd graph that calls it twice, for instance).
template <class Scalar>
class ghc_layer {
 public:
  /// Saved state of one use between its forward and backward calls.
  class state {
   public:
    virtual ~state() = default;
  };
  virtual ~ghc_layer() = default;
  /// A fresh saved state for one use.
  virtual std::unique_ptr<state> make_state() const = 0;
  /// `H` (`T x D'`) -> `X` (`T x D`), `C` (`T x D'`), saving into `s`.
  virtual void forward_width(matrix_cref<Scalar> H, matrix_ref<Scalar> X, matrix_ref<Scalar> C, state& s) const = 0;
  /// `H_out = b Z + C`, with the coefficients saved in `s` by `forward_width`.
  virtual void forward_depth(matrix_cref<Scalar> Z, matrix_cref<Scalar> C, matrix_ref<Scalar> H_out,
                             const state& s) const = 0;
  /// `dZ` from `dH_out`; the gradient of `C` is `dH_out`.
  virtual void backward_depth(matrix_cref<Scalar> dH_out, matrix_cref<Scalar> Z, matrix_ref<Scalar> dZ, state& s) = 0;
  /// `dH` from `dX` and the total gradient `dC` of the carried state; accumulates parameter gradients.
  virtual void backward_width(matrix_cref<Scalar> H, matrix_cref<Scalar> dX, matrix_cref<Scalar> dC,
                              matrix_ref<Scalar> dH, state& s) = 0;
  /// The coefficients `[a | b]` (`n x (2m+n)`) that the forward saved in `s` used for token `t` (the static ones for
  /// static GHC).
  virtual matrix<Scalar> token_coefficients(const state& s, index_t t) const = 0;
  /// The depth coefficients `b` of every token of `s`, `n x m` each, token after token (row-major `n x m` blocks):
  /// `b` must hold `T n m` values.
  virtual void depth_coefficients(const state& s, std::span<Scalar> b) const = 0;
  /// The gradient of each token's `b` held in `s`, laid out as `depth_coefficients` lays out `b` (`T n m` values):
  /// written by `backward_depth`, read by `backward_width`. Dynamic GHC only; static GHC keeps none (its `b` is a
  /// parameter, whose gradient `backward_depth` accumulates itself) and returns an empty span.
  virtual std::span<Scalar> depth_gradient(state& s) const = 0;
  /// Visits every tensor, names prefixed with `prefix` (e.g. "blocks.0.ghc_attn.").
  virtual void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) = 0;
};

/// The over-width embedding (direct `V x D'` table or low-rank), with a dense table gradient.
template <class Scalar>
class embedding_layer {
 public:
  virtual ~embedding_layer() = default;
  /// `H0` (`T x D'`) from `tokens`.
  virtual void forward(std::span<const std::int32_t> tokens, matrix_ref<Scalar> H0) const = 0;
  /// Accumulates the gradients from `dH0` (`T x D'`): the table's into a dense `V x width` gradient.
  virtual void backward(std::span<const std::int32_t> tokens, matrix_cref<Scalar> dH0) = 0;
  /// Visits every tensor, names prefixed with `prefix` ("embed.").
  virtual void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) = 0;
};

/// The GroupNorm + reduce head `D' -> D` (see `vwn::reduce_head`). One head serves several passes (the main and
/// the MTP head share it), each with its own saved state.
template <class Scalar>
class head_layer {
 public:
  /// Saved state of one pass between its forward and backward.
  class state {
   public:
    virtual ~state() = default;
  };
  virtual ~head_layer() = default;
  /// A fresh saved state for one pass.
  virtual std::unique_ptr<state> make_state() const = 0;
  /// `h` (`T x D`) from `H` (`T x D'`), saving into `s`.
  virtual void forward(matrix_cref<Scalar> H, matrix_ref<Scalar> h, state& s) const = 0;
  /// `dH` from `dh` and the state `s` of the forward; accumulates parameter gradients.
  virtual void backward(matrix_cref<Scalar> H, matrix_cref<Scalar> dh, matrix_ref<Scalar> dH, state& s) = 0;
  /// Visits every tensor, names prefixed with `prefix`.
  virtual void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) = 0;
};

/// The block-level MTP mixer (see `vwn::mtp_mixer`).
template <class Scalar>
class mixer_layer {
 public:
  virtual ~mixer_layer() = default;
  /// `U` from `A`, `B` (all `T x D'`).
  virtual void forward(matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_ref<Scalar> U) const = 0;
  /// `dA`, `dB` from `dU`; accumulates the gradient of `W_mix`.
  virtual void backward(matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_cref<Scalar> dU, matrix_ref<Scalar> dA,
                        matrix_ref<Scalar> dB) = 0;
  /// Visits every tensor, names prefixed with `prefix`.
  virtual void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) = 0;
};

/// Makes the width parts of one shape (with static or dynamic GHC) for backbone width `D`.
template <class Scalar>
struct width_factory {
  shape_choice shape;  ///< the shape it makes
  std::unique_ptr<ghc_layer<Scalar>> (*ghc)(index_t D);
  std::unique_ptr<embedding_layer<Scalar>> (*embedding)(index_t V, index_t D, bool lowrank, std::uint64_t seed);
  std::unique_ptr<head_layer<Scalar>> (*head)(index_t D, std::uint64_t seed);
  std::unique_ptr<mixer_layer<Scalar>> (*mixer)(index_t D, std::uint64_t seed);
};

/// The factory of shape `(M, N)` with static or dynamic GHC of family `Connection`; defined in width_parts.hpp and
/// explicitly instantiated for every compiled shape and every family offered for it.
template <int M, int N, bool Dynamic, class Scalar, class Connection = vwn_connection>
const width_factory<Scalar>& width_factory_of();

/// Every compiled configuration: each shape of `vwn::compiled_shapes`, static then dynamic, in every connection
/// family offered for it (mHC-lite up to n = 5).
inline std::vector<shape_choice> available_shapes() {
  std::vector<shape_choice> out;
  for (const shape_id s : compiled_shapes)
    for (const bool dynamic : {false, true}) {
#define VWN_AVAILABLE_CONNECTION_(C) \
  if (s.n <= C::max_n) out.push_back({s.m, s.n, dynamic, std::string(C::name)});
      VWN_ALL_CONNECTIONS(VWN_AVAILABLE_CONNECTION_)
#undef VWN_AVAILABLE_CONNECTION_
    }
  return out;
}

/// The compiled configurations as text: "(1,1) (1,2) ... (8,64), each static or dynamic, connection vwn, mhc, ...".
inline std::string available_shapes_text() {
  return compiled_shapes_text() + ", each static or dynamic, with connection " + connection_names_text() +
         " (mhc-lite up to n = " + std::to_string(mhc_lite_connection::max_n) + ")";
}

/// The factory of a compiled shape; throws std::invalid_argument naming the compiled shapes for any other.
template <class Scalar>
const width_factory<Scalar>& width_parts(const shape_choice& shape) {
  const width_factory<Scalar>* found = nullptr;
  dispatch_shape(shape.m, shape.n, [&]<int M, int N>() {
    dispatch_connection(shape.connection, [&]<class C>() {
      if constexpr (connection_offered<C, N>)
        found = shape.dynamic ? &width_factory_of<M, N, true, Scalar, C>() : &width_factory_of<M, N, false, Scalar, C>();
    });
  });
  if (!found)
    detail::fail("vwn::model::width_parts", "shape (m, n)", "one of the compiled shapes " + available_shapes_text(),
                 shape.label());
  return *found;
}

}  // namespace vwn::model
