// The reference transformer on the host: the whole model's gradient against central finite differences in
// double on a tiny configuration (static and dynamic GHC, MTP on and off, direct and low-rank embedding),
// and (1,1) without MTP equal to a plain pre-norm transformer written here from the nn blocks alone.

#include <map>

#include <transformer/model.hpp>

#include <support/common.hpp>

namespace {

using namespace vwn_test;
using vwn::index_t;

struct tiny {
  index_t B = 2, T = 5;
  std::vector<std::int32_t> in, next, next2;
  explicit tiny(std::mt19937_64& gen, index_t vocab) {
    std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(vocab - 1));
    std::vector<std::int32_t> seq(std::size_t(B * (T + 2)));
    for (auto& x : seq) x = u(gen);
    for (index_t b = 0; b < B; ++b)
      for (index_t t = 0; t < T; ++t) {
        const auto base = std::size_t(b * (T + 2) + t);
        in.push_back(seq[base]);
        next.push_back(seq[base + 1]);
        next2.push_back(seq[base + 2]);
      }
  }
};

vwn::model::config tiny_config(vwn::model::shape_choice shape, bool mtp, bool lowrank) {
  vwn::model::config c;
  c.shape = shape;
  c.vocab = 7;  // small vocabulary: every embedding row is used, so every gradient is exercised
  c.width = 8;
  c.layers = 2;
  c.heads = 2;
  c.ffn_width = 12;
  c.context = 5;
  c.mtp = mtp;
  c.lowrank_embedding = lowrank;
  return c;
}

// Moves every parameter off its initial value (random, unit-ish scale) so all paths carry gradient.
template <class Model>
void randomise(Model& model, std::mt19937_64& gen) {
  std::normal_distribution<double> nd(0.0, 1.0);
  model.visit([&](const std::string& name, double* p, double*, index_t size, bool) {
    const bool is_static = name.ends_with("alpha") || name.ends_with("beta") || name.ends_with(".w") ||
                           name.ends_with(".g") || name.ends_with("gn_weight") || name.ends_with("S_alpha") ||
                           name.ends_with("S_beta");
    for (index_t i = 0; i < size; ++i) p[i] = is_static ? p[i] + 0.3 * nd(gen) : 0.5 * nd(gen);
  });
}

void model_gradient_check(vwn::model::shape_choice shape, bool mtp, bool lowrank) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  vwn::model::transformer<double> model(tiny_config(shape, mtp, lowrank));
  randomise(model, gen);
  tiny batch(gen, 7);
  model.zero_grad();
  model.forward(vwn::host, batch.in, batch.next, batch.next2, batch.T);
  model.backward(vwn::host);
  std::vector<std::vector<double>> analytic;
  std::vector<fd_target> targets;
  model.visit([&](const std::string& name, double* p, double* g, index_t size, bool) {
    analytic.emplace_back(g, g + size);
    targets.push_back({name, p, nullptr, size});
  });
  for (std::size_t i = 0; i < targets.size(); ++i) targets[i].analytic = analytic[i].data();
  check_gradients([&] { return model.forward(vwn::host, batch.in, batch.next, batch.next2, batch.T).total; },
                  targets, 1e-5, 1e-6, 1e-5);
}

TEST(ModelGradient, DynamicWithMtp) { model_gradient_check({2, 4, true}, true, false); }
TEST(ModelGradient, DynamicLowRankWithMtp) { model_gradient_check({2, 3, true}, true, true); }
TEST(ModelGradient, StaticWithoutMtp) { model_gradient_check({1, 2, false}, false, false); }

}  // namespace

namespace {

// A plain pre-norm transformer written directly from the nn blocks, with the weights of a (1,1) model:
// x = E[tok]; per block x += proj(attn(rope(qkv(norm(x))))); x += swiglu(norm(x)); logits = out(norm(x)).
double plain_transformer_loss(vwn::model::transformer<double>& model, const tiny& batch) {
  using vwn::matrix;
  std::map<std::string, std::pair<double*, index_t>> p;
  model.visit([&](const std::string& name, double* v, double*, index_t size, bool) { p[name] = {v, size}; });
  const auto& c = model.settings();
  const index_t D = c.width, BT = batch.B * batch.T, hd = D / c.heads;
  auto load = [&](const std::string& name, index_t rows, index_t cols) {
    EXPECT_EQ(p.at(name).second, rows * cols) << name;
    return matrix<double>(Eigen::Map<matrix<double>>(p.at(name).first, rows, cols));
  };
  const matrix<double> E = load("embed.E", c.vocab, D);
  matrix<double> x(BT, D);
  for (index_t t = 0; t < BT; ++t) x.row(t) = E.row(batch.in[std::size_t(t)]);
  vwn::nn::rope<double> rope(hd, c.context);
  vwn::nn::causal_attention<double> attn(c.heads, hd);
  auto rms = [](const matrix<double>& v, const matrix<double>& w) {
    matrix<double> y(v.rows(), v.cols());
    for (index_t r = 0; r < v.rows(); ++r)
      y.row(r) = v.row(r) / std::sqrt(v.row(r).squaredNorm() / double(v.cols()) + vwn::norm_eps) *
                 w.row(0).asDiagonal();
    return y;
  };
  for (index_t l = 0; l < c.layers; ++l) {
    const std::string b = "blocks." + std::to_string(l) + ".";
    matrix<double> qkv = rms(x, load(b + "attn_norm.w", 1, D)) * load(b + "qkv.W", 3 * D, D).transpose();
    rope.forward(vwn::host, qkv.leftCols(D), batch.T);
    rope.forward(vwn::host, qkv.middleCols(D, D), batch.T);
    matrix<double> o(BT, D);
    vwn::nn::causal_attention<double>::workspace ws;
    attn.forward(vwn::host, qkv.leftCols(D), qkv.middleCols(D, D), qkv.rightCols(D), batch.T, o, ws);
    x += o * load(b + "proj.W", D, D).transpose();
    const matrix<double> a = rms(x, load(b + "ffn_norm.w", 1, D));
    const index_t F = c.ffn();
    const matrix<double> g = a * load(b + "ffn.W1", F, D).transpose(), v = a * load(b + "ffn.W3", F, D).transpose();
    const matrix<double> h = (g.array() / (1.0 + (-g.array()).exp()) * v.array()).matrix();
    x += h * load(b + "ffn.W2", D, F).transpose();
  }
  const matrix<double> logits = rms(x, load("final_norm.w", 1, D)) * load("unembed.W", c.vocab, D).transpose();
  double loss = 0;
  for (index_t t = 0; t < BT; ++t) {
    const double mx = logits.row(t).maxCoeff();
    loss += std::log((logits.row(t).array() - mx).exp().sum()) + mx - logits(t, batch.next[std::size_t(t)]);
  }
  return loss / double(BT);
}

TEST(ModelPlain, OneOneWithoutMtpIsAPlainTransformer) {
  std::mt19937_64 gen(fresh_seed());
  vwn::model::transformer<double> model(tiny_config({1, 1, false}, false, false));
  // Random weights everywhere except the GHC, which stays at its (1,1) initialisation: a residual stream.
  std::normal_distribution<double> nd(0.0, 0.5);
  model.visit([&](const std::string& name, double* p, double*, index_t size, bool) {
    if (name.find("ghc_") == std::string::npos)
      for (index_t i = 0; i < size; ++i) p[i] += nd(gen);
  });
  tiny batch(gen, 7);
  const double ours = model.forward(vwn::host, batch.in, batch.next, batch.next2, batch.T).total;
  const double plain = plain_transformer_loss(model, batch);
  // Same operations in the same order except the residual adds (x + z vs 1*z + 1*x): a few ulps.
  EXPECT_NEAR(ours, plain, 1e-12 * std::abs(plain));
  EXPECT_GT(plain, 0.1);
}

}  // namespace
