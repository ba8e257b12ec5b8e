// The manifold-constrained connection families on the host (<vwn/mhc.hpp>, <vwn/math/mhc.hpp>): the carry's projections
// against their convergence bound and exactness, every gradient against central finite differences in double, the
// initial identity, and the argument checks.

#include <algorithm>
#include <cmath>

#include <vwn/mhc.hpp>

#include "ghc_problem.hpp"

namespace {

using namespace vwn_test;

// ---------------------------------------------------------------------------------------------------------------
// Sinkhorn: the sums along the last-normalised axis are 1 to rounding; along the other axis within the Birkhoff-Hopf
// bound of the iteration count. With `kappa = tanh(Delta / 4)`, `Delta` the largest log cross-ratio
// `z_ij + z_kl - z_il - z_kj` of the logits, every normalisation contracts the spread `d = log(max s / min s)` of the
// other axis's sums `s` by `kappa` (Hilbert's projective metric), so after the `2t` normalisations of `t` iterations
// `d <= kappa^(2t-1) d_1`, `d_1` the spread after the first (the softmax); as those sums total `n`, each lies in
// `[e^-d, e^d]`: `|s - 1| <= e^d - 1`. `d_1` and `Delta` come from a plain double computation here.
// ---------------------------------------------------------------------------------------------------------------

template <int N>
struct sinkhorn_case {
  double z[N * N];
  double delta = 0;  // the largest log cross-ratio
  double d1 = 0;     // the spread of the second axis's sums after the first normalisation

  sinkhorn_case(std::mt19937_64& gen, double spread, bool columns_first) {
    std::uniform_real_distribution<double> u(-spread, spread);
    for (double& v : z) v = u(gen);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        for (int k = 0; k < N; ++k)
          for (int l = 0; l < N; ++l) delta = std::max(delta, z[i * N + j] + z[k * N + l] - z[i * N + l] - z[k * N + j]);
    // First normalisation along A (rows unless columns_first), in plain double: e^z / its line sums.
    double e[N * N], s[N] = {};
    for (int i = 0; i < N * N; ++i) e[i] = std::exp(z[i]);
    for (int a = 0; a < N; ++a) {
      double sum = 0;
      for (int k = 0; k < N; ++k) sum += columns_first ? e[k * N + a] : e[a * N + k];
      for (int k = 0; k < N; ++k) (columns_first ? e[k * N + a] : e[a * N + k]) /= sum;
    }
    for (int a = 0; a < N; ++a)
      for (int k = 0; k < N; ++k) s[a] += columns_first ? e[a * N + k] : e[k * N + a];
    d1 = std::log(*std::max_element(s, s + N) / *std::min_element(s, s + N));
  }
};

template <int N>
void check_sinkhorn_sums(const vwn::manifold_rule& base, double extra_tolerance) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", n " + std::to_string(N));
  std::mt19937_64 gen(seed);
  for (const int t : {1, 2, 3, 20}) {
    vwn::manifold_rule rule = base;
    rule.iterations = t;
    const sinkhorn_case<N> c(gen, 0.5, rule.columns_first);
    double p[N * N];
    vwn::math::sinkhorn<N>(c.z, p, rule);
    const double kappa = std::tanh(c.delta / 4);
    const double bound = std::expm1(std::pow(kappa, 2 * t - 1) * c.d1);
    // Rounding: each sum is a chain of at most 4t n operations in double.
    const double rounding = 4.0 * t * N * std::numeric_limits<double>::epsilon();
    double last = 0, other = 0;  // the largest |sum - 1| along the last-normalised axis and along the other one
    for (int a = 0; a < N; ++a) {
      double rs = 0, cs = 0;
      for (int k = 0; k < N; ++k) rs += p[a * N + k], cs += p[k * N + a];
      // The last normalisation is along the second axis: rows when the first is the columns.
      last = std::max(last, std::abs((rule.columns_first ? rs : cs) - 1));
      other = std::max(other, std::abs((rule.columns_first ? cs : rs) - 1));
      for (int k = 0; k < N; ++k) EXPECT_GE(p[a * N + k], 0.0);
    }
    EXPECT_LE(last, rounding + extra_tolerance) << t << " iterations";
    EXPECT_LE(other, bound + rounding + extra_tolerance) << t << " iterations (bound " << bound << ")";
    // The bound is tight enough to fail: one iteration leaves the other axis visibly off.
    if (t == 1) {
      EXPECT_GT(other, 1e-6) << "the first iteration already converged: the case tests nothing";
    }
  }
}

TEST(MhcMath, SinkhornIsDoublyStochasticWithinTheIterationBound) {
  check_sinkhorn_sums<2>(vwn::mhc_connection::rule, 0);
  check_sinkhorn_sums<3>(vwn::mhc_connection::rule, 0);
  check_sinkhorn_sums<4>(vwn::mhc_connection::rule, 0);
  check_sinkhorn_sums<8>(vwn::mhc_connection::rule, 0);
}

TEST(MhcMath, DeepSeekV4SinkhornIsDoublyStochasticWithinTheIterationBoundAndItsEpsilons) {
  // The epsilons move each sum by at most n add_eps (the entries added) plus div_eps / sum per normalisation (a
  // relative 1e-6 for sums near 1): 10 n (add_eps + div_eps) covers both with a margin.
  const vwn::manifold_rule rule = vwn::mhc_v4_connection::rule;
  check_sinkhorn_sums<4>(rule, 10 * 4 * (rule.add_eps + rule.div_eps));
  check_sinkhorn_sums<8>(rule, 10 * 8 * (rule.add_eps + rule.div_eps));
}

// Logits spread beyond float's exponent range (a line of `exp(z - max)` underflows to zero: the paper's exp-domain
// iteration divides 0 by 0 there): the float result and its gradient equal the double computation, whose range still
// holds them, within float rounding (`1e-4`: 40 normalisations of 4 terms, each a few float roundings of values <= 1,
// and exponentials of arguments up to 520 whose relative error grows with them: 520 x 6e-8 = 3.1e-5).
TEST(MhcMath, SinkhornOfLogitsBeyondTheExponentRangeMatchesDouble) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> u(-100, 100);
  const vwn::manifold_rule rule = vwn::mhc_connection::rule;
  int underflowing = 0;
  for (int trial = 0; trial < 20; ++trial) {
    double zd[16], pd[16], gd[16], dzd[16];
    float zf[16], pf[16], gf[16], dzf[16];
    // Odd trials lift row 0 by 320: every entry of row 0 then exceeds every other entry of its column by at least 120,
    // so after the column softmax rows 1 to 3 hold values below e^-120, under float's smallest subnormal, and those
    // trials take the log domain whatever the draw; even trials are the draw alone.
    const double lift = trial % 2 ? 320 : 0;
    for (int e = 0; e < 16; ++e) zd[e] = u(gen) + (e < 4 ? lift : 0), zf[e] = float(zd[e]), zd[e] = double(zf[e]);
    for (int e = 0; e < 16; ++e) gd[e] = u(gen) / 100, gf[e] = float(gd[e]), gd[e] = double(gf[e]);
    float linear[16], sums[160];  // (2t - 1) n line sums
    const bool under = !vwn::math::detail::sinkhorn_linear<4>(zf, linear, rule, sums);
    if (lift > 0) {
      EXPECT_TRUE(under) << "trial " << trial << " was built to underflow in float";
    }
    underflowing += under;
    vwn::math::sinkhorn<4>(zd, pd, rule);
    vwn::math::sinkhorn<4>(zf, pf, rule);
    std::vector<double> sd(std::size_t(vwn::math::sinkhorn_scratch(4, rule.iterations)));
    std::vector<float> sf(sd.size());
    vwn::math::sinkhorn_backward<4>(zd, gd, dzd, rule, sd.data());
    vwn::math::sinkhorn_backward<4>(zf, gf, dzf, rule, sf.data());
    const double gscale = std::max(1.0, *std::max_element(dzd, dzd + 16, [](double x, double y) { return std::abs(x) < std::abs(y); }));
    for (int e = 0; e < 16; ++e) {
      ASSERT_TRUE(std::isfinite(pf[e]) && std::isfinite(dzf[e])) << "trial " << trial << ", entry " << e;
      EXPECT_NEAR(pf[e], pd[e], 1e-4) << "trial " << trial << ", entry " << e;
      EXPECT_NEAR(dzf[e], dzd[e], 1e-4 * std::abs(gscale)) << "trial " << trial << ", entry " << e;
    }
  }
  EXPECT_GE(underflowing, 10) << "the lifted trials take the log domain in float";
}

// The log-domain path's gradient against central differences, in double with logits spread beyond double's range.
TEST(MhcMath, LogDomainSinkhornGradientMatchesFiniteDifferences) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::manifold_rule rule = vwn::mhc_connection::rule;
  // Row 0 sits 800 above the other rows: after the column softmax rows 1 to 3 underflow to zero. A constant added to a
  // row does not change Sinkhorn's result (the row's normalisation removes it), so the matrix is that of the logits
  // without the shift, which the linear domain computes.
  vwn::matrix<double> z = randn<double>(16, 1, gen, 0.5), g = randn<double>(16, 1, gen, 1.0);
  double plain[16], shifted[16];
  vwn::math::sinkhorn<4>(z.data(), plain, rule);
  for (int k = 0; k < 4; ++k) z(k) += 800;
  double linear[16], sums[160];  // (2t - 1) n line sums
  ASSERT_FALSE(vwn::math::detail::sinkhorn_linear<4>(z.data(), linear, rule, sums)) << "the case must underflow";
  vwn::math::sinkhorn<4>(z.data(), shifted, rule);
  // 40 normalisations in double, and logits of 800 whose exponentials' arguments lose 800 x 1.1e-16 each.
  for (int e = 0; e < 16; ++e) EXPECT_NEAR(shifted[e], plain[e], 1e-11) << "entry " << e;
  std::vector<double> scratch(std::size_t(vwn::math::sinkhorn_scratch(4, rule.iterations)));
  vwn::matrix<double> dz(16, 1);
  vwn::math::sinkhorn_backward<4>(z.data(), g.data(), dz.data(), rule, scratch.data());
  check_gradients(
      [&] {
        double p[16], l = 0;
        vwn::math::sinkhorn<4>(z.data(), p, rule);
        for (int e = 0; e < 16; ++e) l += g(e) * p[e];
        return l;
      },
      {target("dz", z, dz)});
}

TEST(MhcMath, PermutationMixtureIsExactlyDoublyStochastic) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  // Every permutation once, the identity first.
  int seen[24] = {};
  for (int p = 0; p < 24; ++p) {
    int perm[4];
    vwn::math::permutation<4>(p, perm);
    int code = 0, used = 0;
    for (int i = 0; i < 4; ++i) code = code * 4 + perm[i], used |= 1 << perm[i];
    EXPECT_EQ(used, 15) << "permutation " << p << " repeats a value";
    for (int q = 0; q < p; ++q) EXPECT_NE(seen[q], code) << "permutations " << q << " and " << p << " are equal";
    seen[p] = code;
    if (p == 0) {
      EXPECT_EQ(code, 0 * 64 + 1 * 16 + 2 * 4 + 3) << "the first permutation is the identity";
    }
  }
  const vwn::matrix<double> z = randn<double>(24, 1, gen, 3.0);
  double w[24], p[16];
  vwn::math::permutation_mixture<4>(z.data(), w, p);
  // Each row and column sums the 24 weights once each (in some order): 1 within 24 roundings.
  for (int a = 0; a < 4; ++a) {
    double rs = 0, cs = 0;
    for (int k = 0; k < 4; ++k) rs += p[a * 4 + k], cs += p[k * 4 + a];
    EXPECT_NEAR(rs, 1.0, 48 * std::numeric_limits<double>::epsilon());
    EXPECT_NEAR(cs, 1.0, 48 * std::numeric_limits<double>::epsilon());
  }
}

// Backward of the carry projections against central differences of a random linear loss `sum(g . P(z))`.
template <int N>
void check_projection_gradient(const vwn::manifold_rule& rule) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  constexpr int R = vwn::factorial(N) > N * N ? vwn::factorial(N) : N * N;
  const int count = rule.permutations ? vwn::factorial(N) : N * N;
  vwn::matrix<double> z = randn<double>(R, 1, gen, 1.0), g = randn<double>(N * N, 1, gen, 1.0);
  std::vector<double> scratch(std::size_t(vwn::math::manifold_scratch(rule, N)) + R), dz(R);
  const auto loss = [&] {
    double p[N * N];
    if (rule.permutations)
      vwn::math::permutation_mixture<N>(z.data(), scratch.data(), p);
    else
      vwn::math::sinkhorn<N>(z.data(), p, rule);
    double l = 0;
    for (int e = 0; e < N * N; ++e) l += g(e) * p[e];
    return l;
  };
  if (rule.permutations) {
    std::vector<double> w(R), dw(R);
    double p[N * N];
    vwn::math::permutation_mixture<N>(z.data(), w.data(), p);
    vwn::math::permutation_mixture_backward<N>(w.data(), g.data(), dw.data(), dz.data());
  } else {
    vwn::math::sinkhorn_backward<N>(z.data(), g.data(), dz.data(), rule, scratch.data());
  }
  vwn::matrix<double> grad = Eigen::Map<const vwn::matrix<double>>(dz.data(), count, 1);
  z.conservativeResize(count, 1);
  check_gradients(loss, {target("dz", z, grad)});
}

TEST(MhcMath, CarryProjectionGradientsMatchFiniteDifferences) {
  check_projection_gradient<3>(vwn::mhc_connection::rule);
  check_projection_gradient<4>(vwn::mhc_connection::rule);
  check_projection_gradient<4>(vwn::mhc_v4_connection::rule);
  check_projection_gradient<3>(vwn::mhc_lite_connection::rule);
  check_projection_gradient<4>(vwn::mhc_lite_connection::rule);
}

// ---------------------------------------------------------------------------------------------------------------
// Whole sub-layers: every gradient (H, Z, the biases, and dynamic the projection and the gates) against central
// finite differences in double, at the paper's (1,4), at (2,3) and at (4,8), every family static and dynamic.
// ---------------------------------------------------------------------------------------------------------------

template <int M, int N, bool Dynamic, class Connection>
struct layer_case {
  using layer = vwn::basic_ghc<M, N, double, Dynamic, Connection>;
};

template <class Case>
class MhcLayer : public ::testing::Test {};
using layer_cases = ::testing::Types<
    layer_case<1, 4, false, vwn::mhc_connection>, layer_case<1, 4, true, vwn::mhc_connection>,
    layer_case<2, 3, false, vwn::mhc_connection>, layer_case<2, 3, true, vwn::mhc_connection>,
    layer_case<4, 8, false, vwn::mhc_connection>, layer_case<4, 8, true, vwn::mhc_connection>,
    layer_case<1, 4, false, vwn::mhc_lite_connection>, layer_case<1, 4, true, vwn::mhc_lite_connection>,
    layer_case<2, 3, false, vwn::mhc_lite_connection>, layer_case<2, 3, true, vwn::mhc_lite_connection>,
    layer_case<1, 4, false, vwn::mhc_v4_connection>, layer_case<1, 4, true, vwn::mhc_v4_connection>,
    layer_case<2, 3, true, vwn::mhc_v4_connection>, layer_case<4, 8, true, vwn::mhc_v4_connection>>;
TYPED_TEST_SUITE(MhcLayer, layer_cases);

template <class Layer>
void randomise(Layer& layer, std::mt19937_64& gen) {
  auto& p = layer.params;
  // Logits of order 1 (the sigmoids and the carry away from saturation), every gate non-zero.
  p.bias = randn<double>(p.bias.size(), 1, gen, 1.0);
  if constexpr (Layer::is_dynamic) {
    p.phi = randn<double>(p.phi.rows(), p.phi.cols(), gen, 0.3);
    p.gate = randn<double>(3, 1, gen, 0.7);
  }
}

TYPED_TEST(MhcLayer, GradientsMatchFiniteDifferences) {
  using Layer = typename TypeParam::layer;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", " + Layer::name());
  std::mt19937_64 gen(seed);
  sublayer_problem<Layer> p(5, 3, gen);
  randomise(p.layer, gen);
  p.forward();
  p.backward();
  const vwn::matrix<double> dH = p.dH, dZ = p.dZ;
  auto& v = p.layer.params;
  auto& g = p.layer.grads;
  std::vector<fd_target> targets{target("dH", p.H, dH), target("dZ", p.Z, dZ), target("bias", v.bias, g.bias)};
  if constexpr (Layer::is_dynamic) {
    targets.push_back(target("phi", v.phi, g.phi));
    targets.push_back(target("gate", v.gate, g.gate));
  }
  check_gradients([&] { return p.loss(); }, targets);
}

// At initialisation the coefficients are the VWN identity initialisation up to the logit gap: `X_i = H_i`,
// `H_out_j = H_j + Z_{j mod m}`, each off by at most the weight the gap leaves on the other terms: the pre map's
// `sigmoid(-8)` on each of `n` slots, the carry's `e^-8` on each of its other `n - 1` entries (Sinkhorn of a
// 0 / -8 matrix, which is symmetric and so stays as its first normalisation) or `n! - 1` permutations (mHC-lite), twice
// (the diagonal entry loses what the others gain), and the post map's `2 sigmoid(-8)` on each of `m` segments.
TYPED_TEST(MhcLayer, InitialisationIsTheIdentityWithinTheLogitGap) {
  using Layer = typename TypeParam::layer;
  constexpr int M = Layer::m, N = Layer::n;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + ", " + Layer::name());
  std::mt19937_64 gen(seed);
  sublayer_problem<Layer> p(5, 4, gen);
  p.forward();
  const double hmax = p.H.cwiseAbs().maxCoeff(), zmax = p.Z.cwiseAbs().maxCoeff();
  const double e8 = std::exp(-vwn::init_logit_gap), s8 = 1 / (1 + std::exp(vwn::init_logit_gap));
  const int others = Layer::connection::rule.permutations ? vwn::factorial(N) - 1 : N - 1;
  const double pre_eps = Layer::connection::rule.pre_eps;
  const double tol_x = N * (s8 + pre_eps) * hmax + 1e-12, tol_c = 2 * others * e8 * hmax + 1e-12;
  const double tol_out = tol_c + M * 2 * s8 * zmax;
  const index_t db = p.layer.block_width();
  double worst_x = 0, worst_c = 0, worst_out = 0;
  for (index_t t = 0; t < p.T; ++t)
    for (int j = 0; j < N; ++j)
      for (index_t d = 0; d < db; ++d) {
        const double h = p.H(t, j * db + d);
        if (j < M) worst_x = std::max(worst_x, std::abs(p.X(t, j * db + d) - h));
        worst_c = std::max(worst_c, std::abs(p.C(t, j * db + d) - h));
        worst_out = std::max(worst_out, std::abs(p.Hout(t, j * db + d) - h - p.Z(t, (j % M) * db + d)));
      }
  EXPECT_LE(worst_x, tol_x);
  EXPECT_LE(worst_c, tol_c);
  EXPECT_LE(worst_out, tol_out);
}

TEST(MhcLayerChecks, RejectBadArgumentsBeforeWriting) {
  EXPECT_NE(error_of([] { vwn::dghc<2, 3, float, vwn::mhc_connection> bad(5); }).find("multiple of m = 2"),
            std::string::npos);
  EXPECT_NE(error_of([] { vwn::dghc<1, 4, float, vwn::mhc_connection> bad(8, 0); }).find("Sinkhorn iterations"),
            std::string::npos);
  vwn::dghc<1, 4, float, vwn::mhc_connection> layer(8);
  vwn::dghc<1, 4, float, vwn::mhc_connection>::workspace ws;
  vwn::matrix<float> H(3, 32), X(3, 8), C(3, 31);
  const std::string message = error_of([&] { layer.forward_width(vwn::host, H, X, C, ws); });
  EXPECT_NE(message.find("vwn::dghc<1,4,mhc>::forward_width"), std::string::npos) << message;
  EXPECT_NE(message.find("C"), std::string::npos) << message;
  EXPECT_EQ(ws.tokens, 0) << "nothing saved by a rejected call";
}

TEST(MhcLayerChecks, IterationCountIsAParameter) {
  vwn::ghc<1, 4, double, vwn::mhc_connection> twenty(8), three(8, 3);
  EXPECT_EQ(twenty.rule().iterations, 20);
  EXPECT_EQ(three.rule().iterations, 3);
  vwn::ghc<1, 4, double, vwn::mhc_lite_connection> lite(8);
  EXPECT_TRUE(lite.rule().permutations);
  EXPECT_EQ(vwn::connection_names_text(), "vwn mhc mhc-lite mhc-v4");
  std::string found;
  EXPECT_TRUE(vwn::dispatch_connection("mhc-lite", [&]<class C>() { found = std::string(C::name); }));
  EXPECT_EQ(found, "mhc-lite");
  EXPECT_FALSE(vwn::dispatch_connection("sinkhorn", [&]<class C>() { found = "called"; }));
  EXPECT_EQ(found, "mhc-lite");
}

}  // namespace
