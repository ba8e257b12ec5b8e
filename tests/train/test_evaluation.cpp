// The evaluation over a whole validation split (examples/train/trainer.hpp: whole_split_batches, mean_losses), as
// vwn-eval runs it: windows that do not overlap and cover the split, and the mean of the losses over them.
#include <train/trainer.hpp>

#include <gtest/gtest.h>

#include <support/common.hpp>
#include <support/training.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace {

namespace train = vwn::train;
namespace model = vwn::model;
namespace data = vwn::data;
using vwn::index_t;

using vwn_test::same_bits;

// Random bytes: every window of a few bytes occurs once, so a window's bytes give its offset.
std::vector<std::uint8_t> random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<std::uint8_t> out(n);
  for (auto& b : out) b = std::uint8_t(g());
  return out;
}

// Whether `w`, row `row` of a batch of windows of `T`, holds the window of `s` at offset `o`.
bool window_at(std::span<const std::uint8_t> s, const data::batch& w, index_t row, index_t T, std::size_t o) {
  for (index_t t = 0; t < T; ++t) {
    const std::size_t i = std::size_t(row * T + t), p = o + std::size_t(t);
    if (w.inputs[i] != s[p] || w.targets1[i] != s[p + 1] || w.targets2[i] != s[p + 2]) return false;
  }
  return true;
}

TEST(TrainerWholeSplit, WindowsDoNotOverlapCoverTheSplitAndReachBothEnds) {
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  // (split bytes, B, T): a typical split, one whose (length - 2) / T is a multiple of B, one with room for a single
  // window exactly, one whose only window leaves most of it, one of random sizes.
  std::vector<std::tuple<std::size_t, index_t, index_t>> cases = {
      {1000, 4, 8}, {82, 2, 8}, {10, 1, 8}, {17, 1, 8},
      {std::size_t(200 + g() % 2000), index_t(1 + g() % 5), index_t(2 + g() % 14)}};
  for (const auto& [L, B, T] : cases) {
    SCOPED_TRACE("split of " + std::to_string(L) + " bytes, B = " + std::to_string(B) + ", T = " + std::to_string(T));
    const std::vector<std::uint8_t> bytes = random_bytes(L, g());
    const std::span<const std::uint8_t> s(bytes);
    const std::vector<data::batch> batches = train::whole_split_batches(s, B, T);
    ASSERT_FALSE(batches.empty());
    // Each window found at or after the end of the previous one's inputs: none overlaps another.
    std::vector<std::size_t> offsets;
    std::size_t from = 0;
    for (const data::batch& b : batches) {
      ASSERT_EQ(b.inputs.size(), std::size_t(B * T));
      for (index_t row = 0; row < B; ++row) {
        std::size_t o = from;
        while (o + std::size_t(T) + 2 <= L && !window_at(s, b, row, T, o)) ++o;
        ASSERT_LE(o + std::size_t(T) + 2, L) << "window " << offsets.size() << " overlaps the one before it or is not in "
                                                  "the split";
        offsets.push_back(o);
        from = o + std::size_t(T);
      }
    }
    const std::size_t K = offsets.size();
    EXPECT_EQ(K, std::size_t(data::max_evaluation_batches(L, B, T) * B));
    EXPECT_EQ(offsets.front(), 0u);
    if (K > 1) {
      EXPECT_EQ(offsets.back() + std::size_t(T) + 2, L) << "the last window does not end the split";
    }
    // Every next-token target is scored once (the windows do not overlap); those left out are fewer than (B+1)T+2.
    EXPECT_LT(L - K * std::size_t(T), std::size_t((B + 1) * T + 2));
  }
}

TEST(TrainerWholeSplit, TooShortASplitIsRefusedNamingItsSize) {
  const std::vector<std::uint8_t> bytes = random_bytes(19, 1);
  const std::span<const std::uint8_t> s(bytes);
  std::string msg = vwn_test::error_of<std::invalid_argument>([&] { (void)train::whole_split_batches(s.first(9), 1, 8); });
  EXPECT_NE(msg.find("the validation split of 9 bytes: expected room for at least one batch of 1 windows of 8 + 2 bytes, "
                     "got none"), std::string::npos) << msg;
  // Room for two windows, not for a batch of three.
  msg = vwn_test::error_of<std::invalid_argument>([&] { (void)train::whole_split_batches(s, 3, 8); });
  EXPECT_NE(msg.find("split of 19 bytes: expected room for at least one batch of 3 windows of 8 + 2 bytes"),
            std::string::npos) << msg;
  EXPECT_NO_THROW((void)train::whole_split_batches(s, 2, 8));
}

TEST(TrainerWholeSplit, MeanLossesIsTheMeanOverTheWindows) {
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  model::config c;
  c.width = 16, c.layers = 1, c.heads = 2, c.context = 8, c.mtp = true, c.seed = seed;
  auto m = model::make_transformer({2, 3, true}, c);
  const index_t B = 3, T = c.context;
  const std::vector<std::uint8_t> split = random_bytes(301, seed);
  const std::vector<data::batch> batches = train::whole_split_batches(split, B, T);
  ASSERT_GE(batches.size(), 2u);
  const train::evaluation e = train::mean_losses(*m, batches, T, "here");

  // The same batches, by hand: the mean of the batch means (every batch holds B windows).
  double next = 0, next2 = 0;
  for (const data::batch& b : batches) {
    const model::losses l = m->forward(vwn::host, b.inputs, b.targets1, b.targets2, T);
    next += l.next, next2 += l.next2;
  }
  next /= double(batches.size()), next2 /= double(batches.size());
  EXPECT_TRUE(same_bits(e.next, next)) << e.next << " vs " << next;
  EXPECT_TRUE(same_bits(e.next2, next2)) << e.next2 << " vs " << next2;
  EXPECT_GT(e.next2, 0.0);

  // One window at a time: the mean over every scored token. Tolerance 1e-5 relative: the same per-token losses up to
  // the float rounding of products over 1 row instead of B (another summation order), summed in another order.
  double one_next = 0, one_next2 = 0;
  std::size_t windows = 0;
  for (const data::batch& b : batches)
    for (index_t row = 0; row < B; ++row, ++windows) {
      const auto part = [&](const std::vector<std::int32_t>& v) {
        return std::span<const std::int32_t>(v).subspan(std::size_t(row * T), std::size_t(T));
      };
      const model::losses l = m->forward(vwn::host, part(b.inputs), part(b.targets1), part(b.targets2), T);
      one_next += l.next, one_next2 += l.next2;
    }
  EXPECT_NEAR(e.next, one_next / double(windows), 1e-5 * e.next);
  EXPECT_NEAR(e.next2, one_next2 / double(windows), 1e-5 * e.next2);
}

// trainer::evaluate is mean_losses over the run's fixed evaluation batches.
TEST(TrainerWholeSplit, TheTrainersEvaluationIsMeanLossesOverItsBatches) {
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  train::settings s;
  s.m = 2, s.n = 3, s.dynamic = false;
  s.model.width = 16, s.model.layers = 1, s.model.heads = 2, s.model.context = 8, s.model.mtp = false;
  s.batch = 2, s.warmup = 1, s.steps = 3, s.eval_batches = 3, s.seed = seed;
  const std::vector<std::uint8_t> bytes = random_bytes(2000, seed);
  const auto corpus = data::text_corpus::from_bytes(std::string(bytes.begin(), bytes.end()), s.model.context, 0.2);
  train::trainer t(s, corpus);
  (void)t.train_step();
  const train::evaluation got = t.evaluate();
  const auto batches = data::evaluation_batches(corpus.validation(), s.batch, s.model.context, s.eval_batches);
  const train::evaluation want = train::mean_losses(t.model(), batches, s.model.context, "here");
  EXPECT_TRUE(same_bits(got.next, want.next)) << got.next << " vs " << want.next;
  EXPECT_EQ(got.next2, 0.0);
}

}  // namespace
