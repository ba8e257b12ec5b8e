// Over-width embeddings, the GroupNorm + reduce head and the block-level MTP mixer on the host: gradients against
// central finite differences in double, and argument checks; and the host float instantiation of the test bodies
// every back end shares (modules_body.hpp: against the host in double).

#include <support/backend.hpp>
#include <support/common.hpp>

#include "modules_body.hpp"

namespace {

using namespace vwn_test;
using vwn::index_t;

VWN_MODULE_TESTS(HostFloatModules, vwn_test::host_backend<float>)

template <class C>
class ModuleTest : public ::testing::Test {};
TYPED_TEST_SUITE(ModuleTest, shape_cases, case_names);

std::vector<std::int32_t> token_batch(index_t V, index_t T, std::mt19937_64& gen) {
  std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(V - 1));
  std::vector<std::int32_t> t(static_cast<std::size_t>(T));
  for (auto& x : t) x = u(gen);
  t[1] = t[0];  // a repeated token: its rows must be summed
  return t;
}

TYPED_TEST(ModuleTest, DirectEmbeddingGradient) {
  constexpr int M = TypeParam::M, N = TypeParam::N, db = fd_block_width<TypeParam>;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t V = 7, T = 5;
  vwn::overwidth_embedding<M, N, double> emb(V, M * db, seed);
  const auto tokens = token_batch(V, T, gen);
  const vwn::matrix<double> gH = randn<double>(T, N * db, gen);
  vwn::matrix<double> H(T, N * db);
  poison(H);
  emb.forward(vwn::host, tokens, H);
  for (index_t t = 0; t < T; ++t) EXPECT_TRUE(H.row(t) == emb.params.E.row(tokens[std::size_t(t)]));
  emb.backward(vwn::host, tokens, gH);
  emb.backward(vwn::host, tokens, gH);  // accumulates: twice the gradient
  vwn::matrix<double> dE = vwn::matrix<double>::Zero(V, N * db);
  emb.grads.E.add_to(dE, 0.5);
  EXPECT_TRUE(std::is_sorted(emb.grads.E.rows.begin(), emb.grads.E.rows.end()));
  EXPECT_LT(emb.grads.E.rows.size(), tokens.size()) << "repeated rows are merged";
  check_gradients(
      [&] {
        emb.forward(vwn::host, tokens, H);
        return (H.array() * gH.array()).sum();
      },
      {target("E", emb.params.E, dE)});
}

TYPED_TEST(ModuleTest, LowRankEmbeddingGradient) {
  constexpr int M = TypeParam::M, N = TypeParam::N, db = fd_block_width<TypeParam>;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t V = 7, T = 5;
  vwn::lowrank_overwidth_embedding<M, N, double> emb(V, M * db, seed);
  emb.params.E_base = randn<double>(V, M * db, gen);  // unit scale: the default 0.02 is too small for FD
  const auto tokens = token_batch(V, T, gen);
  const vwn::matrix<double> gH = randn<double>(T, N * db, gen);
  vwn::matrix<double> H(T, N * db);
  auto loss = [&] {
    poison(H);
    emb.forward(vwn::host, tokens, H);
    return (H.array() * gH.array()).sum();
  };
  loss();
  emb.backward(vwn::host, tokens, gH);
  vwn::matrix<double> dE = vwn::matrix<double>::Zero(V, M * db);
  emb.grads.E_base.add_to(dE);
  check_gradients(loss, {target("E_base", emb.params.E_base, dE),
                         target("W_expand", emb.params.W_expand, emb.grads.W_expand)});
}

TYPED_TEST(ModuleTest, ReduceHeadGradient) {
  constexpr int M = TypeParam::M, N = TypeParam::N, db = fd_block_width<TypeParam>;
  using head = vwn::reduce_head<M, N, double>;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t T = 5, D = M * db, Dw = N * db;
  head h(D, seed);
  if constexpr (head::has_groupnorm) {
    h.params.gn_weight.array() += randn<double>(Dw, 1, gen, 0.3).array();
    h.params.gn_bias = randn<double>(Dw, 1, gen, 0.3);
  }
  vwn::matrix<double> H = randn<double>(T, Dw, gen, 2.0), out(T, D), dH(T, Dw);
  H.array() += 0.5;  // non-zero group means
  const vwn::matrix<double> gh = randn<double>(T, D, gen);
  typename head::workspace ws;
  auto loss = [&] {
    poison(out);
    h.forward(vwn::host, H, out, ws);
    return (out.array() * gh.array()).sum();
  };
  loss();
  poison(dH);
  h.backward(vwn::host, H, gh, dH, ws);
  const vwn::matrix<double> dH_analytic = dH;
  std::vector<fd_target> targets{target("H", H, dH_analytic)};
  if constexpr (head::has_reduce) targets.push_back(target("W_reduce", h.params.W_reduce, h.grads.W_reduce));
  if constexpr (head::has_groupnorm) {
    targets.push_back(target("gn_weight", h.params.gn_weight, h.grads.gn_weight));
    targets.push_back(target("gn_bias", h.params.gn_bias, h.grads.gn_bias));
  }
  check_gradients(loss, targets);
  if constexpr (!head::has_reduce) {
    loss();
    EXPECT_TRUE(out == H) << "n == m: nothing to reduce";
  }
}

TEST(ReduceHead, GroupNormPresenceFollowsTheRatio) {
  static_assert(vwn::reduce_head<8, 64>::has_groupnorm && vwn::reduce_head<8, 64>::groups == 8);
  static_assert(vwn::reduce_head<1, 4>::has_groupnorm);
  static_assert(!vwn::reduce_head<2, 3>::has_groupnorm && vwn::reduce_head<2, 3>::has_reduce);
  static_assert(!vwn::reduce_head<2, 2>::has_reduce && !vwn::reduce_head<1, 1>::has_reduce);
  // A GroupNorm output has zero mean and unit variance per group of D values at init.
  std::mt19937_64 gen(fresh_seed());
  vwn::reduce_head<2, 4, double> h(6);
  vwn::reduce_head<2, 4, double>::workspace ws;
  vwn::matrix<double> H = randn<double>(3, 12, gen, 3.0), out(3, 6);
  h.forward(vwn::host, H, out, ws);
  for (index_t t = 0; t < 3; ++t)
    for (int k = 0; k < 2; ++k) {
      const auto g = ws.normed.row(t).segment(6 * k, 6);
      EXPECT_NEAR(g.mean(), 0, 1e-12);
      EXPECT_NEAR(g.squaredNorm() / 6, 1, 1e-5);  // 1 - eps/var
    }
}

TYPED_TEST(ModuleTest, MtpMixerGradient) {
  constexpr int M = TypeParam::M, N = TypeParam::N, db = fd_block_width<TypeParam>;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t T = 5, Dw = N * db;
  vwn::mtp_mixer<M, N, double> mix(M * db, seed);
  vwn::matrix<double> A = randn<double>(T, Dw, gen), B = randn<double>(T, Dw, gen), U(T, Dw), dA(T, Dw), dB(T, Dw);
  const vwn::matrix<double> gU = randn<double>(T, Dw, gen);
  auto loss = [&] {
    poison(U);
    mix.forward(vwn::host, A, B, U);
    return (U.array() * gU.array()).sum();
  };
  loss();
  // Independent per-slot evaluation of U[t, j] = W_mix [A_j; B_j].
  for (index_t t = 0; t < T; ++t)
    for (int j = 0; j < N; ++j) {
      Eigen::VectorXd ab(2 * db);
      ab << A.row(t).segment(j * db, db).transpose(), B.row(t).segment(j * db, db).transpose();
      const Eigen::VectorXd u = mix.params.W_mix * ab;
      EXPECT_TRUE(close(U.row(t).segment(j * db, db).transpose(), u, 1e-12, 1e-12));
    }
  poison(dA), poison(dB);
  mix.backward(vwn::host, A, B, gU, dA, dB);
  const vwn::matrix<double> dA0 = dA, dB0 = dB;
  check_gradients(loss, {target("A", A, dA0), target("B", B, dB0), target("W_mix", mix.params.W_mix, mix.grads.W_mix)});
}

// ---- argument checks ----

template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "(no exception)";
}

TEST(ModuleErrors, EmbeddingRejectsBadTokensAndShapes) {
  vwn::overwidth_embedding<2, 3> emb(10, 4);
  vwn::matrix<float> H(3, 6);
  H.setConstant(5);
  const std::vector<std::int32_t> bad{1, 10, 2}, neg{-1, 0, 0}, good{1, 2, 3};
  std::string msg = error_of<std::out_of_range>([&] { emb.forward(vwn::host, bad, H); });
  EXPECT_NE(msg.find("position 1 is 10, expected 0 <= token < vocabulary size 10"), std::string::npos) << msg;
  EXPECT_NE(error_of<std::out_of_range>([&] { emb.forward(vwn::host, neg, H); }).find("is -1"), std::string::npos);
  EXPECT_TRUE((H.array() == 5).all()) << "a rejected call writes nothing";
  vwn::matrix<float> H2(3, 7);
  msg = error_of<std::invalid_argument>([&] { emb.forward(vwn::host, good, H2); });
  EXPECT_NE(msg.find("H0 shape: expected 3x6, got 3x7"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([&] { emb.forward(vwn::host, std::span<const std::int32_t>{}, H); });
  EXPECT_NE(msg.find("at least 1 token"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([] { vwn::lowrank_overwidth_embedding<4, 8> e(10, 6); });
  EXPECT_NE(msg.find("multiple of m = 4"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([] { vwn::overwidth_embedding<1, 2> e(0, 6); });
  EXPECT_NE(msg.find("vocabulary size: expected V >= 1, got 0"), std::string::npos) << msg;
}

TEST(ModuleErrors, ReduceAndMixerRejectBadShapes) {
  vwn::reduce_head<1, 4> head(5);
  vwn::reduce_head<1, 4>::workspace ws;
  vwn::matrix<float> H(2, 20), h(2, 5), hbad(2, 4), Hbad(2, 19), empty(0, 20);
  std::string msg = error_of<std::invalid_argument>([&] { head.forward(vwn::host, Hbad, h, ws); });
  EXPECT_NE(msg.find("expected 20 columns, got 19"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([&] { head.forward(vwn::host, H, hbad, ws); });
  EXPECT_NE(msg.find("h shape: expected 2x5, got 2x4"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([&] { head.forward(vwn::host, empty, h, ws); });
  EXPECT_NE(msg.find("at least 1 token"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([&] { head.backward(vwn::host, H, h, H, ws); });
  EXPECT_NE(msg.find("filled by forward"), std::string::npos) << msg;

  vwn::mtp_mixer<2, 4> mix(6);
  vwn::matrix<float> A(3, 12), B(3, 12), U(3, 12), Bbad(2, 12), wide(3, 16);
  msg = error_of<std::invalid_argument>([&] { mix.forward(vwn::host, A, Bbad, U); });
  EXPECT_NE(msg.find("B shape: expected 3x12, got 2x12"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([&] { mix.forward(vwn::host, A, B, wide.leftCols(12)); });
  EXPECT_NE(msg.find("contiguous rows"), std::string::npos) << msg;
}

}  // namespace
