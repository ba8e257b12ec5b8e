// `--freeze-ghc` (settings::freeze_ghc): the (1,1) static transformer without MTP, its GHC parameters frozen, is the
// plain pre-norm transformer throughout training, bit for bit. The reference is written here from the blocks of
// examples/transformer/nn.hpp with no GHC at all (forward and manual backward), trained by the AdamW, clip and
// schedule of examples/transformer/optim.hpp on the trainer's batches. Also: a frozen run's checkpoint (no optimiser
// state for the GHC parameters, loaded, resumed bit for bit), and checkpoints that predate the setting.
//
// Why bit equality is expected: the static (1,1) GHC has alpha = [1 1] and beta = [1], so its width connection
// computes X = 1 * H and C = 1 * H (exact), its depth connection H_out = 1 * Z + C (exactly Z + H, addition being
// commutative), its backward dZ = 1 * dH_out and dH = 1 * dX + 1 * dC (exactly dX + dC); the (1,1) head is a copy
// (reduce_head<1,1> has no GroupNorm and no W_reduce). The frozen scalars are not registered with AdamW, so the
// clip's global norm sums the same tensors, in the same order, as the plain model's. Every other operation is the
// same nn block called on the same values.
#include <train/trainer.hpp>

#include <gtest/gtest.h>

#include <support/common.hpp>
#include <support/training.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace train = vwn::train;
namespace model = vwn::model;
namespace data = vwn::data;
namespace nn = vwn::nn;
using vwn::host;
using vwn::index_t;
using mat = vwn::matrix<float>;
using vwn_test::same_bits;
using vwn_test::state_bytes;

const fs::path data_dir = VWN_TEST_DATA_DIR;

// A fresh, empty folder under the system temp folder, removed at the end of the test.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("vwn_frozen_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Random printable bytes with spaces and newlines, so the corpus differs on every run.
std::string random_text(std::size_t bytes, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::string s(bytes, ' ');
  for (char& c : s) {
    const auto r = g() % 40;
    c = r < 26 ? char('a' + r) : r < 36 ? ' ' : r < 38 ? '.' : '\n';
  }
  return s;
}

// The run of the brief: (1,1) static, no MTP, D = 16, 2 layers, 2 heads, context 8, batch 2; a clip low enough that
// it scales the gradients (checked), so that the frozen scalars' absence from its norm matters.
train::settings frozen_settings(std::uint64_t seed, bool freeze = true) {
  train::settings s;
  s.m = 1, s.n = 1, s.dynamic = false;
  s.model.width = 16;
  s.model.layers = 2;
  s.model.heads = 2;
  s.model.context = 8;
  s.model.mtp = false;
  s.batch = 2;
  s.lr = 1e-2;
  s.warmup = 2;
  s.steps = 6;
  s.clip = 0.25;
  s.eval_every = 0;
  s.eval_batches = 1;
  s.seed = seed;
  s.freeze_ghc = freeze;
  return s;
}

bool is_ghc(const std::string& name) {
  return name.find("ghc_attn.") != std::string::npos || name.find("ghc_ffn.") != std::string::npos;
}

// Every parameter of `m` by name, as raw floats.
std::map<std::string, std::vector<float>> parameters_of(model::transformer<float>& m) {
  std::map<std::string, std::vector<float>> out;
  m.visit([&](const std::string& name, float* p, float*, index_t size, bool) { out[name].assign(p, p + size); });
  return out;
}

template <class M>
void poison(M& m) {
  m.setConstant(std::numeric_limits<float>::quiet_NaN());
}

// ---------------------------------------------------------------------------------------------------------
// The plain pre-norm transformer: embedding table lookup; per block x + Wo attn(RoPE(qkv(RMSNorm(x)))) and
// x + SwiGLU(RMSNorm(x)); final RMSNorm, W_out, cross-entropy. No GHC, no reduce head. The nn blocks are called as
// transformer<float>::block_forward / block_backward call them, with the GHC left out.
// ---------------------------------------------------------------------------------------------------------
struct plain_transformer {
  struct block {
    nn::rmsnorm<float> attn_norm, ffn_norm;
    nn::linear<float> qkv, proj;
    nn::swiglu<float> ffn;
    const mat* H_in = nullptr;
    mat a, qkv_out, o, z, H_mid, a2, z2, H_out;  // (BT, D), (BT, 3D), (BT, D) x 2, (BT, D) x 4
    nn::rmsnorm<float>::workspace ws_an, ws_fn;
    nn::causal_attention<float>::workspace ws_att;
    nn::swiglu<float>::workspace ws_ff;
    explicit block(const model::config& c)
        : attn_norm(c.width), ffn_norm(c.width), qkv(c.width, 3 * c.width), proj(c.width, c.width),
          ffn(c.width, c.ffn()) {}
  };

  model::config cfg;
  mat E;   // (V, D) embedding table
  mat dE;  // its dense gradient
  std::vector<std::unique_ptr<block>> blocks;
  nn::rope<float> rope;
  nn::causal_attention<float> attn;
  nn::rmsnorm<float> final_norm;
  nn::linear<float> out;
  nn::cross_entropy<float> ce;
  // Saved for the backward.
  std::vector<std::int32_t> inputs, next;
  index_t T = 0;
  mat H0, hn, logits;
  nn::rmsnorm<float>::workspace ws_fin;
  nn::cross_entropy<float>::workspace ws_ce;
  // Backward scratch.
  mat dlogits, dhn, dH, dprev, dH_mid, da2, dX2, d_o, dqkv, da, dX;

  explicit plain_transformer(const model::config& c)
      : cfg(c), rope(c.width / c.heads, c.context), attn(c.heads, c.width / c.heads), final_norm(c.width),
        out(c.width, c.vocab), ce(c.vocab) {
    E.setZero(c.vocab, c.width);
    dE.setZero(c.vocab, c.width);
    for (index_t l = 0; l < c.layers; ++l) blocks.push_back(std::make_unique<block>(c));
  }

  // f(name, param, grad, size, decay) with the names of transformer::visit.
  template <class F>
  void visit(F&& f) {
    f("embed.E", E.data(), dE.data(), index_t(E.size()), false);
    auto module = [&](const std::string& prefix, auto& m) {
      std::vector<float*> grads;
      m.grads.visit([&](std::string_view, float* g, index_t, bool) { grads.push_back(g); });
      std::size_t i = 0;
      m.params.visit([&](std::string_view name, float* p, index_t size, bool decay) {
        f(prefix + std::string(name), p, grads[i++], size, decay);
      });
    };
    for (std::size_t l = 0; l < blocks.size(); ++l) {
      const std::string p = "blocks." + std::to_string(l) + ".";
      module(p + "attn_norm.", blocks[l]->attn_norm);
      module(p + "qkv.", blocks[l]->qkv);
      module(p + "proj.", blocks[l]->proj);
      module(p + "ffn_norm.", blocks[l]->ffn_norm);
      module(p + "ffn.", blocks[l]->ffn);
    }
    module("final_norm.", final_norm);
    module("unembed.", out);
  }

  void zero_grad() {
    visit([](const std::string&, float*, float* g, index_t size, bool) { std::fill(g, g + size, 0.0f); });
  }

  const mat& block_forward(block& b, const mat& H) {
    const index_t BT = H.rows(), D = cfg.width;
    b.H_in = &H;
    for (mat* x : {&b.a, &b.o, &b.z, &b.H_mid, &b.a2, &b.z2, &b.H_out}) x->resize(BT, D), poison(*x);
    b.qkv_out.resize(BT, 3 * D), poison(b.qkv_out);
    b.attn_norm.forward(host, H, b.a, b.ws_an);
    b.qkv.forward(host, b.a, b.qkv_out);
    rope.forward(host, b.qkv_out.leftCols(2 * D), T);
    attn.forward(host, b.qkv_out.leftCols(D), b.qkv_out.middleCols(D, D), b.qkv_out.rightCols(D), T, b.o, b.ws_att);
    b.proj.forward(host, b.o, b.z);
    b.H_mid = H + b.z;  // the residual
    b.ffn_norm.forward(host, b.H_mid, b.a2, b.ws_fn);
    b.ffn.forward(host, b.a2, b.z2, b.ws_ff);
    b.H_out = b.H_mid + b.z2;
    return b.H_out;
  }

  // dH_in (overwritten) from dH_out.
  void block_backward(block& b, const mat& dH_out, mat& dH_in) {
    const index_t BT = dH_out.rows(), D = cfg.width;
    for (mat* x : {&da2, &dX2, &dH_mid, &d_o, &da, &dX, &dH_in}) x->resize(BT, D), poison(*x);
    dqkv.resize(BT, 3 * D), poison(dqkv);
    b.ffn.backward(host, b.a2, dH_out, da2, b.ws_ff);
    b.ffn_norm.backward(host, b.H_mid, da2, dX2, b.ws_fn);
    dH_mid = dH_out + dX2;  // the residual's gradient
    b.proj.backward(host, b.o, dH_mid, d_o);
    attn.backward(host, b.qkv_out.leftCols(D), b.qkv_out.middleCols(D, D), b.qkv_out.rightCols(D), d_o,
                  dqkv.leftCols(D), dqkv.middleCols(D, D), dqkv.rightCols(D), b.ws_att);
    rope.backward(host, dqkv.leftCols(2 * D), T);
    b.qkv.backward(host, b.a, dqkv, da);
    b.attn_norm.backward(host, *b.H_in, da, dX, b.ws_an);
    dH_in = dH_mid + dX;
  }

  double forward(const data::batch& batch) {
    const vwn::detail::eigen_serial serial;  // as the model's forward
    inputs = batch.inputs, next = batch.targets1, T = cfg.context;
    const index_t BT = index_t(inputs.size()), D = cfg.width;
    H0.resize(BT, D);
    poison(H0);
    for (index_t t = 0; t < BT; ++t) H0.row(t) = E.row(inputs[std::size_t(t)]);
    const mat* H = &H0;
    for (auto& b : blocks) H = &block_forward(*b, *H);
    hn.resize(BT, D), logits.resize(BT, cfg.vocab);
    poison(hn), poison(logits);
    final_norm.forward(host, *H, hn, ws_fin);
    out.forward(host, hn, logits);
    return ce.forward(host, logits, next, ws_ce);
  }

  void backward() {
    const vwn::detail::eigen_serial serial;
    const index_t BT = index_t(inputs.size()), D = cfg.width;
    dlogits.resize(BT, cfg.vocab), dhn.resize(BT, D), dH.resize(BT, D);
    poison(dlogits), poison(dhn), poison(dH);
    ce.backward(host, next, dlogits, ws_ce);
    out.backward(host, hn, dlogits, dhn);
    final_norm.backward(host, blocks.back()->H_out, dhn, dH, ws_fin);
    for (std::size_t l = blocks.size(); l-- > 0;) {
      block_backward(*blocks[l], dH, dprev);
      dH.swap(dprev);
    }
    for (index_t t = 0; t < BT; ++t) dE.row(inputs[std::size_t(t)]) += dH.row(t);
  }
};

// The plain model with the parameters of `m` (by name; every non-GHC parameter of `m` must have one here and the
// other way round), and an AdamW over its tensors registered in the order of `m`'s visit.
struct plain_run {
  plain_transformer net;
  vwn::optim::adamw<float> opt;
  vwn::optim::lr_schedule schedule;
  data::batch_sampler sampler;
  data::batch batch;

  plain_run(const train::settings& s, model::transformer<float>& m, const data::text_corpus& corpus)
      : net(s.model_config()),
        opt([&] {
          vwn::optim::adamw_config a;
          a.beta1 = s.beta1, a.beta2 = s.beta2, a.eps = s.adam_eps, a.weight_decay = s.weight_decay;
          return a;
        }()),
        schedule(s.lr, s.warmup, s.steps, s.schedule, s.min_lr_ratio),
        sampler(corpus.train(), s.batch, s.model.context, s.seed) {
    struct tensor {
      float *p, *g;
      index_t size;
      bool decay;
    };
    std::map<std::string, tensor> mine;
    net.visit([&](const std::string& name, float* p, float* g, index_t size, bool decay) {
      mine[name] = {p, g, size, decay};
    });
    std::size_t used = 0;
    m.visit([&](const std::string& name, float* p, float*, index_t size, bool decay) {
      if (is_ghc(name)) return;
      const auto it = mine.find(name);
      ASSERT_NE(it, mine.end()) << "the plain model has no parameter " << name;
      ASSERT_EQ(it->second.size, size) << name;
      ASSERT_EQ(it->second.decay, decay) << name;
      std::copy(p, p + size, it->second.p);
      opt.add(name, it->second.p, it->second.g, size, decay);
      ++used;
    });
    EXPECT_EQ(used, mine.size()) << "the plain model has parameters the transformer lacks";
  }

  // One step as trainer::train_step takes it; returns the loss and the norm before clipping.
  std::pair<double, double> step(double clip) {
    const double lr = schedule.at(index_t(opt.step_count()) + 1);
    sampler.next(batch);
    net.zero_grad();
    const double loss = net.forward(batch);
    net.backward();
    const double norm = opt.clip_grad_norm(clip);
    opt.step(lr);
    return {loss, norm};
  }
};

// The first difference between the trainer's model and the plain one (every non-GHC parameter, bit for bit), or
// empty.
std::string first_difference(model::transformer<float>& m, plain_run& plain) {
  std::map<std::string, std::pair<const float*, index_t>> mine;
  plain.net.visit([&](const std::string& name, float* p, float*, index_t size, bool) { mine[name] = {p, size}; });
  std::string diff;
  m.visit([&](const std::string& name, float* p, float*, index_t size, bool) {
    if (!diff.empty() || is_ghc(name)) return;
    const auto& [q, n] = mine.at(name);
    if (n != size || std::memcmp(p, q, std::size_t(size) * sizeof(float)) != 0) {
      index_t i = 0;
      while (i < size && std::memcmp(p + i, q + i, sizeof(float)) == 0) ++i;
      diff = name + "[" + std::to_string(i) + "]: " + std::to_string(p[i]) + " (trainer) vs " + std::to_string(q[i]) +
             " (plain)";
    }
  });
  return diff;
}

// Runs the trainer of `s` and the plain model side by side for s.steps steps; returns the first step after which a
// loss, a gradient norm or a parameter differs (0: none), with what differed in `what`.
index_t first_diverging_step(const train::settings& s, const data::text_corpus& corpus, std::string& what,
                             bool& clipped) {
  train::trainer t(s, corpus);
  plain_run plain(s, t.model(), corpus);
  clipped = false;
  if (testing::Test::HasFatalFailure()) return -1;
  what = first_difference(t.model(), plain);
  if (!what.empty()) return -1;  // not even the initial parameters agree
  for (index_t k = 1; k <= s.steps; ++k) {
    const train::step_result r = t.train_step();
    const auto [loss, norm] = plain.step(s.clip);
    clipped = clipped || norm > s.clip;
    EXPECT_EQ(t.sampler_state(), plain.sampler.state());
    if (!same_bits(r.loss.next, loss) || !same_bits(r.loss.total, loss)) {
      what = "loss " + std::to_string(r.loss.next) + " (trainer) vs " + std::to_string(loss) + " (plain)";
      return k;
    }
    if (!same_bits(r.grad_norm, norm)) {
      what = "gradient norm " + std::to_string(r.grad_norm) + " (trainer) vs " + std::to_string(norm) + " (plain)";
      return k;
    }
    what = first_difference(t.model(), plain);
    if (!what.empty()) return k;
  }
  return 0;
}

TEST(FrozenGhc, StaticOneOneIsThePlainPreNormTransformerBitForBit) {
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const train::settings s = frozen_settings(seed);
  const auto corpus = data::text_corpus::from_bytes(random_text(3000, seed), s.model.context, 0.2);
  std::string what;
  bool clipped = false;
  EXPECT_EQ(first_diverging_step(s, corpus, what, clipped), 0) << what;
  EXPECT_TRUE(clipped) << "no step clipped its gradients: the clip's norm was not exercised";
}

// The negative control: with the GHC scalars trained, the first step moves them, and the run leaves the plain
// model by the second step (their gradients also enter the clip's norm, so with clipping the first already differs).
TEST(FrozenGhc, TrainedGhcScalarsLeaveThePlainTransformer) {
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const train::settings s = frozen_settings(seed, false);
  const auto corpus = data::text_corpus::from_bytes(random_text(3000, seed), s.model.context, 0.2);
  std::string what;
  bool clipped = false;
  const index_t k = first_diverging_step(s, corpus, what, clipped);
  EXPECT_GE(k, 1) << "the comparison cannot fail: " << what;
  EXPECT_LE(k, 2) << what;
}

TEST(FrozenGhc, ScalarsKeepTheirInitialValuesAndTheCheckpointResumesBitForBit) {
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  temp_dir dir;
  const fs::path ck = dir.path / "checkpoint.safetensors";
  const train::settings s = frozen_settings(seed);
  const auto corpus = data::text_corpus::from_bytes(random_text(3000, seed), s.model.context, 0.2);
  const index_t k = 3;

  train::trainer a(s, corpus);
  const auto initial = parameters_of(a.model());
  std::vector<train::step_result> ref;
  while (a.steps_done() < s.steps) {
    ref.push_back(a.train_step());
    if (a.steps_done() == k) a.save(ck);
  }
  // The GHC scalars are exactly where they started; every other parameter moved.
  const auto after = parameters_of(a.model());
  index_t ghc_tensors = 0;
  for (const auto& [name, values] : after) {
    if (is_ghc(name)) {
      ++ghc_tensors;
      EXPECT_TRUE(values == initial.at(name)) << name << " moved";
    } else {
      EXPECT_FALSE(values == initial.at(name)) << name << " did not move";
    }
  }
  EXPECT_EQ(ghc_tensors, 2 * 2 * s.model.layers);  // alpha, beta of ghc_attn and ghc_ffn per block

  // No optimiser state for them in the checkpoint; the model tensors are all there.
  const train::checkpoint c = train::read_checkpoint(ck);
  EXPECT_TRUE(c.config.freeze_ghc);
  index_t ghc_model = 0, optim = 0;
  for (const std::string& name : c.file.names()) {
    if (name.rfind("optim.", 0) == 0) {
      ++optim;
      EXPECT_FALSE(is_ghc(name)) << name;
    }
    if (name.rfind("model.", 0) == 0 && is_ghc(name)) ++ghc_model;
  }
  EXPECT_EQ(ghc_model, ghc_tensors);
  EXPECT_EQ(optim, 2 * index_t(a.optimizer().tensors().size()));
  EXPECT_EQ(a.optimizer().tensors().size(), after.size() - std::size_t(ghc_tensors));

  // load_model accepts it, with the parameters of step k.
  const auto loaded = train::load_model(c);
  for (const auto& [name, values] : parameters_of(*loaded)) {
    const auto& t = c.file.at("model." + name);
    ASSERT_EQ(t.bytes.size(), values.size() * sizeof(float)) << name;
    EXPECT_EQ(std::memcmp(t.bytes.data(), values.data(), t.bytes.size()), 0) << name;
  }

  // Resumed, it continues as the uninterrupted run did.
  train::trainer b = train::trainer::resume(ck, s, corpus);
  EXPECT_EQ(b.steps_done(), k);
  for (index_t i = k; i < s.steps; ++i) {
    const train::step_result r = b.train_step();
    const train::step_result& want = ref[std::size_t(i)];
    EXPECT_TRUE(same_bits(r.loss.total, want.loss.total)) << "step " << r.step;
    EXPECT_TRUE(same_bits(r.grad_norm, want.grad_norm)) << "step " << r.step;
  }
  EXPECT_EQ(b.sampler_state(), a.sampler_state());
  EXPECT_TRUE(state_bytes(a) == state_bytes(b)) << "parameters or optimiser moments differ after the resumed run";
  // A frozen checkpoint is not continued as a trained one (nor the other way round).
  train::settings trained = s;
  trained.freeze_ghc = false;
  const std::string msg = vwn_test::error_of<std::invalid_argument>([&] { (void)train::trainer::resume(ck, trained, corpus); });
  EXPECT_NE(msg.find("--freeze-ghc"), std::string::npos) << msg;
}

// A checkpoint written before the setting existed has no `config.freeze-ghc`: it reads as a run that trained its GHC.
TEST(FrozenGhc, CheckpointWithoutTheKeyReadsAsTrained) {
  // One of the first version, written before the key existed.
  const fs::path old_file = data_dir / "checkpoint_v1_step2.safetensors";
  ASSERT_EQ(vwn::safetensors::file::read(old_file).metadata.count("config.freeze-ghc"), 0u);
  EXPECT_FALSE(train::read_checkpoint(old_file).config.freeze_ghc);

  // One written now, with the key removed and the checksum fixed: read, loaded and resumed as a trained run.
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  temp_dir dir;
  const fs::path ck = dir.path / "checkpoint.safetensors";
  const train::settings s = frozen_settings(seed, false);
  const auto corpus = data::text_corpus::from_bytes(random_text(3000, seed), s.model.context, 0.2);
  train::trainer t(s, corpus);
  (void)t.train_step();
  t.save(ck);
  vwn::safetensors::file f = vwn::safetensors::file::read(ck);
  ASSERT_EQ(f.metadata.at("config.freeze-ghc"), "false");
  f.metadata.erase("config.freeze-ghc");
  f.metadata["checksum"] = train::detail::checkpoint_checksum(f);
  f.write(ck);
  const train::checkpoint c = train::read_checkpoint(ck);
  EXPECT_FALSE(c.config.freeze_ghc);
  EXPECT_NO_THROW((void)train::load_model(c));
  EXPECT_NO_THROW((void)train::trainer::resume(ck, s, corpus));

  // The key is what decides: the same file claiming a frozen run lacks nothing but has optimiser state too many.
  f.metadata["config.freeze-ghc"] = "true";
  f.metadata["checksum"] = train::detail::checkpoint_checksum(f);
  f.write(ck);
  const std::string msg = vwn_test::error_of<std::runtime_error>([&] { (void)train::load_model(train::read_checkpoint(ck)); });
  EXPECT_NE(msg.find("unexpected tensor 'optim.blocks.0.ghc_attn."), std::string::npos) << msg;
}

}  // namespace
