// GHC and DGHC on the host: static-GHC gradients against central finite differences in double, the paper's
// initialisation identity, (1,1) as the plain residual; and the host float instantiation of the test bodies every
// back end shares (ghc_body.hpp: against the host in double, init identity, argument checks).

#include <support/backend.hpp>

#include "ghc_body.hpp"
#include "ghc_problem.hpp"

namespace {

using namespace vwn_test;

VWN_GHC_TESTS(HostFloatGhc, vwn_test::host_backend<float>)

template <class C>
class GhcTest : public ::testing::Test {};
TYPED_TEST_SUITE(GhcTest, shape_cases, case_names);

TYPED_TEST(GhcTest, StaticGradientsMatchFiniteDifferences) {
  gradient_check<vwn::ghc<TypeParam::M, TypeParam::N, double>>();
}


// At initialisation (dynamic weights 0): X = H[0:m], C = H, H_out[j] = H[j] + Z[j mod m], for both forms.
template <class Layer>
void init_identity() {
  using S = typename Layer::scalar;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  sublayer_problem<Layer> p(5, 7, gen);  // db = 5 and T = 7: odd sizes on purpose
  p.forward();
  const index_t db = 5, M = Layer::m, N = Layer::n;
  vwn::matrix<S> expect_out(p.T, p.Dw);
  for (index_t t = 0; t < p.T; ++t)
    for (index_t j = 0; j < N; ++j)
      expect_out.row(t).segment(j * db, db) = p.H.row(t).segment(j * db, db) + p.Z.row(t).segment((j % M) * db, db);
  // Exact: at init every coefficient is 0 or 1 (tanh(0) = 0), so only exact additions of 0 and 1*x occur.
  EXPECT_TRUE(close(p.X, p.H.leftCols(M * db), 0, 0)) << "X = H[0:m]";
  EXPECT_TRUE(close(p.C, p.H, 0, 0)) << "C = H";
  EXPECT_TRUE(close(p.Hout, expect_out, 0, 0)) << "H_out[j] = H[j] + Z[j mod m]";
}

TYPED_TEST(GhcTest, StaticInitIdentity) { init_identity<vwn::ghc<TypeParam::M, TypeParam::N, float>>(); }
TYPED_TEST(GhcTest, DynamicInitIdentity) { init_identity<vwn::dghc<TypeParam::M, TypeParam::N, float>>(); }

// (1,1) at init is exactly the residual stream x + T(x), with a non-trivial backbone T = tanh(W x).
template <class Layer>
void plain_residual() {
  using S = typename Layer::scalar;
  std::mt19937_64 gen(fresh_seed());
  const index_t D = 9, T = 4;
  Layer layer(D);
  const vwn::matrix<S> x = randn<S>(T, D, gen), W = randn<S>(D, D, gen);
  vwn::matrix<S> X(T, D), C(T, D), out(T, D);
  typename Layer::workspace ws;
  layer.forward_width(vwn::host, x, X, C, ws);
  const vwn::matrix<S> Z = (X * W.transpose()).array().tanh().matrix();
  layer.forward_depth(vwn::host, Z, C, out, ws);
  const vwn::matrix<S> residual = x + (x * W.transpose()).array().tanh().matrix();
  EXPECT_TRUE(out == residual) << "(1,1) must equal x + T(x) exactly";
}

TEST(GhcPlainResidual, StaticOneOneIsResidual) { plain_residual<vwn::ghc<1, 1, float>>(); }
TEST(GhcPlainResidual, DynamicOneOneIsResidual) { plain_residual<vwn::dghc<1, 1, double>>(); }

TEST(GhcAliases, NamedAliasesAreTheSameTemplates) {
  static_assert(std::is_same_v<vwn::hyper_connection<4>, vwn::ghc<1, 4>>);
  static_assert(std::is_same_v<vwn::dynamic_hyper_connection<4>, vwn::dghc<1, 4>>);
  static_assert(std::is_same_v<vwn::frac_connection<2>, vwn::ghc<2, 2>>);
  static_assert(std::is_same_v<vwn::dynamic_frac_connection<2, double>, vwn::dghc<2, 2, double>>);
  EXPECT_EQ((vwn::dghc<2, 3>::name()), "vwn::dghc<2,3>");
}

TEST(GhcWeightDecay, OnlyDynamicProjectionsAndScalesDecay) {
  vwn::dghc<2, 3> layer(8);
  std::vector<std::string> decayed, not_decayed;
  layer.params.visit([&](std::string_view name, float*, index_t size, bool decay) {
    EXPECT_GT(size, 0);
    (decay ? decayed : not_decayed).emplace_back(name);
  });
  EXPECT_EQ(decayed, (std::vector<std::string>{"W_alpha", "W_beta", "S_alpha", "S_beta"}));
  EXPECT_EQ(not_decayed, (std::vector<std::string>{"alpha", "beta", "g"}));
}

// Parameter-gradient reductions use a fixed number of chunks: the result is the same whatever the
// thread count, and two identical backward passes agree bit for bit.
TEST(GhcDeterminism, BackwardIsBitwiseRepeatable) {
  std::mt19937_64 gen(fresh_seed());
  sublayer_problem<vwn::dghc<2, 3, float>> p(8, 67, gen);
  p.randomise_parameters(gen);
  p.forward();
  p.backward();
  const auto first = p.layer.grads;
  const vwn::matrix<float> dH = p.dH;
  p.forward();
  p.backward();
  EXPECT_TRUE(p.layer.grads.W_alpha == first.W_alpha && p.layer.grads.g == first.g &&
              p.layer.grads.alpha == first.alpha && p.dH == dH);
}


}  // namespace
