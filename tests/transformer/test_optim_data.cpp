// Tests for include/vwn/optim.hpp (AdamW, gradient clipping, learning-rate schedule) and include/vwn/data.hpp
// (byte corpus, batch sampler, evaluation batches).
#include <transformer/data.hpp>
#include <vwn/ghc.hpp>
#include <transformer/optim.hpp>

#include <gtest/gtest.h>

#include <support/common.hpp>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace optim = vwn::optim;
namespace data = vwn::data;
using vwn::index_t;

using vwn_test::error_of;

// ---------------------------------------------------------------------------------------------------------
// AdamW
// ---------------------------------------------------------------------------------------------------------

// A module-like pair of tensors with the visit interface of the library's parameter structs.
template <class S>
struct toy_params {
  std::vector<S> w = std::vector<S>(6);
  std::vector<S> norm = std::vector<S>(3);
  template <class F>
  void visit(F&& f) {
    f("w", w.data(), index_t(w.size()), true);
    f("norm", norm.data(), index_t(norm.size()), false);
  }
};

// One AdamW update in double, written out independently of the library.
void reference_adamw(std::vector<double>& p, const std::vector<double>& g, std::vector<double>& m,
                     std::vector<double>& v, int t, double lr, double wd) {
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8;
  for (std::size_t i = 0; i < p.size(); ++i) {
    m[i] = b1 * m[i] + (1 - b1) * g[i];
    v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
    const double mh = m[i] / (1 - std::pow(b1, t)), vh = v[i] / (1 - std::pow(b2, t));
    p[i] -= lr * (mh / (std::sqrt(vh) + eps) + wd * p[i]);
  }
}

TEST(TrainAdamW, StepsMatchHandComputedReference) {
  optim::adamw_config cfg;
  cfg.weight_decay = 0.3;
  optim::adamw<double> opt(cfg);
  std::vector<double> w = {0.5, -1.25, 2.0, 0.0}, b = {1.0, -0.75, 0.125};
  std::vector<double> gw(4), gb(3);
  opt.add("w", w.data(), gw.data(), 4, true);
  opt.add("b", b.data(), gb.data(), 3, false);
  EXPECT_EQ(opt.parameter_count(), 7);

  std::vector<double> rw = w, rb = b, mw(4, 0), vw(4, 0), mb(3, 0), vb(3, 0);
  const double grads_w[2][4] = {{0.1, -0.2, 0.3, 1e-3}, {-0.4, 0.05, 0.6, 2.0}};
  const double grads_b[2][3] = {{0.7, -0.01, 0.2}, {0.3, 0.02, -0.9}};
  const double lrs[2] = {1e-2, 3e-3};
  for (int s = 0; s < 2; ++s) {
    gw.assign(grads_w[s], grads_w[s] + 4);
    gb.assign(grads_b[s], grads_b[s] + 3);
    opt.step(lrs[s]);
    reference_adamw(rw, gw, mw, vw, s + 1, lrs[s], 0.3);
    reference_adamw(rb, gb, mb, vb, s + 1, lrs[s], 0.0);
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(w[i], rw[i], 1e-15) << "step " << s + 1 << " w[" << i << "]";
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(b[i], rb[i], 1e-15) << "step " << s + 1 << " b[" << i << "]";
  }
  EXPECT_EQ(opt.step_count(), 2);
  // First step from zero moments: m_hat = g, v_hat = g^2, so the update is about lr * sign(g) (+ decay).
  // Spot-check the decayed element w[2] after step 1 by hand: 2 - 0.01 * (1 + 0.3 * 2) = 1.984 (up to eps).
  std::vector<double> p1 = {2.0}, g1 = {0.3}, m1 = {0}, v1 = {0};
  reference_adamw(p1, g1, m1, v1, 1, 1e-2, 0.3);
  EXPECT_NEAR(p1[0], 1.984, 1e-9);
}

TEST(TrainAdamW, FloatTensorsFollowTheDoubleReference) {
  optim::adamw<float> opt;  // default weight decay 0.1
  std::vector<float> w = {0.5f, -1.5f}, gw = {0.25f, -0.125f};
  opt.add("w", w.data(), gw.data(), 2, true);
  std::vector<double> rw = {0.5, -1.5}, rg = {0.25, -0.125}, m(2, 0), v(2, 0);
  opt.step(1e-3);
  reference_adamw(rw, rg, m, v, 1, 1e-3, 0.1);
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(w[i], rw[i], 1e-6);
}

TEST(TrainAdamW, WeightDecayNeverTouchesNonDecayTensors) {
  optim::adamw_config cfg;
  cfg.weight_decay = 0.5;
  optim::adamw<float> opt(cfg);
  std::vector<float> decayed = {1.0f, -2.0f, 4.0f}, kept = {1.0f, -2.0f, 4.0f};
  std::vector<float> g1(3, 0.0f), g2(3, 0.0f);  // zero gradients: only weight decay can move anything
  opt.add("decayed", decayed.data(), g1.data(), 3, true);
  opt.add("kept", kept.data(), g2.data(), 3, false);
  const std::vector<float> before = kept;
  for (int s = 0; s < 5; ++s) opt.step(0.1);
  EXPECT_EQ(std::memcmp(kept.data(), before.data(), sizeof(float) * 3), 0) << "non-decay tensor changed";
  const double expected = std::pow(1 - 0.1 * 0.5, 5);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(decayed[i], before[i] * expected, 1e-6);
}

TEST(TrainAdamW, AddModulePairsParametersWithGradients) {
  toy_params<double> p, g;
  optim::adamw<double> opt;
  opt.add_module("layer0.ghc", p, g);
  ASSERT_EQ(opt.tensors().size(), 2u);
  EXPECT_EQ(opt.tensors()[0].name, "layer0.ghc.w");
  EXPECT_TRUE(opt.tensors()[0].decay);
  EXPECT_EQ(opt.tensors()[0].param, p.w.data());
  EXPECT_EQ(opt.tensors()[0].grad, g.w.data());
  EXPECT_EQ(opt.tensors()[1].name, "layer0.ghc.norm");
  EXPECT_FALSE(opt.tensors()[1].decay);

  // Same names again: rejected, nothing added.
  std::string msg = error_of<std::invalid_argument>([&] { opt.add_module("layer0.ghc", p, g); });
  EXPECT_NE(msg.find("duplicate \"layer0.ghc.w\""), std::string::npos) << msg;
  EXPECT_EQ(opt.tensors().size(), 2u);

  // Gradient sizes that do not match.
  toy_params<double> bad;
  bad.norm.resize(4);
  msg = error_of<std::invalid_argument>([&] { opt.add_module("layer1", p, bad); });
  EXPECT_NE(msg.find("gradient \"norm\" size: expected 3, got 4"), std::string::npos) << msg;
  EXPECT_EQ(opt.tensors().size(), 2u);
}

TEST(TrainAdamW, RegistersALibraryModule) {
  vwn::dghc<2, 3, float> layer(8);  // db = 4
  optim::adamw<float> opt;
  opt.add_module("block0.attn_ghc", layer.params, layer.grads);
  std::vector<std::string> decayed, plain;
  for (const auto& t : opt.tensors()) (t.decay ? decayed : plain).push_back(t.name);
  EXPECT_EQ(decayed, (std::vector<std::string>{"block0.attn_ghc.W_alpha", "block0.attn_ghc.W_beta",
                                               "block0.attn_ghc.S_alpha", "block0.attn_ghc.S_beta"}));
  EXPECT_EQ(plain, (std::vector<std::string>{"block0.attn_ghc.alpha", "block0.attn_ghc.beta", "block0.attn_ghc.g"}));
  EXPECT_EQ(opt.parameter_count(), 3 * 5 + 3 * 2 + 4 * 5 + 4 * 2 + 3 * 5 + 3 * 2 + 4);
  EXPECT_EQ(opt.tensors()[2].grad, layer.grads.W_alpha.data());
}

TEST(TrainAdamW, RestoredStateContinuesBitIdentically) {
  std::mt19937_64 gen(7);
  std::normal_distribution<double> nd;
  auto grads_for = [&](int step, std::vector<float>& ga, std::vector<float>& gb) {
    std::mt19937_64 g2(1000 + step);
    for (auto& x : ga) x = float(nd(g2));
    for (auto& x : gb) x = float(nd(g2));
  };
  std::vector<float> a(17), b(5), ga(17), gb(5);
  for (auto& x : a) x = float(nd(gen));
  for (auto& x : b) x = float(nd(gen));
  optim::adamw<float> opt;
  opt.add("a", a.data(), ga.data(), 17, true);
  opt.add("b", b.data(), gb.data(), 5, false);
  const optim::lr_schedule lr(1e-2, 2, 8);
  for (int s = 0; s < 3; ++s) {
    grads_for(s, ga, gb);
    opt.step(lr.at(opt.step_count() + 1));
  }
  // "Checkpoint": parameters, moments, step count.
  std::vector<float> ca = a, cb = b;
  std::vector<std::pair<std::string, std::vector<float>>> saved;
  std::as_const(opt).for_each_state([&](const std::string& name, const float* d, index_t n) {
    saved.emplace_back(name, std::vector<float>(d, d + n));
  });
  const std::int64_t saved_step = opt.step_count();
  ASSERT_EQ(saved.size(), 4u);
  EXPECT_EQ(saved[0].first, "a.m");
  EXPECT_EQ(saved[1].first, "a.v");
  EXPECT_EQ(saved[3].first, "b.v");

  for (int s = 3; s < 6; ++s) {
    grads_for(s, ga, gb);
    opt.step(lr.at(opt.step_count() + 1));
  }

  std::vector<float> ra = ca, rb = cb, rga(17), rgb(5);
  optim::adamw<float> resumed;
  resumed.add("a", ra.data(), rga.data(), 17, true);
  resumed.add("b", rb.data(), rgb.data(), 5, false);
  std::size_t k = 0;
  resumed.for_each_state([&](const std::string& name, float* d, index_t n) {
    ASSERT_EQ(name, saved[k].first);
    ASSERT_EQ(std::size_t(n), saved[k].second.size());
    std::copy(saved[k].second.begin(), saved[k].second.end(), d);
    ++k;
  });
  resumed.set_step_count(saved_step);
  for (int s = 3; s < 6; ++s) {
    grads_for(s, rga, rgb);
    resumed.step(lr.at(resumed.step_count() + 1));
  }
  EXPECT_EQ(std::memcmp(ra.data(), a.data(), sizeof(float) * a.size()), 0);
  EXPECT_EQ(std::memcmp(rb.data(), b.data(), sizeof(float) * b.size()), 0);
  EXPECT_EQ(resumed.step_count(), opt.step_count());
}

TEST(TrainAdamW, RejectsBadArguments) {
  optim::adamw_config cfg;
  cfg.beta2 = 1.0;
  std::string msg = error_of<std::invalid_argument>([&] { optim::adamw<float> bad(cfg); });
  EXPECT_NE(msg.find("beta2: expected a value in [0, 1)"), std::string::npos) << msg;
  optim::adamw<float> opt;
  std::vector<float> p(2), g(2);
  opt.add("p", p.data(), g.data(), 2, true);
  msg = error_of<std::invalid_argument>([&] { opt.add("q", p.data(), nullptr, 2, true); });
  EXPECT_NE(msg.find("null gradient pointer"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([&] { opt.step(std::nan("")); });
  EXPECT_NE(msg.find("learning rate: expected a finite value >= 0"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------------------
// Gradient clipping
// ---------------------------------------------------------------------------------------------------------

TEST(TrainClip, NormIsTheGlobalL2Norm) {
  optim::adamw<float> opt;
  std::vector<float> p1(2), p2(3), g1 = {3.0f, 0.0f}, g2 = {0.0f, 4.0f, 12.0f};
  opt.add("x", p1.data(), g1.data(), 2, true);
  opt.add("y", p2.data(), g2.data(), 3, false);
  EXPECT_DOUBLE_EQ(opt.grad_norm(), 13.0);  // sqrt(9 + 16 + 144)
  // Below the limit: returns the norm and leaves every bit unchanged.
  const std::vector<float> b1 = g1, b2 = g2;
  EXPECT_DOUBLE_EQ(optim::clip_grad_norm(opt, 13.5), 13.0);
  EXPECT_EQ(std::memcmp(g1.data(), b1.data(), sizeof(float) * 2), 0);
  EXPECT_EQ(std::memcmp(g2.data(), b2.data(), sizeof(float) * 3), 0);
  // Exactly at the limit: not scaled either.
  EXPECT_DOUBLE_EQ(opt.clip_grad_norm(13.0), 13.0);
  EXPECT_EQ(std::memcmp(g2.data(), b2.data(), sizeof(float) * 3), 0);
  // Above: scaled to the limit, direction kept, the returned norm is the one before clipping.
  EXPECT_DOUBLE_EQ(opt.clip_grad_norm(1.0), 13.0);
  EXPECT_NEAR(opt.grad_norm(), 1.0, 1e-6);
  EXPECT_NEAR(g1[0], 3.0 / 13, 1e-7);
  EXPECT_NEAR(g2[2], 12.0 / 13, 1e-7);
  EXPECT_EQ(g1[1], 0.0f);
}

TEST(TrainClip, NonFiniteGradientThrows) {
  optim::adamw<double> opt;
  std::vector<double> p(3), g = {1.0, std::numeric_limits<double>::quiet_NaN(), 2.0}, q(1), gq = {1.0};
  opt.add("ok", q.data(), gq.data(), 1, false);
  opt.add("bad", p.data(), g.data(), 3, true);
  std::string msg = error_of<std::runtime_error>([&] { opt.clip_grad_norm(1.0); });
  EXPECT_NE(msg.find("gradient norm is NaN"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"bad\""), std::string::npos) << msg;
  EXPECT_EQ(g[0], 1.0);  // untouched
  g[1] = std::numeric_limits<double>::infinity();
  msg = error_of<std::runtime_error>([&] { opt.clip_grad_norm(1.0); });
  EXPECT_NE(msg.find("gradient norm is infinite"), std::string::npos) << msg;
  // Checked even when clipping is disabled with an infinite limit.
  msg = error_of<std::runtime_error>([&] { opt.clip_grad_norm(std::numeric_limits<double>::infinity()); });
  EXPECT_NE(msg.find("infinite"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([&] { opt.clip_grad_norm(0.0); });
  EXPECT_NE(msg.find("max_norm: expected a value > 0"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------------------
// Learning-rate schedule
// ---------------------------------------------------------------------------------------------------------

TEST(TrainSchedule, WarmupThenCosine) {
  const optim::lr_schedule s(1e-3, 10, 110, optim::lr_shape::cosine, 0.1);
  EXPECT_EQ(s.at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.at(1), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(5), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);                    // end of warm-up: the peak
  EXPECT_DOUBLE_EQ(s.at(60), 0.5 * (1e-3 + 1e-4));     // half-way down the cosine
  EXPECT_DOUBLE_EQ(s.at(110), 1e-4);                   // floor at total
  EXPECT_DOUBLE_EQ(s.at(500), 1e-4);                   // and after
  for (index_t k = 10; k < 110; ++k) EXPECT_GE(s.at(k), s.at(k + 1)) << "not monotone at " << k;
}

TEST(TrainSchedule, Constant) {
  const optim::lr_schedule s(3e-4, 4, 100, optim::parse_lr_shape("constant"));
  EXPECT_EQ(s.at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.at(2), 1.5e-4);
  EXPECT_DOUBLE_EQ(s.at(4), 3e-4);
  EXPECT_DOUBLE_EQ(s.at(100), 3e-4);
  EXPECT_DOUBLE_EQ(s.at(1000), 3e-4);
  const optim::lr_schedule no_warmup(2e-3, 0, 10, optim::lr_shape::constant);
  EXPECT_DOUBLE_EQ(no_warmup.at(1), 2e-3);
}

TEST(TrainSchedule, RejectsBadArguments) {
  std::string msg = error_of<std::invalid_argument>([] { optim::lr_schedule(1e-3, 10, 5); });
  EXPECT_NE(msg.find("total: expected a step count >= warmup (10), got 5"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([] { optim::lr_schedule(1e-3, 1, 5, optim::lr_shape::cosine, 1.5); });
  EXPECT_NE(msg.find("min_lr_ratio"), std::string::npos) << msg;
  msg = error_of<std::invalid_argument>([] { optim::parse_lr_shape("linear"); });
  EXPECT_NE(msg.find("expected \"cosine\" or \"constant\", got \"linear\""), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------------------

class TrainData : public ::testing::Test {
 protected:
  fs::path dir;

  void SetUp() override {
    static std::atomic<int> counter{0};
    std::random_device rd;
    dir = fs::temp_directory_path() /
          ("vwn_train_test_" + std::to_string(rd()) + "_" + std::to_string(counter++));
    fs::create_directories(dir);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  static void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
  }
  // Deterministic pseudo-text of n bytes (all 256 byte values occur).
  static std::string text(std::size_t n, unsigned salt = 0) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = char((i * 131 + salt * 7 + (i >> 3)) & 0xff);
    return s;
  }
};

TEST_F(TrainData, LoadsFileAndSplitsOffTheLastTenth) {
  const std::string t = text(1000);
  write(dir / "corpus.txt", t);
  const auto c = data::text_corpus::load(dir / "corpus.txt", 16);
  ASSERT_EQ(c.size(), 1000);
  EXPECT_EQ(c.train().size(), 900u);
  EXPECT_EQ(c.validation().size(), 100u);
  EXPECT_EQ(std::memcmp(c.train().data(), t.data(), 900), 0);
  EXPECT_EQ(std::memcmp(c.validation().data(), t.data() + 900, 100), 0);
  EXPECT_EQ(c.tokens(data::split::validation).data(), c.validation().data());
  const auto c2 = data::text_corpus::load(dir / "corpus.txt", 16, 0.25);
  EXPECT_EQ(c2.validation().size(), 250u);
}

TEST_F(TrainData, LoadsFolderRecursivelyInSortedOrder) {
  // Sorted by the whole path: a.txt, b/e/zz.txt, b/x.txt, b/y.txt, z.txt (not by file name).
  write(dir / "z.txt", "Z");
  write(dir / "b" / "y.txt", "Y");
  write(dir / "a.txt", "A");
  write(dir / "b" / "x.txt", "X\n");  // a trailing newline is kept, then the separator follows
  write(dir / "b" / "e" / "zz.txt", "E" + std::string(40, '.'));
  const auto c = data::text_corpus::load(dir, 3, 0.5);
  const std::string expected = "A\nE" + std::string(40, '.') + "\nX\n\nY\nZ";
  ASSERT_EQ(c.size(), index_t(expected.size()));
  EXPECT_EQ(std::string(c.bytes().begin(), c.bytes().end()), expected);
  ASSERT_EQ(c.files().size(), 5u);
  EXPECT_EQ(c.files()[0].filename(), "a.txt");
  EXPECT_EQ(c.files()[1].filename(), "zz.txt");
  EXPECT_EQ(c.files()[4].filename(), "z.txt");
}

TEST_F(TrainData, ClearErrors) {
  std::string msg =
      error_of<std::runtime_error>([&] { (void)data::text_corpus::load(dir / "missing.txt", 8); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing.txt"), std::string::npos) << msg;

  write(dir / "short.txt", text(50));  // validation part: 5 bytes < 8 + 2
  msg = error_of<std::runtime_error>([&] { (void)data::text_corpus::load(dir / "short.txt", 8); });
  EXPECT_NE(msg.find("too short: validation split: expected at least 10 bytes (context 8 + 2), got 5"),
            std::string::npos)
      << msg;
  msg = error_of<std::runtime_error>([&] { (void)data::text_corpus::load(dir / "short.txt", 8, 0.9); });
  EXPECT_NE(msg.find("training split: expected at least 10 bytes"), std::string::npos) << msg;

  write(dir / "empty.txt", "");
  msg = error_of<std::runtime_error>([&] { (void)data::text_corpus::load(dir / "empty.txt", 8); });
  EXPECT_NE(msg.find("is empty"), std::string::npos) << msg;
  fs::create_directories(dir / "nothing" / "here");
  msg = error_of<std::runtime_error>([&] { (void)data::text_corpus::load(dir / "nothing", 8); });
  EXPECT_NE(msg.find("contains no regular files"), std::string::npos) << msg;

  msg = error_of<std::invalid_argument>([&] { (void)data::text_corpus::load(dir / "short.txt", 8, 1.0); });
  EXPECT_NE(msg.find("val_fraction: expected a value in (0, 1)"), std::string::npos) << msg;
}

TEST_F(TrainData, WindowsAreShiftedByOneAndTwo) {
  const auto c = data::text_corpus::from_bytes(text(5000), 32);
  const index_t B = 4, T = 32;
  data::batch_sampler s(c.train(), B, T, 42);
  std::vector<data::token> x, y1, y2;
  for (int k = 0; k < 3; ++k) {
    s.next(x, y1, y2);
    ASSERT_EQ(x.size(), std::size_t(B * T));
    ASSERT_EQ(y1.size(), std::size_t(B * T));
    ASSERT_EQ(y2.size(), std::size_t(B * T));
    for (index_t b = 0; b < B; ++b) {
      const std::size_t o = s.offset(std::uint64_t(k), b);
      ASSERT_LE(o + T + 2, c.train().size());
      for (index_t t = 0; t < T; ++t) {
        const std::size_t i = std::size_t(b * T + t);
        EXPECT_EQ(x[i], c.train()[o + t]);
        EXPECT_EQ(y1[i], c.train()[o + t + 1]);
        EXPECT_EQ(y2[i], c.train()[o + t + 2]);
        if (t + 1 < T) {
          EXPECT_EQ(y1[i], x[i + 1]);
        }
        if (t + 2 < T) {
          EXPECT_EQ(y2[i], x[i + 2]);
        }
        EXPECT_GE(x[i], 0);
        EXPECT_LT(x[i], data::vocab_size);
      }
    }
  }
}

TEST_F(TrainData, SamplerIsReproducibleAndRestartable) {
  const auto c = data::text_corpus::from_bytes(text(20000), 16);
  data::batch_sampler a(c.train(), 8, 16, 1234), same(c.train(), 8, 16, 1234), other(c.train(), 8, 16, 1235);
  data::batch a1, s1, o1;
  a.next(a1);
  same.next(s1);
  other.next(o1);
  EXPECT_EQ(a1.inputs, s1.inputs);
  EXPECT_EQ(a1.targets2, s1.targets2);
  EXPECT_NE(a1.inputs, o1.inputs);

  // Offsets are spread over the split, not stuck in one place.
  std::set<std::size_t> offsets;
  for (std::uint64_t k = 0; k < 50; ++k)
    for (index_t b = 0; b < 8; ++b) offsets.insert(a.offset(k, b));
  EXPECT_GT(offsets.size(), 350u);
  EXPECT_LT(*offsets.begin(), 1000u);
  EXPECT_GT(*offsets.rbegin(), c.train().size() - 1000);

  a.next(a1);
  const data::sampler_state saved = a.state();
  EXPECT_EQ(saved.seed, 1234u);
  EXPECT_EQ(saved.batch_index, 2u);
  data::batch expected, got;
  a.next(expected);
  a.next(a1);
  data::batch_sampler resumed(c.train(), 8, 16, 999);
  resumed.restore(saved);
  resumed.next(got);
  EXPECT_EQ(got.inputs, expected.inputs);
  EXPECT_EQ(got.targets1, expected.targets1);
  EXPECT_EQ(got.targets2, expected.targets2);
  resumed.next(got);
  EXPECT_EQ(got.inputs, a1.inputs);
  EXPECT_EQ(resumed.state(), a.state());

  const std::string msg = error_of<std::invalid_argument>([&] { data::batch_sampler(c.validation(), 2, 4000, 1); });
  EXPECT_NE(msg.find("split length: expected at least T + 2 = 4002 tokens, got 2000"), std::string::npos) << msg;
}

TEST_F(TrainData, EvaluationBatchesCoverTheSplitInOrder) {
  const auto c = data::text_corpus::from_bytes(text(3000), 8);
  const auto val = c.validation();  // 300 bytes
  const index_t B = 3, T = 8;
  const auto batches = data::evaluation_batches(val, B, T, 4);
  ASSERT_EQ(batches.size(), 4u);
  // Window k starts at floor(k * (300 - 10) / 11).
  for (index_t k = 0; k < 12; ++k) {
    const auto& bt = batches[std::size_t(k / B)];
    const std::size_t row = std::size_t(k % B), o = std::size_t(k) * 290 / 11;
    for (index_t t = 0; t < T; ++t) {
      EXPECT_EQ(bt.inputs[row * T + t], val[o + t]) << "window " << k;
      EXPECT_EQ(bt.targets1[row * T + t], val[o + t + 1]);
      EXPECT_EQ(bt.targets2[row * T + t], val[o + t + 2]);
    }
  }
  EXPECT_EQ(batches.back().targets2.back(), val.back());  // the last window ends the split
  const auto again = data::evaluation_batches(val, B, T, 4);
  EXPECT_EQ(again[2].inputs, batches[2].inputs);
  EXPECT_EQ(data::max_evaluation_batches(val.size(), B, T), (298 / 8) / 3);
  EXPECT_EQ(data::max_evaluation_batches(5, 1, 8), 0);
}

}  // namespace
