// Incremental decoding of the reference transformer (transformer::decode, its key/value cache): the logits of every
// position equal those of the full recompute over the same window (next_logits), for every compiled shape, static
// and dynamic, past the context (where the window restarts from its last half), in double and in float; bad input
// refused; the model's saved activations untouched.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include <transformer/model.hpp>

#include <support/common.hpp>

namespace {

using namespace vwn_test;
using vwn::index_t;

vwn::model::config decode_config(vwn::model::shape_choice shape, bool lowrank) {
  vwn::model::config c;
  c.shape = shape;
  c.vocab = 11;
  c.width = 8 * shape.m;  // a multiple of m and of the heads, with an even head width
  c.layers = 2;
  c.heads = 2;
  c.ffn_width = 12;
  c.context = 6;
  c.mtp = true;  // the MTP head must not change the next-token logits of either path
  c.lowrank_embedding = lowrank;
  return c;
}

// Every parameter moved off its initial value (unit-ish scale), so that attention, every GHC coefficient and the
// over-width slots all carry information from earlier tokens.
template <class Scalar>
void randomise(vwn::model::transformer<Scalar>& model, std::mt19937_64& gen) {
  std::normal_distribution<double> nd(0.0, 1.0);
  model.visit([&](const std::string&, Scalar* p, Scalar*, index_t size, bool) {
    for (index_t i = 0; i < size; ++i) p[i] = Scalar(double(p[i]) + 0.3 * nd(gen));
  });
}

// Feeds `tokens` one at a time; after each, the cached window must be the expected one and its logits those of
// next_logits over it, within `rel` of the largest logit. Returns the largest relative difference seen.
template <class Scalar>
double check_against_recompute(vwn::model::transformer<Scalar>& model, const std::vector<std::int32_t>& tokens,
                               double rel) {
  const index_t context = model.settings().context;
  auto cache = model.make_cache();
  std::vector<std::int32_t> window;  // what the cache must hold: the window restarts from its last half when full
  double worst = 0;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    SCOPED_TRACE("position " + std::to_string(i));
    if (index_t(window.size()) == context) window.erase(window.begin(), window.end() - context / 2);
    window.push_back(tokens[i]);
    const std::vector<Scalar> got = model.decode(cache, tokens[i]);
    EXPECT_EQ(std::vector<std::int32_t>(cache.tokens().begin(), cache.tokens().end()), window);
    const std::vector<Scalar> want = model.next_logits(window);
    EXPECT_EQ(got.size(), want.size());
    double scale = 0, diff = 0;
    for (std::size_t v = 0; v < want.size() && v < got.size(); ++v) {
      scale = std::max(scale, std::abs(double(want[v])));
      diff = std::max(diff, std::abs(double(got[v]) - double(want[v])));
    }
    EXPECT_GT(scale, 0.1);  // logits of some size: a comparison of zeros would prove nothing
    EXPECT_LE(diff, rel * scale);
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

std::string scientific(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2e", x);
  return text;
}

std::vector<std::int32_t> random_tokens(std::mt19937_64& gen, index_t vocab, std::size_t count) {
  std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(vocab - 1));
  std::vector<std::int32_t> out(count);
  for (auto& t : out) t = u(gen);
  return out;
}

// Double: the two paths do the same operations per value except the order of the sums in the products (a matrix
// product over the window against one row's product), so they agree to double rounding over two layers (seen: a few
// 1e-15 of the largest logit).
TEST(Decode, EqualsFullRecomputeAtEveryPositionDouble) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  bool lowrank = false;
  double worst = 0;
  for (const auto& shape : vwn::model::available_shapes()) {
    SCOPED_TRACE(shape.label());
    vwn::model::transformer<double> model(decode_config(shape, lowrank));
    lowrank = !lowrank;  // both embeddings, over the shapes
    randomise(model, gen);
    // Three and a half contexts: the window fills, restarts from its last half, and fills again.
    worst = std::max(worst, check_against_recompute(model, random_tokens(gen, model.settings().vocab, 21), 1e-12));
  }
  RecordProperty("worst_relative_difference", scientific(worst));
}

// Float, at the main job's initialisation scale: the same, to float rounding (1e-4 of the largest logit: a few
// hundred float ulps over two layers of sums of up to 3D terms; seen: about 2e-6).
TEST(Decode, EqualsFullRecomputeAtEveryPositionFloat) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::model::shape_choice shape = vwn::model::available_shapes().back();  // dynamic, the largest compiled m
  vwn::model::config c = decode_config(shape, false);
  c.vocab = 256;
  c.context = 16;
  c.seed = gen();
  vwn::model::transformer<float> model(c);
  randomise(model, gen);
  const double worst = check_against_recompute(model, random_tokens(gen, c.vocab, 40), 1e-4);
  RecordProperty("worst_relative_difference", scientific(worst));
}

TEST(Decode, RefusesBadInputAndLeavesTheModelAlone) {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const vwn::model::shape_choice shape = vwn::model::available_shapes().front();
  vwn::model::transformer<double> model(decode_config(shape, false));
  randomise(model, gen);
  auto cache = model.make_cache();
  EXPECT_THROW((void)model.decode(cache, -1), std::invalid_argument);
  EXPECT_THROW((void)model.decode(cache, 11), std::invalid_argument);
  EXPECT_TRUE(cache.tokens().empty());  // nothing fed by a refused call
  vwn::model::config other = decode_config(shape, false);
  other.layers = 3;
  vwn::model::transformer<double> deeper(other);
  EXPECT_THROW((void)deeper.decode(cache, 0), std::invalid_argument);  // a cache of another model
  vwn::model::shape_choice flipped = shape;
  flipped.dynamic = !flipped.dynamic;
  vwn::model::transformer<double> other_kind(decode_config(flipped, false));
  EXPECT_THROW((void)other_kind.decode(cache, 0), std::invalid_argument);  // same sizes, GHC states of another kind
  decltype(cache) blank;
  EXPECT_THROW((void)model.decode(blank, 0), std::invalid_argument);  // not made by make_cache

  // The saved activations of a forward (what backward reads) are the same after decoding.
  const std::vector<std::int32_t> in = random_tokens(gen, 11, 6), next = random_tokens(gen, 11, 6),
                                   next2 = random_tokens(gen, 11, 6);
  (void)model.forward(vwn::host, in, next, next2, 6);
  const vwn::matrix<double> before = model.logits();
  for (const std::int32_t t : random_tokens(gen, 11, 9)) (void)model.decode(cache, t);
  EXPECT_TRUE(model.logits() == before);
}

}  // namespace
