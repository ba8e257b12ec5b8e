#pragma once
/// \file width_parts.hpp
/// The width parts of one shape `(M, N)`: the library's primitives (`vwn::basic_ghc`, the over-width embeddings,
/// `vwn::reduce_head`, `vwn::mtp_mixer`) behind the run-time interfaces of width.hpp, and `width_factory_of`.
/// Include it only where a shape is instantiated: the build generates one translation unit per compiled shape
/// and scalar type from `vwn::compiled_shapes` (examples/transformer/CMakeLists.txt), so that the shapes compile
/// in parallel and the rest of the model compiles once.

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <vwn/embedding.hpp>
#include <vwn/ghc.hpp>
#include <vwn/mhc.hpp>
#include <vwn/mtp.hpp>
#include <vwn/reduce.hpp>

#include "width.hpp"

namespace vwn::model {

namespace width_detail {

// Visits a primitive's tensors, pairing `params.visit` with `grads.visit`.
template <class Scalar, class Module>
void visit_module(const std::string& prefix, Module& m, const tensor_visitor<Scalar>& f) {
  std::vector<Scalar*> grads;
  m.grads.visit([&](std::string_view, Scalar* g, index_t, bool) { grads.push_back(g); });
  std::size_t i = 0;
  m.params.visit([&](std::string_view name, Scalar* p, index_t size, bool decay) {
    f(prefix + std::string(name), p, grads[i++], size, decay);
  });
}

template <int M, int N, bool Dynamic, class Scalar, class Connection>
class ghc_part final : public ghc_layer<Scalar> {
  using base_state = typename ghc_layer<Scalar>::state;
  struct state final : base_state {
    typename basic_ghc<M, N, Scalar, Dynamic, Connection>::workspace ws;
  };
  static auto& ws(base_state& s) { return static_cast<state&>(s).ws; }
  static const auto& ws(const base_state& s) { return static_cast<const state&>(s).ws; }

 public:
  explicit ghc_part(index_t D) : layer_(D) {}
  std::unique_ptr<base_state> make_state() const override { return std::make_unique<state>(); }
  void forward_width(matrix_cref<Scalar> H, matrix_ref<Scalar> X, matrix_ref<Scalar> C, base_state& s) const override {
    layer_.forward_width(host, H, X, C, ws(s));
  }
  void forward_depth(matrix_cref<Scalar> Z, matrix_cref<Scalar> C, matrix_ref<Scalar> H_out,
                     const base_state& s) const override {
    layer_.forward_depth(host, Z, C, H_out, ws(s));
  }
  void backward_depth(matrix_cref<Scalar> dH_out, matrix_cref<Scalar> Z, matrix_ref<Scalar> dZ, base_state& s) override {
    layer_.backward_depth(host, dH_out, Z, dZ, ws(s));
  }
  void backward_width(matrix_cref<Scalar> H, matrix_cref<Scalar> dX, matrix_cref<Scalar> dC, matrix_ref<Scalar> dH,
                      base_state& s) override {
    layer_.backward_width(host, H, dX, dC, dH, ws(s));
  }
  matrix<Scalar> token_coefficients(const base_state& s, index_t t) const override {
    return layer_.token_coefficients(ws(s), t);
  }
  void depth_coefficients(const base_state& s, std::span<Scalar> b) const override {
    const auto& w = ws(s);
    if (b.size() != std::size_t(w.tokens * N * M))
      detail::fail(layer_.name() + "::depth_coefficients", "b", std::to_string(w.tokens * N * M) + " values",
                   std::to_string(b.size()));
    for (index_t t = 0; t < w.tokens; ++t)
      Eigen::Map<fixed_matrix<Scalar, N, M>>(b.data() + t * N * M) =
          layer_.token_coefficients(w, t).template rightCols<M>();
  }
  std::span<Scalar> depth_gradient(base_state& s) const override {
    if constexpr (Dynamic) return {ws(s).dB.data(), std::size_t(ws(s).dB.size())};
    else return {};
  }
  void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) override { visit_module(prefix, layer_, f); }

 private:
  basic_ghc<M, N, Scalar, Dynamic, Connection> layer_;
};

// The embedding's table gradient is kept dense (`V x width`): the sparse rows of each backward are added in.
template <int M, int N, class Scalar>
class embedding_part final : public embedding_layer<Scalar> {
 public:
  embedding_part(index_t V, index_t D, bool lowrank, std::uint64_t seed) {
    if (lowrank) {
      lowrank_.emplace(V, D, seed);
      dE_.setZero(V, D);
    } else {
      direct_.emplace(V, D, seed);
      dE_.setZero(V, direct_->wide_width());
    }
  }
  void forward(std::span<const std::int32_t> tokens, matrix_ref<Scalar> H0) const override {
    if (direct_)
      direct_->forward(host, tokens, H0);
    else
      lowrank_->forward(host, tokens, H0);
  }
  void backward(std::span<const std::int32_t> tokens, matrix_cref<Scalar> dH0) override {
    if (direct_) {
      direct_->zero_grad();
      direct_->backward(host, tokens, dH0);
      direct_->grads.E.add_to(dE_);
    } else {
      lowrank_->grads.E_base.clear();
      lowrank_->backward(host, tokens, dH0);  // accumulates W_expand's gradient directly
      lowrank_->grads.E_base.add_to(dE_);
    }
  }
  void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) override {
    if (direct_) {
      direct_->params.visit([&](std::string_view name, Scalar* p, index_t size, bool decay) {
        f(prefix + std::string(name), p, dE_.data(), size, decay);
      });
    } else {
      Scalar* grads[2] = {dE_.data(), lowrank_->grads.W_expand.data()};
      int i = 0;
      lowrank_->params.visit([&](std::string_view name, Scalar* p, index_t size, bool decay) {
        f(prefix + std::string(name), p, grads[i++], size, decay);
      });
    }
  }

 private:
  std::optional<overwidth_embedding<M, N, Scalar>> direct_;
  std::optional<lowrank_overwidth_embedding<M, N, Scalar>> lowrank_;
  matrix<Scalar> dE_;  // (V, D') direct, (V, D) low-rank
};

template <int M, int N, class Scalar>
class head_part final : public head_layer<Scalar> {
  using base_state = typename head_layer<Scalar>::state;
  struct state final : base_state {
    typename reduce_head<M, N, Scalar>::workspace ws;
  };

 public:
  head_part(index_t D, std::uint64_t seed) : head_(D, seed) {}
  std::unique_ptr<base_state> make_state() const override { return std::make_unique<state>(); }
  void forward(matrix_cref<Scalar> H, matrix_ref<Scalar> h, base_state& s) const override {
    head_.forward(host, H, h, static_cast<state&>(s).ws);
  }
  void backward(matrix_cref<Scalar> H, matrix_cref<Scalar> dh, matrix_ref<Scalar> dH, base_state& s) override {
    head_.backward(host, H, dh, dH, static_cast<state&>(s).ws);
  }
  void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) override { visit_module(prefix, head_, f); }

 private:
  reduce_head<M, N, Scalar> head_;
};

template <int M, int N, class Scalar>
class mixer_part final : public mixer_layer<Scalar> {
 public:
  mixer_part(index_t D, std::uint64_t seed) : mixer_(D, seed) {}
  void forward(matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_ref<Scalar> U) const override {
    mixer_.forward(host, A, B, U);
  }
  void backward(matrix_cref<Scalar> A, matrix_cref<Scalar> B, matrix_cref<Scalar> dU, matrix_ref<Scalar> dA,
                matrix_ref<Scalar> dB) override {
    mixer_.backward(host, A, B, dU, dA, dB);
  }
  void visit(const std::string& prefix, const tensor_visitor<Scalar>& f) override { visit_module(prefix, mixer_, f); }

 private:
  mtp_mixer<M, N, Scalar> mixer_;
};

}  // namespace width_detail

template <int M, int N, bool Dynamic, class Scalar, class Connection>
const width_factory<Scalar>& width_factory_of() {
  using namespace width_detail;
  static const width_factory<Scalar> factory{
      {M, N, Dynamic, std::string(Connection::name)},
      [](index_t D) -> std::unique_ptr<ghc_layer<Scalar>> {
        return std::make_unique<ghc_part<M, N, Dynamic, Scalar, Connection>>(D);
      },
      [](index_t V, index_t D, bool lowrank, std::uint64_t seed) -> std::unique_ptr<embedding_layer<Scalar>> {
        return std::make_unique<embedding_part<M, N, Scalar>>(V, D, lowrank, seed);
      },
      [](index_t D, std::uint64_t seed) -> std::unique_ptr<head_layer<Scalar>> {
        return std::make_unique<head_part<M, N, Scalar>>(D, seed);
      },
      [](index_t D, std::uint64_t seed) -> std::unique_ptr<mixer_layer<Scalar>> {
        return std::make_unique<mixer_part<M, N, Scalar>>(D, seed);
      }};
  return factory;
}

}  // namespace vwn::model
