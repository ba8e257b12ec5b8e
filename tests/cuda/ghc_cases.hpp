#pragma once
// One GHC sub-layer, forward and backward, on the device against the host back end in double: every
// output (X, C, H_out, dZ, dH) and every parameter gradient.

#include "cuda_test_common.hpp"

namespace vwn_cuda_test {

template <int M_, int N_, bool Dynamic_, class S_>
struct ghc_case {
  static constexpr int M = M_, N = N_;
  static constexpr bool Dynamic = Dynamic_;
  using S = S_;
};

struct ghc_case_names {
  template <class C>
  static std::string GetName(int) {
    return std::string(C::Dynamic ? "dghc" : "ghc") + "_m" + std::to_string(C::M) + "_n" + std::to_string(C::N) + "_" +
           vwn::cuda::detail::storage_info<typename C::S>::name();
  }
};

template <class S>
using ghc_cases = ::testing::Types<ghc_case<1, 1, false, S>, ghc_case<1, 1, true, S>, ghc_case<1, 4, false, S>,
                                   ghc_case<1, 4, true, S>, ghc_case<2, 3, false, S>, ghc_case<2, 3, true, S>,
                                   ghc_case<4, 8, false, S>, ghc_case<4, 8, true, S>, ghc_case<8, 64, false, S>,
                                   ghc_case<8, 64, true, S>>;

// Moves every parameter away from its initial value so that every gradient path is exercised.
template <class Layer>
void randomise(Layer& layer, std::mt19937_64& gen) {
  constexpr int M = Layer::m, N = Layer::n;
  auto& p = layer.params;
  p.alpha += vwn_test::randn<double>(N, M + N, gen, 0.3);
  p.beta += vwn_test::randn<double>(N, M, gen, 0.3);
  if constexpr (Layer::is_dynamic) {
    const index_t db = layer.block_width();
    p.W_alpha = vwn_test::randn<double>(db, M + N, gen, 0.5 / std::sqrt(double(db) / 6));
    p.W_beta = vwn_test::randn<double>(db, M, gen, 0.5 / std::sqrt(double(db) / 6));
    p.S_alpha.array() += vwn_test::randn<double>(N, M + N, gen, 0.3).array();
    p.S_beta.array() += vwn_test::randn<double>(N, M, gen, 0.3).array();
    p.g.array() += vwn_test::randn<double>(db, 1, gen, 0.3).array();
  }
  round_parameters_to_float(p);
}

template <class Case>
void compare_ghc(index_t db, index_t T) {
  constexpr int M = Case::M, N = Case::N;
  using S = typename Case::S;
  using host_layer = vwn::basic_ghc<M, N, double, Case::Dynamic>;
  using device_layer = vwn::cuda::basic_ghc<M, N, S, Case::Dynamic>;
  const auto seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", db " + std::to_string(db) + ", T " + std::to_string(T));
  std::mt19937_64 gen(seed);
  const index_t D = M * db, Dw = N * db;

  host_layer host(D);
  randomise(host, gen);
  device_layer dev(D);
  dev.params.upload(vwn::cuda::device, host.params);

  const vwn::matrix<double> H = random_input<S>(T, Dw, gen), Z = random_input<S>(T, D, gen),
                            dHo = random_input<S>(T, Dw, gen), dX = random_input<S>(T, D, gen),
                            dC = random_input<S>(T, Dw, gen);

  // Host reference in double.
  typename host_layer::workspace hws;
  vwn::matrix<double> X(T, D), C(T, Dw), Ho(T, Dw), dZ(T, D), dH(T, Dw);
  host.forward_width(vwn::host, H, X, C, hws);
  host.forward_depth(vwn::host, Z, C, Ho, hws);
  host.backward_depth(vwn::host, dHo, Z, dZ, hws);
  host.backward_width(vwn::host, H, dX, dC, dH, hws);

  // Device, every output poisoned first.
  const auto dH_in = to_device<S>(H), dZ_in = to_device<S>(Z), ddHo = to_device<S>(dHo), ddX = to_device<S>(dX),
             ddC = to_device<S>(dC);
  auto gX = poisoned<S>(T, D), gC = poisoned<S>(T, Dw), gHo = poisoned<S>(T, Dw), gdZ = poisoned<S>(T, D),
       gdH = poisoned<S>(T, Dw);
  typename device_layer::workspace ws;
  dev.forward_width(vwn::cuda::device, dH_in, gX, gC, ws);
  dev.forward_depth(vwn::cuda::device, dZ_in, gC, gHo, ws);
  dev.backward_depth(vwn::cuda::device, ddHo, dZ_in, gdZ, ws);
  dev.backward_width(vwn::cuda::device, dH_in, ddX, ddC, gdH, ws);
  vwn::cuda::device.synchronize();

  const tolerance out = output_tolerance<S>();
  EXPECT_TRUE(near(to_host(gX), X, out)) << "X";
  EXPECT_TRUE(near(to_host(gC), C, out)) << "C";
  EXPECT_TRUE(near(to_host(gHo), Ho, out)) << "H_out";
  EXPECT_TRUE(near(to_host(gdZ), dZ, out)) << "dZ";
  EXPECT_TRUE(near(to_host(gdH), dH, out)) << "dH";

  host_layer got(D);
  dev.grads.download(vwn::cuda::device, got.grads);
  auto& g = host.grads;
  auto& q = got.grads;
  EXPECT_TRUE(near(q.alpha, g.alpha, gradient_tolerance)) << "d alpha";
  EXPECT_TRUE(near(q.beta, g.beta, gradient_tolerance)) << "d beta";
  if constexpr (Case::Dynamic) {
    EXPECT_TRUE(near(q.W_alpha, g.W_alpha, gradient_tolerance)) << "d W_alpha";
    EXPECT_TRUE(near(q.W_beta, g.W_beta, gradient_tolerance)) << "d W_beta";
    EXPECT_TRUE(near(q.S_alpha, g.S_alpha, gradient_tolerance)) << "d S_alpha";
    EXPECT_TRUE(near(q.S_beta, g.S_beta, gradient_tolerance)) << "d S_beta";
    EXPECT_TRUE(near(q.g, g.g, gradient_tolerance)) << "d g";
  }

  // The depth connection in place (H_out = C) gives the same H_out.
  dev.forward_depth(vwn::cuda::device, dZ_in, gC, gC, ws);
  EXPECT_TRUE(near(to_host(gC), Ho, out)) << "H_out computed in place";

  // A second backward accumulates: the gradients double.
  dev.backward_depth(vwn::cuda::device, ddHo, dZ_in, gdZ, ws);
  dev.backward_width(vwn::cuda::device, dH_in, ddX, ddC, gdH, ws);
  host_layer twice(D);
  dev.grads.download(vwn::cuda::device, twice.grads);
  EXPECT_TRUE(near(twice.grads.alpha, (2 * g.alpha).eval(), gradient_tolerance)) << "d alpha accumulated";
}

// At initialisation the device reproduces X = H[0:m], C = H, H_out[j] = H[j] + Z[j mod m] exactly
// (every coefficient is 0 or 1; tanh(0) = 0).
template <class Case>
void init_identity(index_t db, index_t T) {
  constexpr int M = Case::M, N = Case::N;
  using S = typename Case::S;
  std::mt19937_64 gen(vwn_test::fresh_seed());
  const index_t D = M * db, Dw = N * db;
  vwn::cuda::basic_ghc<M, N, S, Case::Dynamic> dev(D);
  const vwn::matrix<double> H = random_input<S>(T, Dw, gen), Z = random_input<S>(T, D, gen);
  vwn::matrix<double> expect(T, Dw);
  for (index_t t = 0; t < T; ++t)
    for (index_t j = 0; j < N; ++j)
      for (index_t d = 0; d < db; ++d)
        expect(t, j * db + d) = round_to<S>(H(t, j * db + d) + Z(t, (j % M) * db + d));
  const auto dH_in = to_device<S>(H), dZ_in = to_device<S>(Z);
  auto gX = poisoned<S>(T, D), gC = poisoned<S>(T, Dw), gHo = poisoned<S>(T, Dw);
  typename decltype(dev)::workspace ws;
  dev.forward_width(vwn::cuda::device, dH_in, gX, gC, ws);
  dev.forward_depth(vwn::cuda::device, dZ_in, gC, gHo, ws);
  EXPECT_TRUE(vwn_test::close(to_host(gX), H.leftCols(D), 0, 0)) << "X = H[0:m]";
  EXPECT_TRUE(vwn_test::close(to_host(gC), H, 0, 0)) << "C = H";
  EXPECT_TRUE(vwn_test::close(to_host(gHo), expect, 0, 0)) << "H_out[j] = H[j] + Z[j mod m]";
}

}  // namespace vwn_cuda_test

// The typed test bodies, instantiated by test_ghc_float.cu and test_ghc_bf16.cu.
#define VWN_CUDA_GHC_TESTS(Suite, S)                                                                      \
  template <class C>                                                                                      \
  class Suite : public vwn_cuda_test::DeviceTest {};                                                      \
  TYPED_TEST_SUITE(Suite, vwn_cuda_test::ghc_cases<S>, vwn_cuda_test::ghc_case_names);                    \
  /* Odd token count, slot width not a power of two and below one tile. */                                \
  TYPED_TEST(Suite, MatchesHostSmall) { vwn_cuda_test::compare_ghc<TypeParam>(TypeParam::N >= 64 ? 15 : 45, 37); } \
  /* Slot width past several 32-column tiles and the 256-thread block, not a multiple of either. */       \
  TYPED_TEST(Suite, MatchesHostWide) { vwn_cuda_test::compare_ghc<TypeParam>(300, 19); }                  \
  TYPED_TEST(Suite, InitIdentityIsExact) { vwn_cuda_test::init_identity<TypeParam>(75, 37); }
