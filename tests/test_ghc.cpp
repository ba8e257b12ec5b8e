// GHC and DGHC on the host: static-GHC gradients against central finite differences in double, the paper's
// initialisation identity, (1,1) as the plain residual, and the argument checks.

#include "ghc_problem.hpp"

namespace {

using namespace vwn_test;

template <class C>
class GhcTest : public ::testing::Test {};
TYPED_TEST_SUITE(GhcTest, configs, config_names);

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

// ---- argument checks ----


TEST(GhcErrors, BackboneWidthMustBeAMultipleOfM) {
  const std::string msg = error_of([] { vwn::dghc<4, 8> layer(10); });
  EXPECT_NE(msg.find("multiple of m = 4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("D = 10"), std::string::npos) << msg;
  EXPECT_NE(error_of([] { vwn::ghc<2, 3> layer(0); }).find("D = 0"), std::string::npos);
}

TEST(GhcErrors, MismatchedShapesNameExpectedAndGot) {
  vwn::dghc<2, 3> layer(8);  // db = 4, D' = 12
  vwn::dghc<2, 3>::workspace ws;
  vwn::matrix<float> H = vwn::matrix<float>::Ones(5, 12), X(5, 8), C(5, 12), badH(5, 11), badX(4, 8);
  std::string msg = error_of([&] { layer.forward_width(vwn::host, badH, X, C, ws); });
  EXPECT_NE(msg.find("expected 12 columns, got 11 columns"), std::string::npos) << msg;
  msg = error_of([&] { layer.forward_width(vwn::host, H, badX, C, ws); });
  EXPECT_NE(msg.find("X shape: expected 5x8, got 4x8"), std::string::npos) << msg;
  // C untouched after the failed calls: the checks run before any write.
  C.setConstant(7);
  (void)error_of([&] { layer.forward_width(vwn::host, H, badX, C, ws); });
  EXPECT_TRUE((C.array() == 7).all());
  layer.forward_width(vwn::host, H, X, C, ws);
  vwn::matrix<float> Z(5, 8), Hout(5, 12), badZ(6, 8);
  msg = error_of([&] { layer.forward_depth(vwn::host, badZ, C, Hout, ws); });
  EXPECT_NE(msg.find("expected 5x8, got 6x8"), std::string::npos) << msg;
  vwn::matrix<float> dH(5, 12), dX(5, 8), dC(5, 13);
  msg = error_of([&] { layer.backward_width(vwn::host, H, dX, dC, dH, ws); });
  EXPECT_NE(msg.find("dC shape: expected 5x12, got 5x13"), std::string::npos) << msg;
}

TEST(GhcErrors, OverlappingOutputsAreRejectedAndDepthRunsInPlace) {
  std::mt19937_64 gen(fresh_seed());
  vwn::dghc<2, 3, double> layer(8);
  layer.params.W_alpha = randn<double>(4, 5, gen);
  vwn::dghc<2, 3, double>::workspace ws;
  vwn::matrix<double> H = randn<double>(5, 12, gen), X(5, 8), C(5, 12), Z = randn<double>(5, 8, gen), out(5, 12);
  std::string msg = error_of([&] { layer.forward_width(vwn::host, H, X, H, ws); });
  EXPECT_NE(msg.find("C storage: expected memory separate from H"), std::string::npos) << msg;
  layer.forward_width(vwn::host, H, X, C, ws);
  layer.forward_depth(vwn::host, Z, C, out, ws);
  layer.forward_depth(vwn::host, Z, C, C, ws);  // in place: H_out over C
  EXPECT_TRUE(close(C, out, 1e-14, 1e-14));
  std::vector<double> buf(5 * 12 + 1);
  Eigen::Map<vwn::matrix<double>> C_shifted(buf.data(), 5, 12), out_shifted(buf.data() + 1, 5, 12);
  msg = error_of([&] { layer.forward_depth(vwn::host, Z, C_shifted, out_shifted, ws); });
  EXPECT_NE(msg.find("H_out storage: expected memory separate from C"), std::string::npos) << msg;
  vwn::matrix<double> dH(5, 12);
  msg = error_of([&] { layer.backward_width(vwn::host, H, X, dH, dH, ws); });
  EXPECT_NE(msg.find("dH storage: expected memory separate from dC"), std::string::npos) << msg;
}

TEST(GhcErrors, EmptyBatchAndEmptyWorkspace) {
  vwn::ghc<1, 4> layer(6);
  vwn::ghc<1, 4>::workspace ws;
  vwn::matrix<float> H(0, 24), X(0, 6), C(0, 24);
  std::string msg = error_of([&] { layer.forward_width(vwn::host, H, X, C, ws); });
  EXPECT_NE(msg.find("at least 1 token"), std::string::npos) << msg;
  vwn::matrix<float> Z(3, 6), C3(3, 24), Hout(3, 24);
  msg = error_of([&] { layer.forward_depth(vwn::host, Z, C3, Hout, ws); });
  EXPECT_NE(msg.find("filled by forward_width"), std::string::npos) << msg;
}

}  // namespace
