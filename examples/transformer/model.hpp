#pragma once
/// \file model.hpp
/// The reference transformer of docs/model.md on the host back end: over-width embedding, `L` pre-norm
/// blocks (causal multi-head attention with RoPE, SwiGLU FFN), every sub-layer wrapped by a GHC or DGHC of
/// shape `(m, n)`, the GroupNorm + reduce head, a final RMSNorm, an untied unembedding, and optionally the
/// multi-token-prediction head (depth 1) with the block-level mixer. Manual backward for every part,
/// llm.c style: every activation is commented with its shape (`BT = B*T` token rows).
///
/// The shape is a run-time setting (`config::shape`): only the width parts depend on it, and they come from the
/// compiled factory of that shape (width.hpp). Everything here is compiled once per scalar type (model.cpp).

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <vwn/core/checks.hpp>
#include <vwn/detail/parallel.hpp>

#include "nn.hpp"
#include "width.hpp"

namespace vwn::model {

/// Run-time settings of the reference transformer.
struct config {
  shape_choice shape{};          ///< width shape `(m, n)` and static or dynamic GHC (one of `available_shapes()`)
  index_t vocab = 256;           ///< vocabulary (bytes)
  index_t width = 64;            ///< backbone width `D` (a multiple of `m` and of `heads`)
  index_t layers = 2;            ///< transformer blocks `L`
  index_t heads = 4;             ///< attention heads; head width `D / heads` must be even
  index_t ffn_width = 0;         ///< SwiGLU hidden width `F`; 0 picks `8/3 D` rounded up to a multiple of 8
  index_t context = 64;          ///< longest sequence `T`
  bool lowrank_embedding = false;  ///< `H0 = W_expand E_base[token]` instead of a `V x D'` table
  bool mtp = false;              ///< multi-token-prediction head (next-2-token loss)
  double mtp_lambda = 0.3;       ///< weight of the next-2-token loss
  std::uint64_t seed = 1;        ///< parameter initialisation seed

  /// `F` after applying the default.
  index_t ffn() const { return ffn_width > 0 ? ffn_width : ((8 * width / 3 + 7) / 8) * 8; }
};

/// Losses of one forward pass.
struct losses {
  double total = 0;  ///< `next + lambda * next2`
  double next = 0;   ///< next-token cross-entropy (nats)
  double next2 = 0;  ///< next-2-token cross-entropy (0 without MTP)
};

/// The reference transformer in `Scalar` precision (float or double), with the width shape of its settings.
template <class Scalar = float>
class transformer {
 public:
  using scalar = Scalar;
  using mat = matrix<Scalar>;
  /// `f(name, param, grad, size, weight_decay)`, as passed to `visit`.
  using visitor = tensor_visitor<Scalar>;

  /// One pre-norm block: attention and FFN sub-layers, each wrapped by its own GHC.
  struct block {
    std::unique_ptr<ghc_layer<Scalar>> ghc_attn, ghc_ffn;
    std::unique_ptr<typename ghc_layer<Scalar>::state> ws_ghc_attn, ws_ghc_ffn;  // their saved state
    nn::rmsnorm<Scalar> attn_norm, ffn_norm;
    nn::linear<Scalar> qkv;  ///< fused `3D x D`: rows `[Wq; Wk; Wv]`
    nn::linear<Scalar> proj; ///< `D x D` output projection `Wo`
    nn::swiglu<Scalar> ffn;
    // Saved activations of the last forward.
    const mat* H_in = nullptr;       // (BT, D') the block input (the previous block's output, or H0 / U)
    mat H_mid, H_out;                // (BT, D') input of the FFN sub-layer and the block output
    mat X, C, a, qkv_out, o, z;      // attention: (BT, D), (BT, D'), (BT, D), (BT, 3D), (BT, D), (BT, D)
    mat X2, C2, a2, z2;              // FFN: (BT, D), (BT, D'), (BT, D), (BT, D)
    typename nn::rmsnorm<Scalar>::workspace ws_an, ws_fn;
    typename nn::causal_attention<Scalar>::workspace ws_att;
    typename nn::swiglu<Scalar>::workspace ws_ff;

    block(const config& c, const width_factory<Scalar>& parts, std::uint64_t seed)
        : ghc_attn(parts.ghc(c.width)), ghc_ffn(parts.ghc(c.width)), ws_ghc_attn(ghc_attn->make_state()),
          ws_ghc_ffn(ghc_ffn->make_state()), attn_norm(c.width), ffn_norm(c.width),
          qkv(c.width, 3 * c.width, seed), proj(c.width, c.width, seed + 1), ffn(c.width, c.ffn(), seed + 2) {
      // GPT-2 style: 0.02 for the inputs, 0.02/sqrt(2L) for the projections back into the residual stream.
      rng r(seed + 3);
      r.fill_normal(qkv.params.W, 0.02);
      r.fill_normal(proj.params.W, 0.02 / std::sqrt(2.0 * double(c.layers)));
      r.fill_normal(ffn.params.W1, 0.02);
      r.fill_normal(ffn.params.W3, 0.02);
      r.fill_normal(ffn.params.W2, 0.02 / std::sqrt(2.0 * double(c.layers)));
    }

    void visit(const std::string& prefix, const visitor& f) {
      ghc_attn->visit(prefix + "ghc_attn.", f);
      visit_module(prefix + "attn_norm.", attn_norm, f);
      visit_module(prefix + "qkv.", qkv, f);
      visit_module(prefix + "proj.", proj, f);
      ghc_ffn->visit(prefix + "ghc_ffn.", f);
      visit_module(prefix + "ffn_norm.", ffn_norm, f);
      visit_module(prefix + "ffn.", ffn, f);
    }
  };

  /// Builds and initialises the model; throws std::invalid_argument for inconsistent settings.
  explicit transformer(const config& c);

  /// The settings.
  const config& settings() const { return cfg_; }
  /// The width shape and GHC kind.
  const shape_choice& shape() const { return cfg_.shape; }
  /// Name with shape, e.g. "vwn::model::transformer<2,3,dynamic>" (the name checkpoints record).
  std::string name() const { return name_of(cfg_.shape); }
  /// The name of a transformer of `shape`.
  static std::string name_of(const shape_choice& shape) {
    return "vwn::model::transformer<" + std::to_string(shape.m) + "," + std::to_string(shape.n) +
           (shape.dynamic ? ",dynamic" : ",static") +
           (shape.connection == vwn_connection::name ? std::string() : "," + shape.connection) + ">";
  }
  /// The run's shape and size in words, for banners and plot titles: "(2,3) dynamic GHC, D = 128, 4 layers, MTP".
  std::string title() const {
    return cfg_.shape.label() + " GHC, D = " + std::to_string(cfg_.width) + ", " + std::to_string(cfg_.layers) +
           (cfg_.layers == 1 ? " layer" : " layers") + (cfg_.mtp ? ", MTP" : "");
  }
  /// Block width `db = D / m`.
  index_t block_width() const { return cfg_.width / cfg_.shape.m; }
  /// Over-width `D'`.
  index_t wide_width() const { return cfg_.shape.n * block_width(); }

  /// Number of GHC sub-layers of the main stack, `2 L` (attention and FFN of each block, in order; the MTP block's
  /// two are not counted).
  index_t ghc_sublayers() const { return index_t(2 * blocks_.size()); }
  /// The coefficients `[a | b]` (`n x (2m+n)`) that GHC sub-layer `k` (`0 <= k < ghc_sublayers()`) used for row `t`
  /// (`b*T + t`) of the last forward.
  matrix<Scalar> ghc_coefficients(index_t k, index_t t) const {
    const block& b = *blocks_.at(std::size_t(k / 2));
    return k % 2 == 0 ? b.ghc_attn->token_coefficients(*b.ws_ghc_attn, t) : b.ghc_ffn->token_coefficients(*b.ws_ghc_ffn, t);
  }

  /// Main-head logits (`B*T x V`) of the last forward: row `b*T + t` predicts the token after position `t`.
  const matrix<Scalar>& logits() const { return main_.logits; }

  /// Visits every parameter with its gradient: `f(name, param, grad, size, weight_decay)`, names such as
  /// `blocks.0.ghc_attn.alpha`, in a fixed order (the checkpoint order).
  void visit(const visitor& f);

  /// Number of parameter elements.
  index_t parameter_count() {
    index_t count = 0;
    visit([&](const std::string&, Scalar*, Scalar*, index_t size, bool) { count += size; });
    return count;
  }

  /// Clears every gradient.
  void zero_grad();

  /// Forward over `B` sequences of `T` tokens: `inputs`, `next` (targets at t+1) and, with MTP, `next2`
  /// (targets at t+2), each of length `B*T`, sequence `b` at `b*T .. b*T+T-1`. Saves the activations.
  losses forward(host_t, std::span<const std::int32_t> inputs, std::span<const std::int32_t> next,
                 std::span<const std::int32_t> next2, index_t T);

  /// Next-token logits (`V` values) after the byte sequence `tokens` (at least one token, each in `[0, V)`); only
  /// the last `context` tokens are used. Uses a separate evaluation copy of the parameters (without the
  /// multi-token-prediction head, which does not affect the next-token logits), so the saved activations and
  /// gradients of this model are left untouched.
  std::vector<Scalar> next_logits(std::span<const std::int32_t> tokens);

  /// Backward of the last forward: accumulates every parameter gradient (of `total`).
  void backward(host_t);

  /// The state of incremental decoding (`decode`): per block, the keys (after RoPE) and the values of the tokens fed
  /// so far, at most `context` of them, and the rows of one step. Only attention looks back at earlier tokens: the
  /// embedding, every GHC (its over-width state included), the norms, the FFN and the head act on each token alone, so
  /// keys and values are all there is to keep. Made by `make_cache`, for the model that made it.
  class kv_cache {
   public:
    /// The tokens whose keys and values are held, oldest first: the window the next logits of `decode` see.
    std::span<const std::int32_t> tokens() const { return tokens_; }

   private:
    friend class transformer;
    shape_choice shape_{};               // the shape of the model that made it (its GHC states are of that shape)
    std::vector<mat> k_, v_;             // per block (context, D): rows 0 .. tokens_.size()-1 filled
    std::vector<std::int32_t> tokens_;
    mat H_, H_mid_, X_, C_, a_, qkv_, o_, z_, h_, hn_, logits_;  // one token's rows: (1, D'), (1, D), (1, 3D), (1, V)
    std::unique_ptr<typename ghc_layer<Scalar>::state> ws_ghc_;  // each GHC's forward_width then forward_depth
    std::unique_ptr<typename head_layer<Scalar>::state> ws_head_;
    typename nn::rmsnorm<Scalar>::workspace ws_norm_;
    typename nn::swiglu<Scalar>::workspace ws_ffn_;
  };

  /// An empty key/value cache for `decode`.
  kv_cache make_cache() const;

  /// Incremental decoding: feeds `token` (in `[0, V)`) after the tokens the cache holds, and returns the next-token
  /// logits (`V` values) after them all: those of `next_logits(cache.tokens())` (after this call), up to the order of
  /// the sums in the products, at the cost of one token through the model plus attention over the cached keys,
  /// instead of a forward over the whole window. When the cache already holds `context` tokens, it first keeps only
  /// the last `context / 2` (feeding them again from an empty cache, since RoPE positions and every later layer's keys
  /// start over with the window): on average about two tokens through the model per call. Reads the current
  /// parameters; leaves the saved activations and gradients of the model untouched.
  std::vector<Scalar> decode(kv_cache& cache, std::int32_t token) const;

 private:
  // Builds the evaluation copy of next_logits on first use and copies the current parameters into it.
  void sync_probe();

  // One decoding step: appends `token` to the cache (which holds fewer than `context` tokens), with the logits when
  // `logits` is set.
  void decode_step(kv_cache& cache, std::int32_t token, bool logits) const;

  // Per-head state of the output head (the head's parameters are shared by the main and MTP passes).
  struct head_state {
    mat h, hn, logits;  // (BT, D), (BT, D), (BT, V)
    std::unique_ptr<typename head_layer<Scalar>::state> ws_head;
    typename nn::rmsnorm<Scalar>::workspace ws_fin;
    typename nn::cross_entropy<Scalar>::workspace ws_ce;
  };

  // Gradient buffers of backward, kept between steps so that a step allocates nothing once sizes settle.
  struct backward_scratch {
    mat dH, dprev, dU2, dU, dA, dB, dE1, dHm;     // (BT, D')
    mat dz2, da2, dX2, dH_mid;                    // block FFN part: (BT, D) x 3, (BT, D')
    mat dz, d_o, dqkv, da, dX;                    // block attention part: (BT, D), dqkv (BT, 3D)
    mat dlogits, dhn, dh;                         // output head: (BT, V), (BT, D), (BT, D)
  };

  static const config& check(const config& c) {
    const std::string where = name_of(c.shape);
    if (c.shape.m < 1 || c.width <= 0 || c.width % c.shape.m != 0)
      detail::fail(where, "backbone width D", "a positive multiple of m = " + std::to_string(c.shape.m),
                   "D = " + std::to_string(c.width));
    detail::expect_positive(where, "vocabulary", c.vocab);
    detail::expect_positive(where, "layers", c.layers);
    detail::expect_positive(where, "heads", c.heads);
    if (c.width % c.heads != 0 || (c.width / c.heads) % 2 != 0)
      detail::fail(where, "heads", "a divisor of D = " + std::to_string(c.width) + " with an even head width",
                   std::to_string(c.heads));
    if (!(c.mtp_lambda >= 0)) detail::fail(where, "mtp_lambda", ">= 0", std::to_string(c.mtp_lambda));
    return c;
  }

  template <class Module, class F>
  static void visit_module(const std::string& prefix, Module& m, F& f) {
    std::vector<std::pair<Scalar*, index_t>> grads;
    m.grads.visit([&](std::string_view, Scalar* g, index_t size, bool) { grads.emplace_back(g, size); });
    std::size_t i = 0;
    m.params.visit([&](std::string_view name, Scalar* p, index_t size, bool decay) {
      f(prefix + std::string(name), p, grads[i++].first, size, decay);
    });
  }

  // A (BT, D') batch viewed as (BT n, db) slot rows.
  Eigen::Map<mat> slots(mat& x, index_t db) const { return Eigen::Map<mat>(x.data(), x.rows() * cfg_.shape.n, db); }
  Eigen::Map<const mat> slots(const mat& x, index_t db) const {
    return Eigen::Map<const mat>(x.data(), x.rows() * cfg_.shape.n, db);
  }

  void embed(std::span<const std::int32_t> tokens, mat& H) const { embed_->forward(tokens, H); }
  void embed_backward(std::span<const std::int32_t> tokens, const mat& dH) { embed_->backward(tokens, dH); }

  // One block on H (BT, D'); returns its output (BT, D'), kept in the block.
  const mat& block_forward(block& b, const mat& H, index_t T);

  // dH_in (BT, D', overwritten) from dH_out.
  void block_backward(block& b, const mat& dH_out, mat& dH_in, index_t T);

  double head_forward(const mat& H, std::span<const std::int32_t> targets, head_state& s);

  // dH (BT, D', overwritten) of `scale` times the head's loss.
  void head_backward(const mat& H, std::span<const std::int32_t> targets, head_state& s, Scalar scale, mat& dH);

  config cfg_;
  const width_factory<Scalar>* parts_;  // the width parts of cfg_.shape
  std::unique_ptr<embedding_layer<Scalar>> embed_;
  std::vector<std::unique_ptr<block>> blocks_;
  nn::rope<Scalar> rope_;
  nn::causal_attention<Scalar> attn_;
  std::unique_ptr<head_layer<Scalar>> head_;
  nn::rmsnorm<Scalar> final_norm_;
  nn::linear<Scalar> out_;
  nn::cross_entropy<Scalar> ce_;
  std::unique_ptr<block> mtp_block_;
  std::unique_ptr<mixer_layer<Scalar>> mixer_;
  std::optional<nn::rmsnorm<Scalar>> slot_norm_h_, slot_norm_e_;
  typename nn::rmsnorm<Scalar>::workspace ws_nh_, ws_ne_;
  head_state main_, mtp_;
  backward_scratch scratch_;
  mat H0_, A_, B_, E1_, U_;
  const mat* H_last_ = nullptr;
  index_t T_ = 0;
  std::vector<std::int32_t> inputs_, next_, next2_;
  struct probe_copy {
    const Scalar* from;
    Scalar* to;
    index_t size;
  };
  std::unique_ptr<transformer> probe_;  // the evaluation copy of next_logits
  std::vector<probe_copy> probe_copies_;
};

template <class Scalar>
transformer<Scalar>::transformer(const config& c)
    : cfg_(check(c)), parts_(&width_parts<Scalar>(c.shape)), rope_(c.width / c.heads, c.context),
      attn_(c.heads, c.width / c.heads), head_(parts_->head(c.width, c.seed + 7)), final_norm_(c.width),
      out_(c.width, c.vocab, c.seed + 8), ce_(c.vocab) {
  embed_ = parts_->embedding(c.vocab, c.width, c.lowrank_embedding, c.seed);
  rng r(c.seed + 9);
  r.fill_normal(out_.params.W, 0.02);
  for (index_t l = 0; l < c.layers; ++l) blocks_.push_back(std::make_unique<block>(c, *parts_, c.seed + 100 * (l + 1)));
  if (c.mtp) {
    mtp_block_ = std::make_unique<block>(c, *parts_, c.seed + 100 * (c.layers + 1));
    mixer_ = parts_->mixer(c.width, c.seed + 10);
    slot_norm_h_.emplace(block_width());
    slot_norm_e_.emplace(block_width());
  }
  main_.ws_head = head_->make_state();
  mtp_.ws_head = head_->make_state();
  zero_grad();
}

template <class Scalar>
void transformer<Scalar>::visit(const visitor& f) {
  embed_->visit("embed.", f);
  for (std::size_t l = 0; l < blocks_.size(); ++l) blocks_[l]->visit("blocks." + std::to_string(l) + ".", f);
  head_->visit("head.", f);
  visit_module("final_norm.", final_norm_, f);
  visit_module("unembed.", out_, f);
  if (mtp_block_) {
    visit_module("mtp.norm_h.", *slot_norm_h_, f);
    visit_module("mtp.norm_e.", *slot_norm_e_, f);
    mixer_->visit("mtp.mixer.", f);
    mtp_block_->visit("mtp.block.", f);
  }
}

template <class Scalar>
void transformer<Scalar>::zero_grad() {
  std::vector<std::pair<Scalar*, index_t>> g;  // every gradient tensor, cleared in parallel
  visit([&](const std::string&, Scalar*, Scalar* grad, index_t size, bool) { g.emplace_back(grad, size); });
  detail::for_tasks(index_t(g.size()), [&](index_t i) {
    std::fill(g[std::size_t(i)].first, g[std::size_t(i)].first + g[std::size_t(i)].second, Scalar(0));
  });
}

template <class Scalar>
losses transformer<Scalar>::forward(host_t, std::span<const std::int32_t> inputs, std::span<const std::int32_t> next,
                 std::span<const std::int32_t> next2, index_t T) {
  const std::string where = name() + "::forward";
  const detail::eigen_serial serial;  // every product below is split by our own parallel loops
  const index_t BT = index_t(inputs.size());
  if (T < 1 || T > cfg_.context)
    detail::fail(where, "sequence length T", "1 <= T <= context = " + std::to_string(cfg_.context), std::to_string(T));
  detail::expect_sequences(where, "inputs", BT, T);
  if (index_t(next.size()) != BT) detail::fail(where, "next-token targets", std::to_string(BT), std::to_string(next.size()));
  if (cfg_.mtp && index_t(next2.size()) != BT)
    detail::fail(where, "next-2-token targets", std::to_string(BT), std::to_string(next2.size()));
  T_ = T;
  const index_t Dw = wide_width();
  H0_.resize(BT, Dw);  // (BT, D')
  embed(inputs, H0_);
  const mat* H = &H0_;
  for (auto& b : blocks_) H = &block_forward(*b, *H, T);
  losses out;
  out.next = head_forward(*H, next, main_);
  if (cfg_.mtp) {
    const index_t db = block_width();
    A_.resize(BT, Dw);   // (BT, D') per-slot normalised H_L
    E1_.resize(BT, Dw);  // (BT, D') over-width embedding of the next token
    B_.resize(BT, Dw);   // (BT, D') per-slot normalised E1
    U_.resize(BT, Dw);   // (BT, D') mixer output
    slot_norm_h_->forward(host, slots(*H, db), slots(A_, db), ws_nh_);
    embed(next, E1_);
    slot_norm_e_->forward(host, slots(E1_, db), slots(B_, db), ws_ne_);
    mixer_->forward(A_, B_, U_);
    const mat& U2 = block_forward(*mtp_block_, U_, T);
    out.next2 = head_forward(U2, next2, mtp_);
  }
  out.total = out.next + (cfg_.mtp ? cfg_.mtp_lambda * out.next2 : 0.0);
  H_last_ = H;
  inputs_.assign(inputs.begin(), inputs.end());
  next_.assign(next.begin(), next.end());
  next2_.assign(next2.begin(), next2.end());
  return out;
}

template <class Scalar>
std::vector<Scalar> transformer<Scalar>::next_logits(std::span<const std::int32_t> tokens) {
  const std::string where = name() + "::next_logits";
  if (tokens.empty()) detail::fail(where, "token count", "at least 1 token", "0");
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab)
      detail::fail(where, "token at position " + std::to_string(i), "a value in [0, " + std::to_string(cfg_.vocab) + ")",
                   std::to_string(tokens[i]));
  sync_probe();
  const std::size_t T = std::min<std::size_t>(tokens.size(), static_cast<std::size_t>(cfg_.context));
  const std::span<const std::int32_t> window = tokens.last(T);
  // The targets only feed the loss, which is not used here.
  std::vector<std::int32_t> next(window.begin() + 1, window.end());
  next.push_back(0);
  (void)probe_->forward(host, window, next, {}, index_t(T));
  const mat& z = probe_->logits();  // (T, V)
  std::vector<Scalar> out(static_cast<std::size_t>(cfg_.vocab));
  for (index_t v = 0; v < cfg_.vocab; ++v) out[std::size_t(v)] = z(index_t(T) - 1, v);
  return out;
}

template <class Scalar>
void transformer<Scalar>::backward(host_t) {
  const std::string where = name() + "::backward";
  if (!H_last_) detail::fail(where, "state", "a preceding forward", "none");
  const detail::eigen_serial serial;
  const index_t BT = index_t(inputs_.size()), Dw = wide_width();
  backward_scratch& g = scratch_;
  mat& dH = g.dH;  // (BT, D') gradient of H_L
  dH.resize(BT, Dw);
  head_backward(*H_last_, next_, main_, Scalar(1), dH);
  if (cfg_.mtp) {
    const index_t db = block_width();
    mat &dU2 = g.dU2, &dU = g.dU, &dA = g.dA, &dB = g.dB, &dE1 = g.dE1, &dHm = g.dHm;  // each (BT, D')
    for (mat* x : {&dU2, &dU, &dA, &dB, &dE1, &dHm}) x->resize(BT, Dw);
    head_backward(mtp_block_->H_out, next2_, mtp_, Scalar(cfg_.mtp_lambda), dU2);
    block_backward(*mtp_block_, dU2, dU, T_);
    mixer_->backward(A_, B_, dU, dA, dB);
    slot_norm_e_->backward(host, slots(E1_, db), slots(dB, db), slots(dE1, db), ws_ne_);
    embed_backward(next_, dE1);
    slot_norm_h_->backward(host, slots(*H_last_, db), slots(dA, db), slots(dHm, db), ws_nh_);
    dH += dHm;
  }
  mat& dprev = g.dprev;  // (BT, D')
  dprev.resize(BT, Dw);
  for (std::size_t l = blocks_.size(); l-- > 0;) {
    block_backward(*blocks_[l], dH, dprev, T_);
    dH.swap(dprev);
  }
  embed_backward(inputs_, dH);
}

template <class Scalar>
typename transformer<Scalar>::kv_cache transformer<Scalar>::make_cache() const {
  kv_cache c;
  c.shape_ = cfg_.shape;
  for (std::size_t l = 0; l < blocks_.size(); ++l) {
    c.k_.emplace_back(cfg_.context, cfg_.width);
    c.v_.emplace_back(cfg_.context, cfg_.width);
  }
  c.tokens_.reserve(static_cast<std::size_t>(cfg_.context));
  c.ws_ghc_ = blocks_.front()->ghc_attn->make_state();
  c.ws_head_ = head_->make_state();
  return c;
}

template <class Scalar>
std::vector<Scalar> transformer<Scalar>::decode(kv_cache& cache, std::int32_t token) const {
  const std::string where = name() + "::decode";
  if (token < 0 || token >= cfg_.vocab)
    detail::fail(where, "token", "a value in [0, " + std::to_string(cfg_.vocab) + ")", std::to_string(token));
  if (!cache.ws_ghc_ || !(cache.shape_ == cfg_.shape) || cache.k_.size() != blocks_.size() ||
      cache.k_.front().rows() != cfg_.context || cache.k_.front().cols() != cfg_.width)
    detail::fail(where, "cache", "one made by make_cache() of this model (" + cfg_.shape.label() + ", " +
                 std::to_string(blocks_.size()) + " blocks of width " + std::to_string(cfg_.width) + ", context " +
                 std::to_string(cfg_.context) + ")",
                 cache.ws_ghc_ ? "one for " + cache.shape_.label() + ", " + std::to_string(cache.k_.size()) +
                                     " blocks of width " + std::to_string(cache.k_.front().cols()) + ", context " +
                                     std::to_string(cache.k_.front().rows())
                               : std::string("an empty one"));
  const detail::eigen_serial serial;  // one token's rows: nothing to split
  if (index_t(cache.tokens_.size()) == cfg_.context) {
    const std::vector<std::int32_t> keep(cache.tokens_.end() - cfg_.context / 2, cache.tokens_.end());
    cache.tokens_.clear();
    for (const std::int32_t t : keep) decode_step(cache, t, false);
  }
  decode_step(cache, token, true);
  return std::vector<Scalar>(cache.logits_.data(), cache.logits_.data() + cfg_.vocab);
}

template <class Scalar>
void transformer<Scalar>::decode_step(kv_cache& c, std::int32_t token, bool logits) const {
  const index_t p = index_t(c.tokens_.size()), D = cfg_.width, Dw = wide_width();  // p: the token's position
  c.H_.resize(1, Dw), c.H_mid_.resize(1, Dw), c.X_.resize(1, D), c.C_.resize(1, Dw), c.a_.resize(1, D),
      c.qkv_.resize(1, 3 * D), c.o_.resize(1, D), c.z_.resize(1, D);
  embed(std::span<const std::int32_t>(&token, 1), c.H_);  // (1, D')
  for (std::size_t l = 0; l < blocks_.size(); ++l) {
    const block& b = *blocks_[l];
    b.ghc_attn->forward_width(c.H_, c.X_, c.C_, *c.ws_ghc_);
    b.attn_norm.forward(host, c.X_, c.a_, c.ws_norm_);
    b.qkv.forward(host, c.a_, c.qkv_);
    rope_.forward_at(host, c.qkv_.leftCols(2 * D), p);  // q and k of this position
    c.k_[l].row(p) = c.qkv_.middleCols(D, D);
    c.v_[l].row(p) = c.qkv_.rightCols(D);
    attn_.forward_last(host, c.qkv_.leftCols(D), c.k_[l].topRows(p + 1), c.v_[l].topRows(p + 1), c.o_);
    b.proj.forward(host, c.o_, c.z_);
    b.ghc_attn->forward_depth(c.z_, c.C_, c.H_mid_, *c.ws_ghc_);
    b.ghc_ffn->forward_width(c.H_mid_, c.X_, c.C_, *c.ws_ghc_);
    b.ffn_norm.forward(host, c.X_, c.a_, c.ws_norm_);
    b.ffn.forward(host, c.a_, c.z_, c.ws_ffn_);
    b.ghc_ffn->forward_depth(c.z_, c.C_, c.H_, *c.ws_ghc_);
  }
  c.tokens_.push_back(token);
  if (!logits) return;
  c.h_.resize(1, D), c.hn_.resize(1, D), c.logits_.resize(1, cfg_.vocab);
  head_->forward(c.H_, c.h_, *c.ws_head_);
  final_norm_.forward(host, c.h_, c.hn_, c.ws_norm_);
  out_.forward(host, c.hn_, c.logits_);
}

template <class Scalar>
void transformer<Scalar>::sync_probe() {
  if (!probe_) {
    config pc = cfg_;
    pc.mtp = false;
    probe_ = std::make_unique<transformer>(pc);
    std::vector<std::pair<std::string, std::pair<Scalar*, index_t>>> mine;
    visit([&](const std::string& n, Scalar* p, Scalar*, index_t size, bool) { mine.push_back({n, {p, size}}); });
    probe_->visit([&](const std::string& n, Scalar* p, Scalar*, index_t size, bool) {
      for (const auto& [name, ps] : mine)
        if (name == n && ps.second == size) {
          probe_copies_.push_back({ps.first, p, size});
          break;
        }
    });
  }
  for (const auto& c : probe_copies_) std::copy(c.from, c.from + c.size, c.to);
}

template <class Scalar>
const typename transformer<Scalar>::mat& transformer<Scalar>::block_forward(block& b, const mat& H, index_t T) {
  const index_t BT = H.rows(), D = cfg_.width, Dw = wide_width();
  b.H_in = &H;
  b.X.resize(BT, D), b.C.resize(BT, Dw), b.a.resize(BT, D), b.qkv_out.resize(BT, 3 * D), b.o.resize(BT, D),
      b.z.resize(BT, D), b.H_mid.resize(BT, Dw);
  b.ghc_attn->forward_width(H, b.X, b.C, *b.ws_ghc_attn);
  b.attn_norm.forward(host, b.X, b.a, b.ws_an);
  b.qkv.forward(host, b.a, b.qkv_out);
  rope_.forward(host, b.qkv_out.leftCols(2 * D), T);  // q and k in one pass: the same rotation per head
  attn_.forward(host, b.qkv_out.leftCols(D), b.qkv_out.middleCols(D, D), b.qkv_out.rightCols(D), T, b.o, b.ws_att);
  b.proj.forward(host, b.o, b.z);
  b.ghc_attn->forward_depth(b.z, b.C, b.H_mid, *b.ws_ghc_attn);
  b.X2.resize(BT, D), b.C2.resize(BT, Dw), b.a2.resize(BT, D), b.z2.resize(BT, D), b.H_out.resize(BT, Dw);
  b.ghc_ffn->forward_width(b.H_mid, b.X2, b.C2, *b.ws_ghc_ffn);
  b.ffn_norm.forward(host, b.X2, b.a2, b.ws_fn);
  b.ffn.forward(host, b.a2, b.z2, b.ws_ff);
  b.ghc_ffn->forward_depth(b.z2, b.C2, b.H_out, *b.ws_ghc_ffn);
  return b.H_out;
}

template <class Scalar>
void transformer<Scalar>::block_backward(block& b, const mat& dH_out, mat& dH_in, index_t T) {
  const index_t BT = dH_out.rows(), D = cfg_.width, Dw = wide_width();
  backward_scratch& g = scratch_;
  mat &dz2 = g.dz2, &da2 = g.da2, &dX2 = g.dX2, &dH_mid = g.dH_mid;  // (BT, D) x 3, (BT, D')
  dz2.resize(BT, D), da2.resize(BT, D), dX2.resize(BT, D), dH_mid.resize(BT, Dw);
  b.ghc_ffn->backward_depth(dH_out, b.z2, dz2, *b.ws_ghc_ffn);
  b.ffn.backward(host, b.a2, dz2, da2, b.ws_ff);
  b.ffn_norm.backward(host, b.X2, da2, dX2, b.ws_fn);
  b.ghc_ffn->backward_width(b.H_mid, dX2, dH_out, dH_mid, *b.ws_ghc_ffn);
  mat &dz = g.dz, &d_o = g.d_o, &dqkv = g.dqkv, &da = g.da, &dX = g.dX;  // (BT, D), dqkv (BT, 3D)
  dz.resize(BT, D), d_o.resize(BT, D), dqkv.resize(BT, 3 * D), da.resize(BT, D), dX.resize(BT, D);
  b.ghc_attn->backward_depth(dH_mid, b.z, dz, *b.ws_ghc_attn);
  b.proj.backward(host, b.o, dz, d_o);
  attn_.backward(host, b.qkv_out.leftCols(D), b.qkv_out.middleCols(D, D), b.qkv_out.rightCols(D), d_o,
                 dqkv.leftCols(D), dqkv.middleCols(D, D), dqkv.rightCols(D), b.ws_att);
  rope_.backward(host, dqkv.leftCols(2 * D), T);
  b.qkv.backward(host, b.a, dqkv, da);
  b.attn_norm.backward(host, b.X, da, dX, b.ws_an);
  dH_in.resize(BT, Dw);
  b.ghc_attn->backward_width(*b.H_in, dX, dH_mid, dH_in, *b.ws_ghc_attn);
}

template <class Scalar>
double transformer<Scalar>::head_forward(const mat& H, std::span<const std::int32_t> targets, head_state& s) {
  const index_t BT = H.rows();
  s.h.resize(BT, cfg_.width), s.hn.resize(BT, cfg_.width), s.logits.resize(BT, cfg_.vocab);
  head_->forward(H, s.h, *s.ws_head);
  final_norm_.forward(host, s.h, s.hn, s.ws_fin);
  out_.forward(host, s.hn, s.logits);
  return ce_.forward(host, s.logits, targets, s.ws_ce);
}

template <class Scalar>
void transformer<Scalar>::head_backward(const mat& H, std::span<const std::int32_t> targets, head_state& s, Scalar scale, mat& dH) {
  const index_t BT = H.rows();
  backward_scratch& g = scratch_;
  mat &dlogits = g.dlogits, &dhn = g.dhn, &dh = g.dh;  // (BT, V), (BT, D), (BT, D)
  dlogits.resize(BT, cfg_.vocab), dhn.resize(BT, cfg_.width), dh.resize(BT, cfg_.width);
  ce_.backward(host, targets, dlogits, s.ws_ce, scale);
  out_.backward(host, s.hn, dlogits, dhn);
  final_norm_.backward(host, s.h, dhn, dh, s.ws_fin);
  head_->backward(H, dh, dH, *s.ws_head);
}

/// Builds the float transformer of `shape` with settings `c` (its `shape` field is replaced): the run-time choice
/// of vwn-train and vwn-sample. Throws std::invalid_argument listing the compiled shapes when `shape` is not one of
/// them, and the model's own std::invalid_argument for inconsistent settings.
inline std::unique_ptr<transformer<float>> make_transformer(const shape_choice& shape, config c) {
  c.shape = shape;
  return std::make_unique<transformer<float>>(c);
}

// Compiled once, in model.cpp (float) and model_double.cpp (double, for the tests).
extern template class transformer<float>;
extern template class transformer<double>;

}  // namespace vwn::model
