// Tests for gradient accumulation in the trainer (train::parallelism, docs/distributed.md): a batch computed in
// parts of --micro-batch sequences, their gradients summed in part order and divided by the part count, on one
// process (the MPI ranks are tested by tests/distributed/ with mpirun).
#include <train/trainer.hpp>

#include <gtest/gtest.h>

#include <support/common.hpp>
#include <support/training.hpp>

#include <csignal>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace train = vwn::train;
namespace model = vwn::model;
namespace data = vwn::data;
using vwn::index_t;
using vwn_test::error_of;
using vwn_test::gradients;
using vwn_test::same_bits;
using vwn_test::state_bytes;

// A small run: one block, D = 32, T = 16, B = 4, dynamic (2,3) with MTP, no clipping (the optimiser sees the mean
// gradient itself).
train::settings small() {
  train::settings s;
  s.m = 2, s.n = 3, s.dynamic = true;
  s.model.width = 32, s.model.layers = 1, s.model.heads = 2, s.model.context = 16, s.model.mtp = true;
  s.batch = 4, s.lr = 1e-2, s.warmup = 2, s.steps = 8, s.clip = 0;
  s.eval_every = 4, s.eval_batches = 2, s.seed = 5;
  return s;
}

const data::text_corpus& corpus() {
  static const data::text_corpus c = data::text_corpus::from_bytes(vwn_test::english_text(20000), 16);
  return c;
}

train::parallelism parts_of(index_t micro_batch) {
  train::parallelism p;
  p.micro_batch = micro_batch;
  return p;
}

std::span<const data::token> slice(const std::vector<data::token>& v, index_t part, index_t rows, index_t T) {
  return std::span<const data::token>(v).subspan(std::size_t(part * rows * T), std::size_t(rows * T));
}

TEST(MicroBatches, TheWholeBatchInOnePartIsTheStepWithoutParts) {
  train::trainer plain(small(), corpus());
  train::trainer one_part(small(), corpus(), parts_of(small().batch));
  EXPECT_EQ(one_part.parts(), 1);
  for (int k = 0; k < 3; ++k) {
    const auto a = plain.train_step(), b = one_part.train_step();
    EXPECT_TRUE(same_bits(a.loss.total, b.loss.total)) << "step " << a.step;
  }
  EXPECT_EQ(state_bytes(plain), state_bytes(one_part));
  const auto ea = plain.evaluate(), eb = one_part.evaluate();
  EXPECT_TRUE(same_bits(ea.next, eb.next) && same_bits(ea.next2, eb.next2));
}

// The trainer's gradient of a batch in 2 parts against the same computed here: each part's gradient by the model,
// g0 + g1 in float, divided by 2; the losses (l0 + l1) / 2. Bit for bit: the same operations in the same order.
TEST(MicroBatches, PartsAreSummedInOrderAndDividedByTheirCount) {
  const train::settings s = small();
  for (const index_t mu : {index_t(2), index_t(1)}) {
    SCOPED_TRACE("micro-batch " + std::to_string(mu));
    train::trainer t(s, corpus(), parts_of(mu));
    const index_t P = s.batch / mu, T = s.model.context;
    ASSERT_EQ(t.parts(), P);
    const train::step_result r = t.train_step();
    const std::vector<float> got = gradients(t);

    auto m = model::make_transformer(s.shape(), s.model_config());
    data::batch_sampler sampler(corpus().train(), s.batch, T, s.seed);
    data::batch b;
    sampler.next(b);
    std::vector<float> sum;
    double total = 0, next = 0, next2 = 0;
    for (index_t part = 0; part < P; ++part) {
      m->zero_grad();
      const model::losses l = m->forward(vwn::host, slice(b.inputs, part, mu, T), slice(b.targets1, part, mu, T),
                                         slice(b.targets2, part, mu, T), T);
      m->backward(vwn::host);
      total += l.total, next += l.next, next2 += l.next2;
      std::size_t k = 0;
      m->visit([&](const std::string&, float*, float* g, index_t size, bool) {
        for (index_t i = 0; i < size; ++i, ++k) {
          if (part == 0)
            sum.push_back(g[i]);
          else
            sum[k] += g[i];
        }
      });
    }
    ASSERT_EQ(sum.size(), got.size());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < sum.size(); ++i) differ += (sum[i] / float(P) != got[i]);
    EXPECT_EQ(differ, 0u) << "of " << sum.size();
    EXPECT_TRUE(same_bits(r.loss.total, total / double(P))) << r.loss.total << " vs " << total / double(P);
    EXPECT_TRUE(same_bits(r.loss.next, next / double(P)));
    EXPECT_TRUE(same_bits(r.loss.next2, next2 / double(P)));
  }
}

// And it is the batch's gradient: against one part of the whole batch, the parts differ only in the order of the
// sums (float, relative 1e-3 of the largest element: far above rounding, far below any real error such as a part
// counted twice, which moves elements by their own size).
TEST(MicroBatches, PartsGiveTheGradientOfTheWholeBatch) {
  train::trainer whole(small(), corpus()), parts(small(), corpus(), parts_of(1));
  whole.train_step(), parts.train_step();
  const std::vector<float> a = gradients(whole), b = gradients(parts);
  float scale = 0, worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) scale = std::max(scale, std::fabs(a[i]));
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  EXPECT_GT(scale, 0.f);
  EXPECT_LT(worst, 1e-3f * scale);
}

TEST(MicroBatches, EvaluationInPartsAddsThePiecesInOrder) {
  const train::settings s = small();
  train::trainer t(s, corpus(), parts_of(2));
  const train::evaluation e = t.evaluate();
  const auto batches = data::evaluation_batches(corpus().validation(), s.batch, s.model.context, s.eval_batches);
  double next = 0, next2 = 0;
  for (const auto& b : batches)
    for (index_t part = 0; part < 2; ++part) {
      const index_t T = s.model.context;
      const model::losses l = t.model().forward(vwn::host, slice(b.inputs, part, 2, T), slice(b.targets1, part, 2, T),
                                                slice(b.targets2, part, 2, T), T);
      next += l.next, next2 += l.next2;
    }
  EXPECT_TRUE(same_bits(e.next, next / double(2 * batches.size())));
  EXPECT_TRUE(same_bits(e.next2, next2 / double(2 * batches.size())));
}

TEST(MicroBatches, ResumeIsBitExactAndAcceptsAnotherPartCount) {
  const fs::path dir = fs::temp_directory_path() / ("vwn_micro_" + std::to_string(std::random_device()()));
  fs::create_directories(dir);
  const train::settings s = small();
  train::trainer full(s, corpus(), parts_of(2));
  for (int k = 0; k < 6; ++k) full.train_step();
  train::trainer cut(s, corpus(), parts_of(2));
  for (int k = 0; k < 3; ++k) cut.train_step();
  cut.save(dir / "c.safetensors");
  train::trainer again = train::trainer::resume(dir / "c.safetensors", s, corpus(), parts_of(2));
  for (int k = 0; k < 3; ++k) again.train_step();
  EXPECT_EQ(state_bytes(again), state_bytes(full));
  // The checkpoint holds no part count: it continues in 1 part, or 4.
  for (const index_t mu : {index_t(0), index_t(1)}) {
    train::trainer other = train::trainer::resume(dir / "c.safetensors", s, corpus(), parts_of(mu));
    EXPECT_EQ(other.steps_done(), 3);
    other.train_step();
    EXPECT_EQ(other.steps_done(), 4);
  }
  fs::remove_all(dir);
}

TEST(MicroBatches, RefusesABatchThatDoesNotSplitEvenly) {
  const std::string msg = error_of<std::invalid_argument>([] { train::trainer t(small(), corpus(), parts_of(3)); });
  EXPECT_NE(msg.find("--micro-batch 3 with --batch 4: expected a micro-batch that divides each rank's 4 sequences, "
                     "got 3"),
            std::string::npos)
      << msg;
  EXPECT_NE(error_of<std::invalid_argument>([] { train::trainer t(small(), corpus(), parts_of(8)); }).find("got 8"),
            std::string::npos);
}

TEST(MicroBatches, TheMemoryEstimateIsThatOfOnePart) {
  train::settings s = small();
  s.batch = 64;
  const train::memory_need whole = train::estimate_memory(s), part = train::estimate_memory(s, 0, 8);
  EXPECT_LT(part.activations, whole.activations / 4);
  EXPECT_NEAR(part.parameters / whole.parameters, 8.0 / 7.0, 1e-12);  // the sum of the parts' gradients
  EXPECT_EQ(train::estimate_memory(s, 0, 64).parameters, whole.parameters);  // one part: no sum
}

TEST(MicroBatches, AStopRequestIsReportedByTheStep) {
  volatile std::sig_atomic_t flag = 0;
  for (const index_t mu : {index_t(0), index_t(2)}) {
    train::parallelism p = parts_of(mu);
    p.stop = &flag;
    train::trainer t(small(), corpus(), p);
    flag = 0;
    EXPECT_FALSE(t.train_step().stop);
    flag = 1;
    EXPECT_TRUE(t.train_step().stop);
  }
}

}  // namespace
