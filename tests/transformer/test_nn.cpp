// Building blocks of the reference transformer (vwn::nn) on the host: every gradient against central
// finite differences in double, forwards against plain-loop references, the structural properties of
// rope and causal attention, and argument checks.

#include <support/common.hpp>

#include <transformer/nn.hpp>

namespace {

using namespace vwn_test;
using vwn::index_t;
using mat = vwn::matrix<double>;

// Odd sizes: B sequences of T tokens, H heads of width hd, model width C = H*hd, hidden F, vocabulary V.
constexpr index_t B = 2, T = 5, H = 2, hd = 4, C = H * hd, F = 12, V = 11, N = B * T;

// Loss used for every gradient check: <out, g> with a fixed random g.
double dot(const mat& out, const mat& g) { return (out.array() * g.array()).sum(); }

std::vector<std::int32_t> random_targets(index_t n, index_t v, std::mt19937_64& gen) {
  std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(v - 1));
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = u(gen);
  return t;
}

// Plain-loop causal attention: y[b*T+i, h*hd+d] = sum_{j<=i} softmax_j(q_i . k_j / sqrt(hd)) v[b*T+j, h*hd+d].
mat naive_attention(const mat& q, const mat& k, const mat& v, index_t T_, index_t H_, index_t hd_) {
  mat y = mat::Zero(q.rows(), q.cols());
  for (index_t b = 0; b < q.rows() / T_; ++b)
    for (index_t h = 0; h < H_; ++h)
      for (index_t i = 0; i < T_; ++i) {
        std::vector<double> s(static_cast<std::size_t>(i + 1));
        double mx = -HUGE_VAL, sum = 0;
        for (index_t j = 0; j <= i; ++j) {
          double d = 0;
          for (index_t c = 0; c < hd_; ++c) d += q(b * T_ + i, h * hd_ + c) * k(b * T_ + j, h * hd_ + c);
          s[std::size_t(j)] = d / std::sqrt(double(hd_));
          mx = std::max(mx, s[std::size_t(j)]);
        }
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (index_t j = 0; j <= i; ++j)
          for (index_t c = 0; c < hd_; ++c)
            y(b * T_ + i, h * hd_ + c) += s[std::size_t(j)] / sum * v(b * T_ + j, h * hd_ + c);
      }
  return y;
}

// Expects `f()` to throw E with a message containing every string in `parts`.
template <class E, class Fn>
void expect_throw_with(Fn&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  } catch (...) {
    ADD_FAILURE() << "wrong exception type";
  }
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------------------

TEST(NnRmsnorm, ForwardMatchesDefinition) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  vwn::nn::rmsnorm<double> norm(C);
  norm.params.w.array() += randn<double>(C, 1, gen, 0.3).array();
  const mat x = randn<double>(N, C, gen, 2.0);
  mat y(N, C), ref(N, C);
  decltype(norm)::workspace ws;
  poison(y);
  norm.forward(vwn::host, x, y, ws);
  for (index_t r = 0; r < N; ++r) {
    const double rms = std::sqrt(x.row(r).squaredNorm() / double(C) + vwn::norm_eps);
    for (index_t c = 0; c < C; ++c) ref(r, c) = x(r, c) / rms * norm.params.w(c);
  }
  // Same formula, different evaluation order: a few ulps.
  EXPECT_TRUE(close(y, ref, 1e-13, 1e-12));
}

TEST(NnRmsnorm, Gradient) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  vwn::nn::rmsnorm<double> norm(C);
  norm.params.w.array() += randn<double>(C, 1, gen, 0.3).array();
  mat x = randn<double>(N, C, gen), y(N, C), dx(N, C);
  const mat g = randn<double>(N, C, gen);
  decltype(norm)::workspace ws;
  auto loss = [&] {
    poison(y);
    norm.forward(vwn::host, x, y, ws);
    return dot(y, g);
  };
  loss();
  poison(dx);
  norm.backward(vwn::host, x, g, dx, ws);
  const mat dx_analytic = dx;
  check_gradients(loss, {target("x", x, dx_analytic), target("w", norm.params.w, norm.grads.w)});
}

// ---------------------------------------------------------------------------------------------------------
// Linear
// ---------------------------------------------------------------------------------------------------------

TEST(NnLinear, ForwardAndGradient) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  vwn::nn::linear<double> lin(C, F, seed);
  ASSERT_EQ(lin.params.W.rows(), F);
  ASSERT_EQ(lin.params.W.cols(), C);
  mat x = randn<double>(N, C, gen), y(N, F), dx(N, C);
  const mat g = randn<double>(N, F, gen);
  auto loss = [&] {
    poison(y);
    lin.forward(vwn::host, x, y);
    return dot(y, g);
  };
  loss();
  mat ref = mat::Zero(N, F);
  for (index_t r = 0; r < N; ++r)
    for (index_t o = 0; o < F; ++o)
      for (index_t i = 0; i < C; ++i) ref(r, o) += x(r, i) * lin.params.W(o, i);
  EXPECT_TRUE(close(y, ref, 1e-13, 1e-12));  // GEMM vs loop summation order
  poison(dx);
  lin.backward(vwn::host, x, g, dx);
  const mat dx_analytic = dx;
  check_gradients(loss, {target("x", x, dx_analytic), target("W", lin.params.W, lin.grads.W)});
}

TEST(NnLinear, GradientAccumulatesAndVisitNamesW) {
  std::mt19937_64 gen(fresh_seed());
  vwn::nn::linear<double> lin(3, 2);
  const mat x = randn<double>(4, 3, gen), dy = randn<double>(4, 2, gen);
  mat dx(4, 3);
  lin.backward(vwn::host, x, dy, dx);
  const mat once = lin.grads.W;
  lin.backward(vwn::host, x, dy, dx);
  EXPECT_TRUE(close(lin.grads.W, 2 * once, 1e-15, 1e-14));  // exact up to one rounding
  lin.zero_grad();
  EXPECT_EQ(lin.grads.W.norm(), 0.0);
  int seen = 0;
  lin.params.visit([&](const char* name, double*, index_t size, bool decay) {
    EXPECT_STREQ(name, "W");
    EXPECT_EQ(size, 6);
    EXPECT_TRUE(decay);
    ++seen;
  });
  EXPECT_EQ(seen, 1);
}

// ---------------------------------------------------------------------------------------------------------
// Rotary position embedding
// ---------------------------------------------------------------------------------------------------------

TEST(NnRope, ForwardMatchesDefinitionAndPreservesNorms) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::nn::rope<double> rot(hd, 16);
  const mat x = randn<double>(N, C, gen);
  mat y = x;
  rot.forward(vwn::host, y, T);
  mat ref(N, C);
  for (index_t r = 0; r < N; ++r)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < hd / 2; ++i) {
        const double ang = double(r % T) * std::pow(10000.0, -2.0 * double(i) / double(hd));
        const double a = x(r, h * hd + i), b = x(r, h * hd + i + hd / 2);
        ref(r, h * hd + i) = a * std::cos(ang) - b * std::sin(ang);
        ref(r, h * hd + i + hd / 2) = a * std::sin(ang) + b * std::cos(ang);
      }
  EXPECT_TRUE(close(y, ref, 1e-14, 1e-13));  // same formula, tables vs direct
  // Position 0 of every sequence is not rotated.
  for (index_t b = 0; b < B; ++b) EXPECT_TRUE(y.row(b * T) == x.row(b * T));
  // A rotation preserves the norm of every head vector.
  for (index_t r = 0; r < N; ++r)
    for (index_t h = 0; h < H; ++h)
      EXPECT_NEAR(y.row(r).segment(h * hd, hd).norm(), x.row(r).segment(h * hd, hd).norm(), 1e-13);
  // backward with the forward's output as gradient undoes the rotation (the inverse of a rotation).
  rot.backward(vwn::host, y, T);
  EXPECT_TRUE(close(y, x, 1e-14, 1e-13));
}

TEST(NnRope, DotProductDependsOnlyOnPositionDifference) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t L = 9, d = 6;  // one sequence, one head
  const vwn::nn::rope<double> rot(d, L);
  const mat q0 = randn<double>(1, d, gen), k0 = randn<double>(1, d, gen);
  mat q = q0.replicate(L, 1), k = k0.replicate(L, 1);  // the same vectors at every position
  rot.forward(vwn::host, q, L);
  rot.forward(vwn::host, k, L);
  const mat S = q * k.transpose();  // (L, L), S(i, j) = rope(q, i) . rope(k, j)
  for (index_t i = 0; i < L; ++i)
    for (index_t j = 0; j < L; ++j)
      EXPECT_NEAR(S(i, j), S(i - std::min(i, j), j - std::min(i, j)), 1e-12) << i << "," << j;
  EXPECT_GT(std::abs(S(0, 1) - S(1, 0)), 1e-6) << "the score depends on the sign of the offset";
}

TEST(NnRope, Gradient) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::nn::rope<double> rot(hd, T + 2);
  mat x = randn<double>(N, C, gen), y(N, C);
  const mat g = randn<double>(N, C, gen);
  auto loss = [&] {
    y = x;
    rot.forward(vwn::host, y, T);
    return dot(y, g);
  };
  mat dx = g;
  rot.backward(vwn::host, dx, T);
  check_gradients(loss, {target("x", x, dx)});
}

// ---------------------------------------------------------------------------------------------------------
// Causal attention
// ---------------------------------------------------------------------------------------------------------

TEST(NnAttention, ForwardMatchesLoopsAndProbabilitiesAreCausal) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::nn::causal_attention<double> attn(H, hd);
  const mat q = randn<double>(N, C, gen, 1.5), k = randn<double>(N, C, gen, 1.5), v = randn<double>(N, C, gen);
  mat y(N, C);
  decltype(attn)::workspace ws;
  poison(y);
  attn.forward(vwn::host, q, k, v, T, y, ws);
  EXPECT_TRUE(close(y, naive_attention(q, k, v, T, H, hd), 1e-13, 1e-12));  // summation order only
  ASSERT_EQ(ws.probs.rows(), B * H * T);
  ASSERT_EQ(ws.probs.cols(), T);
  for (index_t r = 0; r < B * H * T; ++r) {
    const index_t i = r % T;
    EXPECT_NEAR(ws.probs.row(r).sum(), 1.0, 1e-14);
    EXPECT_EQ(ws.probs.row(r).tail(T - 1 - i).norm(), 0.0) << "row " << r << " attends to the future";
    EXPECT_GT(ws.probs.row(r).head(i + 1).minCoeff(), 0.0);
  }
}

TEST(NnAttention, OutputIsCausal) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::nn::causal_attention<double> attn(H, hd);
  mat q = randn<double>(N, C, gen), k = randn<double>(N, C, gen), v = randn<double>(N, C, gen);
  mat y(N, C), y2(N, C);
  decltype(attn)::workspace ws;
  poison(y);
  attn.forward(vwn::host, q, k, v, T, y, ws);
  // Position 0 of each sequence sees only itself: its output is its own value.
  for (index_t b = 0; b < B; ++b) EXPECT_TRUE(close(y.row(b * T), v.row(b * T), 1e-15, 1e-14));
  // Changing token p = 2 of sequence 0 (its q, k and v) leaves positions < p and sequence 1 unchanged
  // and changes positions >= p.
  const index_t p = 2;
  q.row(p) += randn<double>(1, C, gen).row(0);
  k.row(p) += randn<double>(1, C, gen).row(0);
  v.row(p) += randn<double>(1, C, gen).row(0);
  poison(y2);
  attn.forward(vwn::host, q, k, v, T, y2, ws);
  EXPECT_TRUE(y2.topRows(p) == y.topRows(p)) << "an earlier output depends on a later token";
  EXPECT_TRUE(y2.bottomRows(T) == y.bottomRows(T)) << "sequences are not independent";
  for (index_t t = p; t < T; ++t) EXPECT_GT((y2.row(t) - y.row(t)).norm(), 1e-9) << "position " << t;
}

TEST(NnAttention, Gradient) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::nn::causal_attention<double> attn(H, hd);
  mat q = randn<double>(N, C, gen), k = randn<double>(N, C, gen), v = randn<double>(N, C, gen);
  mat y(N, C), dq(N, C), dk(N, C), dv(N, C);
  const mat g = randn<double>(N, C, gen);
  decltype(attn)::workspace ws;
  auto loss = [&] {
    poison(y);
    attn.forward(vwn::host, q, k, v, T, y, ws);
    return dot(y, g);
  };
  loss();
  poison(dq);
  poison(dk);
  poison(dv);
  attn.backward(vwn::host, q, k, v, g, dq, dk, dv, ws);
  check_gradients(loss, {target("q", q, dq), target("k", k, dk), target("v", v, dv)});
}

TEST(NnAttention, ColumnBlocksOfAFusedMatrix) {
  // q | k | v as column blocks of one (B*T) x 3C matrix (outer stride 3C): same results as separate copies.
  std::mt19937_64 gen(fresh_seed());
  const vwn::nn::causal_attention<double> attn(H, hd);
  const mat qkv = randn<double>(N, 3 * C, gen), g = randn<double>(N, C, gen);
  const mat q = qkv.leftCols(C), k = qkv.middleCols(C, C), v = qkv.rightCols(C);
  mat y(N, C), y_ref(N, C), dqkv(N, 3 * C), dq(N, C), dk(N, C), dv(N, C);
  decltype(attn)::workspace ws;
  attn.forward(vwn::host, q, k, v, T, y_ref, ws);
  attn.backward(vwn::host, q, k, v, g, dq, dk, dv, ws);
  poison(y);
  poison(dqkv);
  attn.forward(vwn::host, qkv.leftCols(C), qkv.middleCols(C, C), qkv.rightCols(C), T, y, ws);
  attn.backward(vwn::host, qkv.leftCols(C), qkv.middleCols(C, C), qkv.rightCols(C), g, dqkv.leftCols(C),
                dqkv.middleCols(C, C), dqkv.rightCols(C), ws);
  EXPECT_TRUE(y == y_ref);
  EXPECT_TRUE(dqkv.leftCols(C) == dq && dqkv.middleCols(C, C) == dk && dqkv.rightCols(C) == dv);
}

// ---------------------------------------------------------------------------------------------------------
// SwiGLU
// ---------------------------------------------------------------------------------------------------------

TEST(NnSwiglu, ForwardAndGradient) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  vwn::nn::swiglu<double> ffn(C, F, seed);
  mat x = randn<double>(N, C, gen, 1.5), y(N, C), dx(N, C);
  const mat g = randn<double>(N, C, gen);
  decltype(ffn)::workspace ws;
  auto loss = [&] {
    poison(y);
    ffn.forward(vwn::host, x, y, ws);
    return dot(y, g);
  };
  loss();
  mat ref = mat::Zero(N, C);
  for (index_t r = 0; r < N; ++r)
    for (index_t f = 0; f < F; ++f) {
      double a = 0, b = 0;
      for (index_t c = 0; c < C; ++c) a += x(r, c) * ffn.params.W1(f, c), b += x(r, c) * ffn.params.W3(f, c);
      const double h = a / (1 + std::exp(-a)) * b;
      for (index_t c = 0; c < C; ++c) ref(r, c) += h * ffn.params.W2(c, f);
    }
  EXPECT_TRUE(close(y, ref, 1e-13, 1e-12));  // summation order only
  poison(dx);
  ffn.backward(vwn::host, x, g, dx, ws);
  const mat dx_analytic = dx;
  check_gradients(loss, {target("x", x, dx_analytic), target("W1", ffn.params.W1, ffn.grads.W1),
                         target("W2", ffn.params.W2, ffn.grads.W2), target("W3", ffn.params.W3, ffn.grads.W3)});
}

// ---------------------------------------------------------------------------------------------------------
// Cross-entropy
// ---------------------------------------------------------------------------------------------------------

TEST(NnCrossEntropy, Gradient) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::nn::cross_entropy<double> ce(V);
  mat logits = randn<double>(N, V, gen, 2.0), dlogits(N, V);
  const auto targets = random_targets(N, V, gen);
  decltype(ce)::workspace ws;
  auto loss = [&] { return ce.forward(vwn::host, logits, targets, ws); };
  const double L = loss();
  double ref = 0;
  for (index_t r = 0; r < N; ++r)
    ref += std::log(logits.row(r).array().exp().sum()) - logits(r, targets[std::size_t(r)]);
  EXPECT_NEAR(L, ref / double(N), 1e-13);  // direct formula (no max subtraction) is fine at this scale
  poison(dlogits);
  ce.backward(vwn::host, targets, dlogits, ws);
  for (index_t r = 0; r < N; ++r) EXPECT_NEAR(dlogits.row(r).sum(), 0.0, 1e-15);  // softmax - onehot sums to 0
  const mat d1 = dlogits;
  check_gradients(loss, {target("logits", logits, d1)});
  // scale folds a loss weight in: exactly lambda times the unit-weight gradient (up to one rounding).
  poison(dlogits);
  loss();
  ce.backward(vwn::host, targets, dlogits, ws, 0.3);
  EXPECT_TRUE(close(dlogits, 0.3 * d1, 1e-16, 1e-14));
}

TEST(NnCrossEntropy, UniformLogitsGiveLogV) {
  const vwn::nn::cross_entropy<double> ce(V);
  decltype(ce)::workspace ws;
  std::mt19937_64 gen(fresh_seed());
  const auto targets = random_targets(N, V, gen);
  const mat logits = mat::Constant(N, V, 3.7);
  EXPECT_NEAR(ce.forward(vwn::host, logits, targets, ws), std::log(double(V)), 1e-14);
}

TEST(NnCrossEntropy, StableForHugeLogits) {
  const vwn::nn::cross_entropy<double> ce(3);
  decltype(ce)::workspace ws;
  mat logits(2, 3);
  logits << 1000, 0, -1000, 5000, 5000, 0;
  const std::vector<std::int32_t> targets{1, 0};
  const double L = ce.forward(vwn::host, logits, targets, ws);
  EXPECT_NEAR(L, (1000.0 + std::log(2.0)) / 2, 1e-9);  // row 0: 1000, row 1: log 2
  mat d(2, 3);
  ce.backward(vwn::host, targets, d, ws);
  EXPECT_TRUE(d.allFinite());
}

TEST(NnCrossEntropy, BadTargets) {
  const vwn::nn::cross_entropy<double> ce(V);
  decltype(ce)::workspace ws;
  const mat logits = mat::Zero(3, V);
  expect_throw_with<std::out_of_range>([&] { ce.forward(vwn::host, logits, std::vector<std::int32_t>{0, 11, 2}, ws); },
                                       {"position 1", "is 11"});
  expect_throw_with<std::out_of_range>([&] { ce.forward(vwn::host, logits, std::vector<std::int32_t>{0, 1, -1}, ws); },
                                       {"position 2", "is -1"});
  expect_throw_with<std::invalid_argument>([&] { ce.forward(vwn::host, logits, std::vector<std::int32_t>{0, 1}, ws); },
                                           {"target count", "expected 3", "got 2"});
  const std::vector<std::int32_t> ok{0, 1, 2};
  mat d(3, V);
  expect_throw_with<std::invalid_argument>([&] { ce.backward(vwn::host, ok, d, ws); }, {"empty workspace"});
  ce.forward(vwn::host, logits, ok, ws);
  expect_throw_with<std::out_of_range>(
      [&] { ce.backward(vwn::host, std::vector<std::int32_t>{0, 1, 12}, d, ws); }, {"position 2", "is 12"});
  mat d_bad(3, V + 1);
  expect_throw_with<std::invalid_argument>([&] { ce.backward(vwn::host, ok, d_bad, ws); },
                                           {"dlogits shape", "expected 3x11", "got 3x12"});
}

// ---------------------------------------------------------------------------------------------------------
// Argument checks of the other blocks
// ---------------------------------------------------------------------------------------------------------

TEST(NnShapes, BadShapesThrow) {
  using IA = std::invalid_argument;
  vwn::nn::rmsnorm<double> norm(C);
  decltype(norm)::workspace nws;
  mat x(N, C), y(N, C), bad(N, C + 1);
  x.setOnes();
  expect_throw_with<IA>([&] { norm.forward(vwn::host, bad, y, nws); }, {"x width", "expected 8 columns", "got 9"});
  expect_throw_with<IA>([&] { norm.forward(vwn::host, x, bad, nws); }, {"y shape", "expected 10x8", "got 10x9"});
  mat empty(0, C);
  expect_throw_with<IA>([&] { norm.forward(vwn::host, empty, empty, nws); }, {"at least 1 token"});
  expect_throw_with<IA>([&] { norm.backward(vwn::host, x, y, y, nws); }, {"empty workspace"});
  expect_throw_with<IA>([&] { norm.forward(vwn::host, x, x, nws); }, {"y storage"});

  vwn::nn::linear<double> lin(C, F);
  mat yl(N, C), dyl(N, F), dxl(N - 1, C);
  expect_throw_with<IA>([&] { lin.forward(vwn::host, x, yl); }, {"y shape", "expected 10x12"});
  expect_throw_with<IA>([&] { lin.backward(vwn::host, x, dyl, dxl); }, {"dx shape", "got 9x8"});
  expect_throw_with<IA>([] { vwn::nn::linear<double>(0, 3); }, {"input width"});

  expect_throw_with<IA>([] { vwn::nn::rope<double>(5, 8); }, {"head width", "even", "got 5"});
  const vwn::nn::rope<double> rot(hd, T);
  expect_throw_with<IA>([&] { rot.forward(vwn::host, x, 3); }, {"row count", "multiple of", "got 10 rows"});
  expect_throw_with<IA>([&] { rot.forward(vwn::host, x, 10); }, {"at most 5", "T = 10"});
  mat x6(N, 6);
  expect_throw_with<IA>([&] { rot.forward(vwn::host, x6, T); }, {"multiple of the head width 4", "got 6"});

  const vwn::nn::causal_attention<double> attn(H, hd);
  decltype(attn)::workspace aws;
  expect_throw_with<IA>([&] { attn.forward(vwn::host, x, x, bad, T, y, aws); }, {"v shape", "got 10x9"});
  expect_throw_with<IA>([&] { attn.forward(vwn::host, x, x, x, 4, y, aws); }, {"multiple of", "T = 4"});
  expect_throw_with<IA>([&] { attn.forward(vwn::host, x, x, x, T, x, aws); }, {"y storage"});
  mat dq(N, C), dk(N, C), dv(N, C);
  expect_throw_with<IA>([&] { attn.backward(vwn::host, x, x, x, y, dq, dk, dv, aws); }, {"empty workspace"});
  attn.forward(vwn::host, x, x, x, T, y, aws);
  expect_throw_with<IA>([&] { attn.backward(vwn::host, x, x, x, y, dq, bad, dv, aws); }, {"dk shape"});

  vwn::nn::swiglu<double> ffn(C, F);
  decltype(ffn)::workspace sws;
  expect_throw_with<IA>([&] { ffn.forward(vwn::host, x, bad, sws); }, {"y shape"});
  ffn.forward(vwn::host, x, y, sws);
  expect_throw_with<IA>([&] { ffn.backward(vwn::host, x, mat(N - 1, C), y, sws); }, {"dy shape", "got 9x8"});
  expect_throw_with<IA>([] { vwn::nn::cross_entropy<double>(0); }, {"class count"});
}

// ---------------------------------------------------------------------------------------------------------
// float: one smoke test of every block against the double instantiation
// ---------------------------------------------------------------------------------------------------------

TEST(NnFloat, AllBlocksMatchDouble) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  using matf = vwn::matrix<float>;
  const mat x = randn<double>(N, C, gen), gy = randn<double>(N, C, gen);
  const matf xf = x.cast<float>(), gyf = gy.cast<float>();
  // Tolerance: float rounding of O(1) values through a few O(10)-term sums: ~1e-6 relative, with margin.
  const double atol = 1e-5, rtol = 1e-4;

  vwn::nn::rmsnorm<double> nd(C);
  vwn::nn::rmsnorm<float> nf(C);
  decltype(nd)::workspace ndw;
  decltype(nf)::workspace nfw;
  mat y(N, C), dx(N, C);
  matf yf(N, C), dxf(N, C);
  poison(yf);
  poison(dxf);
  nd.forward(vwn::host, x, y, ndw);
  nf.forward(vwn::host, xf, yf, nfw);
  nd.backward(vwn::host, x, gy, dx, ndw);
  nf.backward(vwn::host, xf, gyf, dxf, nfw);
  EXPECT_TRUE(close(yf, y, atol, rtol));
  EXPECT_TRUE(close(dxf, dx, atol, rtol));
  EXPECT_TRUE(close(nf.grads.w, nd.grads.w, atol, rtol));

  vwn::nn::linear<double> ld(C, F, 7);
  vwn::nn::linear<float> lf(C, F, 7);  // same seed: same weights up to rounding
  const mat gl = randn<double>(N, F, gen);
  mat yl(N, F);
  matf ylf(N, F);
  poison(ylf);
  poison(dxf);
  ld.forward(vwn::host, x, yl);
  lf.forward(vwn::host, xf, ylf);
  ld.backward(vwn::host, x, gl, dx);
  lf.backward(vwn::host, xf, gl.cast<float>(), dxf);
  EXPECT_TRUE(close(ylf, yl, atol, rtol));
  EXPECT_TRUE(close(dxf, dx, atol, rtol));
  EXPECT_TRUE(close(lf.grads.W, ld.grads.W, atol, rtol));

  const vwn::nn::rope<double> rd(hd, T);
  const vwn::nn::rope<float> rf(hd, T);
  y = x;
  yf = xf;
  rd.forward(vwn::host, y, T);
  rf.forward(vwn::host, yf, T);
  EXPECT_TRUE(close(yf, y, atol, rtol));
  rd.backward(vwn::host, y, T);
  rf.backward(vwn::host, yf, T);
  EXPECT_TRUE(close(yf, x, atol, rtol));

  const vwn::nn::causal_attention<double> ad(H, hd);
  const vwn::nn::causal_attention<float> af(H, hd);
  decltype(ad)::workspace adw;
  decltype(af)::workspace afw;
  const mat k = randn<double>(N, C, gen), v = randn<double>(N, C, gen);
  const matf kf = k.cast<float>(), vf = v.cast<float>();
  mat dq(N, C), dk(N, C), dv(N, C);
  matf dqf(N, C), dkf(N, C), dvf(N, C);
  poison(yf);
  poison(dqf);
  poison(dkf);
  poison(dvf);
  ad.forward(vwn::host, x, k, v, T, y, adw);
  af.forward(vwn::host, xf, kf, vf, T, yf, afw);
  ad.backward(vwn::host, x, k, v, gy, dq, dk, dv, adw);
  af.backward(vwn::host, xf, kf, vf, gyf, dqf, dkf, dvf, afw);
  EXPECT_TRUE(close(yf, y, atol, rtol));
  EXPECT_TRUE(close(dqf, dq, atol, rtol));
  EXPECT_TRUE(close(dkf, dk, atol, rtol));
  EXPECT_TRUE(close(dvf, dv, atol, rtol));

  vwn::nn::swiglu<double> sd(C, F, 9);
  vwn::nn::swiglu<float> sf(C, F, 9);
  decltype(sd)::workspace sdw;
  decltype(sf)::workspace sfw;
  poison(yf);
  poison(dxf);
  sd.forward(vwn::host, x, y, sdw);
  sf.forward(vwn::host, xf, yf, sfw);
  sd.backward(vwn::host, x, gy, dx, sdw);
  sf.backward(vwn::host, xf, gyf, dxf, sfw);
  EXPECT_TRUE(close(yf, y, atol, rtol));
  EXPECT_TRUE(close(dxf, dx, atol, rtol));
  EXPECT_TRUE(close(sf.grads.W1, sd.grads.W1, atol, rtol));
  EXPECT_TRUE(close(sf.grads.W2, sd.grads.W2, atol, rtol));
  EXPECT_TRUE(close(sf.grads.W3, sd.grads.W3, atol, rtol));

  const vwn::nn::cross_entropy<double> cd(V);
  const vwn::nn::cross_entropy<float> cf(V);
  decltype(cd)::workspace cdw;
  decltype(cf)::workspace cfw;
  const mat logits = randn<double>(N, V, gen, 2.0);
  const auto targets = random_targets(N, V, gen);
  mat dl(N, V);
  matf dlf(N, V);
  poison(dlf);
  const double L = cd.forward(vwn::host, logits, targets, cdw);
  const double Lf = cf.forward(vwn::host, logits.cast<float>(), targets, cfw);
  EXPECT_NEAR(Lf, L, 1e-5 * (1 + L));
  cd.backward(vwn::host, targets, dl, cdw, 0.5);
  cf.backward(vwn::host, targets, dlf, cfw, 0.5f);
  EXPECT_TRUE(close(dlf, dl, 1e-6, rtol));  // entries are O(1/N)
}

}  // namespace
