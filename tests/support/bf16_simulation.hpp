#pragma once
// A host back end that stores activations as bf16 where the device back end does, and computes everything else in
// float as the device does: the host float modules, with every activation output rounded to bf16 (round to nearest
// even, Eigen::bfloat16, as __float2bfloat16_rn) and the reduce head's GroupNorm output rounded before its GEMM.
// Parameters, gradients and the saved state (1/rms, P, each token's d b, GroupNorm mean and 1/std) stay float, as
// on the device. The test bodies run on it on any machine: a reference that does not use the rounded
// intermediates the device stores fails here, without a GPU (docs/cuda.md, "Tests and tolerances").

#include <Eigen/Core>

#include <cstdint>
#include <span>

#include "backend.hpp"

namespace vwn_test {

// x rounded to bf16 (8 significant bits, round to nearest even) and widened back.
inline float bf16_round(float x) { return static_cast<float>(Eigen::bfloat16(x)); }

// Rounds every element of a host float matrix (or a view of one) to bf16 in place.
template <class Matrix>
void round_to_bf16(Matrix&& m) {
  m = m.unaryExpr([](float x) { return bf16_round(x); });
}

namespace bf16_simulation {

template <int M, int N, bool Dynamic>
class ghc : public vwn::basic_ghc<M, N, float, Dynamic> {
  using base = vwn::basic_ghc<M, N, float, Dynamic>;

 public:
  using base::base;
  using typename base::workspace;
  void forward_width(vwn::host_t p, vwn::matrix_cref<float> H, vwn::matrix_ref<float> X, vwn::matrix_ref<float> C,
                     workspace& ws) const {
    base::forward_width(p, H, X, C, ws);
    round_to_bf16(X);
    round_to_bf16(C);
  }
  void forward_depth(vwn::host_t p, vwn::matrix_cref<float> Z, vwn::matrix_cref<float> C, vwn::matrix_ref<float> H_out,
                     const workspace& ws) const {
    base::forward_depth(p, Z, C, H_out, ws);
    round_to_bf16(H_out);
  }
  void backward_depth(vwn::host_t p, vwn::matrix_cref<float> dH_out, vwn::matrix_cref<float> Z,
                      vwn::matrix_ref<float> dZ, workspace& ws) {
    base::backward_depth(p, dH_out, Z, dZ, ws);
    round_to_bf16(dZ);
  }
  void backward_width(vwn::host_t p, vwn::matrix_cref<float> H, vwn::matrix_cref<float> dX, vwn::matrix_cref<float> dC,
                      vwn::matrix_ref<float> dH, workspace& ws) {
    base::backward_width(p, H, dX, dC, dH, ws);
    round_to_bf16(dH);
  }
};

// Either host embedding (`vwn::overwidth_embedding` or `vwn::lowrank_overwidth_embedding`, float) with its
// output rounded as the device stores it.
template <class Base>
class embedding : public Base {
 public:
  using Base::Base;
  using Base::backward;
  void forward(vwn::host_t p, std::span<const std::int32_t> tokens, vwn::matrix_ref<float> H0) const {
    Base::forward(p, tokens, H0);
    round_to_bf16(H0);
  }
};

// The device stores the GroupNorm output as bf16 and multiplies that (forward GEMM and d W_reduce); d normed stays
// float. The host float head computes h from its float GroupNorm output: round the saved output and form h again.
template <int M, int N>
class reduce_head : public vwn::reduce_head<M, N, float> {
  using base = vwn::reduce_head<M, N, float>;

 public:
  using base::base;
  using typename base::workspace;
  void forward(vwn::host_t p, vwn::matrix_cref<float> H, vwn::matrix_ref<float> h, workspace& ws) const {
    base::forward(p, H, h, ws);
    if constexpr (base::has_groupnorm) {
      round_to_bf16(ws.normed);
      h.noalias() = ws.normed * this->params.W_reduce.transpose();
    }
    round_to_bf16(h);
  }
  void backward(vwn::host_t p, vwn::matrix_cref<float> H, vwn::matrix_cref<float> dh, vwn::matrix_ref<float> dH,
                workspace& ws) {
    base::backward(p, H, dh, dH, ws);
    round_to_bf16(dH);
  }
};

template <int M, int N>
class mtp_mixer : public vwn::mtp_mixer<M, N, float> {
  using base = vwn::mtp_mixer<M, N, float>;

 public:
  using base::base;
  void forward(vwn::host_t p, vwn::matrix_cref<float> A, vwn::matrix_cref<float> B, vwn::matrix_ref<float> U) const {
    base::forward(p, A, B, U);
    round_to_bf16(U);
  }
  void backward(vwn::host_t p, vwn::matrix_cref<float> A, vwn::matrix_cref<float> B, vwn::matrix_cref<float> dU,
                vwn::matrix_ref<float> dA, vwn::matrix_ref<float> dB) {
    base::backward(p, A, B, dU, dA, dB);
    round_to_bf16(dA);
    round_to_bf16(dB);
  }
};

}  // namespace bf16_simulation

// The back end: the host float one with the modules above, inputs rounded to bf16 and the bf16 tolerances.
struct bf16_simulation_backend : host_backend<float> {
  template <int M, int N, bool Dynamic>
  using ghc = bf16_simulation::ghc<M, N, Dynamic>;
  template <int M, int N>
  using overwidth_embedding = bf16_simulation::embedding<vwn::overwidth_embedding<M, N, float>>;
  template <int M, int N>
  using lowrank_overwidth_embedding = bf16_simulation::embedding<vwn::lowrank_overwidth_embedding<M, N, float>>;
  template <int M, int N>
  using reduce_head = bf16_simulation::reduce_head<M, N>;
  template <int M, int N>
  using mtp_mixer = bf16_simulation::mtp_mixer<M, N>;

  static std::string name() { return "host_bf16_simulation"; }
  static double round(double x) { return double(bf16_round(float(x))); }
  static constexpr tolerance output_tolerance = bf16_output_tolerance;
};

}  // namespace vwn_test
