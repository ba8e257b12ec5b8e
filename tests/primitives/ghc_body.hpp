#pragma once
// The test bodies of one GHC sub-layer, written once for every back end (host float, device float and bf16): the
// back end's forward and backward against the host back end in double on the same inputs (every output and
// every parameter gradient), the paper's initialisation identity (exact), and the argument checks. The host's own
// double path is checked against finite differences (test_ghc.cpp) and PyTorch (test_reference.cpp).

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include <support/backend.hpp>
#include <support/cases.hpp>
#include <support/common.hpp>

namespace vwn_test {

// A fresh random T x W matrix already rounded to the back end's storage.
template <class Backend>
vwn::matrix<double> random_input(index_t T, index_t W, std::mt19937_64& gen, double scale = 1.0) {
  vwn::matrix<double> m = randn<double>(T, W, gen, scale);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = Backend::round(m.data()[i]);
  return m;
}

// Moves every parameter away from its initial value so that every gradient path is exercised, then rounds them to
// float (what every back end but the reference keeps).
template <class Layer>
void randomise_ghc(Layer& layer, std::mt19937_64& gen) {
  constexpr int M = Layer::m, N = Layer::n;
  auto& p = layer.params;
  p.alpha += randn<double>(N, M + N, gen, 0.3);
  p.beta += randn<double>(N, M, gen, 0.3);
  if constexpr (Layer::is_dynamic) {
    const index_t db = layer.block_width();
    p.W_alpha = randn<double>(db, M + N, gen, 0.5 / std::sqrt(double(db) / 6));
    p.W_beta = randn<double>(db, M, gen, 0.5 / std::sqrt(double(db) / 6));
    p.S_alpha.array() += randn<double>(N, M + N, gen, 0.3).array();
    p.S_beta.array() += randn<double>(N, M, gen, 0.3).array();
    p.g.array() += randn<double>(db, 1, gen, 0.3).array();
  }
  round_parameters_to_float(p);
}

// Compares the gradients of `got` (by name) with `scale` times those of `ref`. atol is relative to the largest
// |entry| over all of the module's gradients, not each tensor's own: an entry that cancels to near zero keeps the
// absolute error of the terms it was summed from, and a tensor of one to three entries (a static (1,1) GHC's d beta
// and d alpha) can have only such entries (seed 13353601626233427972, static (1,1), db 300, T 19: d beta = -0.035
// from 5700 terms of unit scale, float error 2.4e-5, outside 5e-4 relative and an atol of its own size).
inline void expect_gradients(const named_tensors& got, const named_tensors& ref, tolerance tol, double scale = 1) {
  ASSERT_EQ(got.size(), ref.size());
  double largest = 0;
  for (const auto& [name, r] : ref)
    if (r.size()) largest = std::max(largest, std::abs(scale) * r.cwiseAbs().maxCoeff());
  for (std::size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(got[i].first, ref[i].first);
    EXPECT_TRUE(close(got[i].second, (scale * ref[i].second).eval(), tol.atol_rel * largest, tol.rtol))
        << "d " << ref[i].first;
  }
}

// A token count that takes every path of the device kernels' token loops: more than 4 x 1024 (the largest grid), so
// that every block handles several tokens and every one of the 128 token groups of the column reductions several
// tokens; odd, so that the last block and group are short.
inline constexpr vwn::index_t long_sequence_tokens = 4 * 1024 + 37;

// Forward and backward of one sub-layer on the back end against the host in double.
template <class Backend, class Case>
void ghc_matches_reference(index_t db, index_t T) {
  constexpr int M = Case::M, N = Case::N;
  using host_layer = vwn::basic_ghc<M, N, double, Case::Dynamic>;
  using layer_t = typename Backend::template ghc<M, N, Case::Dynamic>;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", db " + std::to_string(db) + ", T " + std::to_string(T));
  std::mt19937_64 gen(seed);
  const index_t D = M * db, Dw = N * db;

  host_layer host(D);
  randomise_ghc(host, gen);
  layer_t layer(D);
  Backend::set_parameters(layer, host);

  const vwn::matrix<double> H = random_input<Backend>(T, Dw, gen), Z = random_input<Backend>(T, D, gen),
                            dHo = random_input<Backend>(T, Dw, gen), dX = random_input<Backend>(T, D, gen),
                            dC = random_input<Backend>(T, Dw, gen);

  // The back end, every output poisoned first; its width connection first, since the depth connection's reference
  // needs the C it stored.
  const auto p = Backend::policy();
  const auto bH = Backend::upload(H), bZ = Backend::upload(Z), bdHo = Backend::upload(dHo), bdX = Backend::upload(dX),
             bdC = Backend::upload(dC);
  auto gX = Backend::poisoned(T, D), gC = Backend::poisoned(T, Dw), gHo = Backend::poisoned(T, Dw),
       gdZ = Backend::poisoned(T, D), gdH = Backend::poisoned(T, Dw);
  typename layer_t::workspace ws;
  layer.forward_width(p, bH, gX, gC, ws);
  Backend::synchronize();
  const vwn::matrix<double> C_stored = Backend::download(gC);

  // Reference in double, from the values the back end stores where a later step reads them: the depth connection
  // reads C as stored (rounded to the storage). Rounding the reference's own C is not the same: where float and
  // double land on either side of a rounding boundary, the two C differ by a unit in the last place, which in a
  // bf16 H_out that cancels to near zero is far outside the tolerance. C itself is compared with the reference below.
  typename host_layer::workspace hws;
  vwn::matrix<double> X(T, D), C(T, Dw), Ho(T, Dw), dZ(T, D), dH(T, Dw);
  host.forward_width(vwn::host, H, X, C, hws);
  host.forward_depth(vwn::host, Z, C_stored, Ho, hws);
  host.backward_depth(vwn::host, dHo, Z, dZ, hws);
  host.backward_width(vwn::host, H, dX, dC, dH, hws);

  layer.forward_depth(p, bZ, gC, gHo, ws);
  layer.backward_depth(p, bdHo, bZ, gdZ, ws);
  layer.backward_width(p, bH, bdX, bdC, gdH, ws);
  Backend::synchronize();

  const tolerance out = Backend::output_tolerance;
  EXPECT_TRUE(near(Backend::download(gX), X, out)) << "X";
  EXPECT_TRUE(near(Backend::download(gC), C, out)) << "C";
  EXPECT_TRUE(near(Backend::download(gHo), Ho, out)) << "H_out";
  EXPECT_TRUE(near(Backend::download(gdZ), dZ, out)) << "dZ";
  EXPECT_TRUE(near(Backend::download(gdH), dH, out)) << "dH";
  const named_tensors ref = host_backend<double>::gradients(host);
  expect_gradients(Backend::gradients(layer), ref, Backend::gradient_tolerance);

  // The depth connection in place (H_out = C) gives the same H_out.
  layer.forward_depth(p, bZ, gC, gC, ws);
  EXPECT_TRUE(near(Backend::download(gC), Ho, out)) << "H_out computed in place";

  // A second backward accumulates: the gradients double.
  layer.backward_depth(p, bdHo, bZ, gdZ, ws);
  layer.backward_width(p, bH, bdX, bdC, gdH, ws);
  expect_gradients(Backend::gradients(layer), ref, Backend::gradient_tolerance, 2);
}

// At initialisation the back end reproduces X = H[0:m], C = H, H_out[j] = H[j] + Z[j mod m] exactly (every
// coefficient is 0 or 1; tanh(0) = 0).
template <class Backend, class Case>
void ghc_init_identity(index_t db, index_t T) {
  constexpr int M = Case::M, N = Case::N;
  using layer_t = typename Backend::template ghc<M, N, Case::Dynamic>;
  std::mt19937_64 gen(fresh_seed());
  const index_t D = M * db, Dw = N * db;
  layer_t layer(D);
  const vwn::matrix<double> H = random_input<Backend>(T, Dw, gen), Z = random_input<Backend>(T, D, gen);
  vwn::matrix<double> expect(T, Dw);
  for (index_t t = 0; t < T; ++t)
    for (index_t j = 0; j < N; ++j)
      for (index_t d = 0; d < db; ++d)
        expect(t, j * db + d) = Backend::round(H(t, j * db + d) + Z(t, (j % M) * db + d));
  const auto p = Backend::policy();
  const auto bH = Backend::upload(H), bZ = Backend::upload(Z);
  auto gX = Backend::poisoned(T, D), gC = Backend::poisoned(T, Dw), gHo = Backend::poisoned(T, Dw);
  typename layer_t::workspace ws;
  layer.forward_width(p, bH, gX, gC, ws);
  layer.forward_depth(p, bZ, gC, gHo, ws);
  Backend::synchronize();
  EXPECT_TRUE(close(Backend::download(gX), H.leftCols(D), 0, 0)) << "X = H[0:m]";
  EXPECT_TRUE(close(Backend::download(gC), H, 0, 0)) << "C = H";
  EXPECT_TRUE(close(Backend::download(gHo), expect, 0, 0)) << "H_out[j] = H[j] + Z[j mod m]";
}

// The argument checks are the same on every back end (one set of checks, vwn::detail::ghc_checks): each names what
// was expected and what was got, and is thrown before anything is written or queued.
template <class Backend>
void ghc_argument_checks() {
  using layer_t = typename Backend::template ghc<2, 3, true>;
  layer_t layer(8);  // db = 4, D' = 12
  const auto p = Backend::policy();
  auto H = Backend::upload(vwn::matrix<double>::Ones(5, 12)), X = Backend::poisoned(5, 8), C = Backend::poisoned(5, 12);
  auto badH = Backend::poisoned(5, 11), badX = Backend::poisoned(4, 8);
  typename layer_t::workspace ws;
  std::string msg = error_of([&] { layer.forward_width(p, badH, X, C, ws); });
  EXPECT_NE(msg.find("expected 12 columns, got 11 columns"), std::string::npos) << msg;
  msg = error_of([&] { layer.forward_width(p, H, badX, C, ws); });
  EXPECT_NE(msg.find("X shape: expected 5x8, got 4x8"), std::string::npos) << msg;
  auto Z = Backend::poisoned(5, 8), Ho = Backend::poisoned(5, 12);
  msg = error_of([&] { layer.forward_depth(p, Z, C, Ho, ws); });
  EXPECT_NE(msg.find("workspace: expected one filled by forward_width"), std::string::npos) << msg;
  // Nothing was written by the rejected calls: C is still all NaN.
  Backend::synchronize();
  EXPECT_TRUE(Backend::download(C).array().isNaN().all());
  msg = error_of([&] { layer.forward_width(p, H, X, H, ws); });
  EXPECT_NE(msg.find("C storage: expected memory separate from H"), std::string::npos) << msg;
  auto empty = Backend::poisoned(0, 12), emptyX = Backend::poisoned(0, 8);
  msg = error_of([&] { layer.forward_width(p, empty, emptyX, empty, ws); });
  EXPECT_NE(msg.find("at least 1 token"), std::string::npos) << msg;
  layer.forward_width(p, H, X, C, ws);
  auto badZ = Backend::poisoned(6, 8);
  msg = error_of([&] { layer.forward_depth(p, badZ, C, Ho, ws); });
  EXPECT_NE(msg.find("expected 5x8, got 6x8"), std::string::npos) << msg;
  auto dH = Backend::poisoned(5, 12), dC = Backend::poisoned(5, 13);
  msg = error_of([&] { layer.backward_width(p, H, X, dC, dH, ws); });
  EXPECT_NE(msg.find("dC shape: expected 5x12, got 5x13"), std::string::npos) << msg;
  msg = error_of([&] { layer.backward_width(p, H, X, dH, dH, ws); });
  EXPECT_NE(msg.find("dH storage: expected memory separate from dC"), std::string::npos) << msg;
  msg = error_of([] { typename Backend::template ghc<2, 3, false> bad(7); });
  EXPECT_NE(msg.find("multiple of m = 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("D = 7"), std::string::npos) << msg;
}

}  // namespace vwn_test

// The GHC test suites of one back end. Sizes: an odd token count and a slot width that is not a power of two and
// below one 32-column tile; a slot width past several tiles and a 256-thread block, a multiple of neither.
#define VWN_GHC_TESTS(Suite, Backend)                                                                           \
  template <class C>                                                                                            \
  class Suite : public vwn_test::backend_test<Backend> {};                                                      \
  TYPED_TEST_SUITE(Suite, vwn_test::ghc_cases, vwn_test::case_names);                                           \
  TYPED_TEST(Suite, MatchesHostSmall) {                                                                         \
    vwn_test::ghc_matches_reference<Backend, TypeParam>(TypeParam::N >= 64 ? 15 : 45, 37);                      \
  }                                                                                                             \
  TYPED_TEST(Suite, MatchesHostWide) { vwn_test::ghc_matches_reference<Backend, TypeParam>(300, 19); }          \
  TYPED_TEST(Suite, InitIdentityIsExact) { vwn_test::ghc_init_identity<Backend, TypeParam>(75, 37); }           \
  class Suite##Checks : public vwn_test::backend_test<Backend> {};                                              \
  TEST_F(Suite##Checks, ArgumentChecksThrowBeforeAnythingRuns) { vwn_test::ghc_argument_checks<Backend>(); }

// The long-sequence suite of a back end with token loops over a capped grid (the device, and the host simulation of
// its bf16 storage, where the references meet the most roundings): long_sequence_tokens at slot width 15 (not a
// power of two, one partial tile).
#define VWN_GHC_LONG_TESTS(Suite, Backend)                                                                      \
  template <class C>                                                                                            \
  class Suite : public vwn_test::backend_test<Backend> {};                                                      \
  TYPED_TEST_SUITE(Suite, vwn_test::ghc_cases, vwn_test::case_names);                                           \
  TYPED_TEST(Suite, MatchesHost) {                                                                              \
    vwn_test::ghc_matches_reference<Backend, TypeParam>(15, vwn_test::long_sequence_tokens);                    \
  }
