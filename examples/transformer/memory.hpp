#pragma once
/// \file memory.hpp
/// How many values a transformer of given settings holds, counted from its tensor shapes before anything is
/// allocated: the parameters exactly (the parameter lists of the primitives, `ghc_tensors` and the others,
/// plus the blocks of model.hpp), the activations of one batch from the buffers `forward` and `backward` size.
/// The trainer turns these counts into bytes and refuses settings that cannot fit (train/settings.hpp).
/// Counted in double: settings that cannot fit anywhere must not overflow the count.

#include <algorithm>

#include <vwn/core/shapes.hpp>
#include <vwn/embedding.hpp>
#include <vwn/ghc.hpp>
#include <vwn/mhc.hpp>
#include <vwn/mtp.hpp>
#include <vwn/reduce.hpp>

#include "model.hpp"

namespace vwn::model {

/// Values (not bytes) a transformer holds; see `count_values`.
struct value_count {
  double parameters = 0;   ///< parameter values; equals `transformer::parameter_count()`
  double activations = 0;  ///< values `forward` and `backward` keep or use for one batch, at their largest
};

namespace detail {

/// Sum of `rows x cols` over a list of `tensor_spec`s, in double.
template <class Specs>
double spec_values(const Specs& specs) {
  double sum = 0;
  for (const tensor_spec& t : specs) sum += double(t.rows) * double(t.cols);
  return sum;
}

}  // namespace detail

/// The values a transformer with settings `c` holds when it trains on batches of `batch` sequences of `c.context`
/// tokens. Parameters: exact. Activations: the buffers of model.hpp (per block the saved `X, a, o, z, X2, a2, z2`,
/// `qkv_out`, `C, C2, H_mid, H_out`, the attention probabilities, the SwiGLU workspace and backward scratch, the
/// GHC workspaces), the output heads, the shared backward scratch and the batch's tokens; temporaries of a few
/// values per token and thread are left out. Throws std::invalid_argument when `c.shape` is not compiled.
inline value_count count_values(const config& c, index_t batch) {
  const double V = double(c.vocab), D = double(c.width), F = double(c.ffn()), L = double(c.layers),
               heads = double(c.heads), T = double(c.context), BT = double(batch) * T;
  const double m = c.shape.m, n = c.shape.n, db = D / m, Dw = n * db;
  double ghc = -1, embed = 0, reduce = 0, mixer = 0, groups = 0, ghc_logits = 0;
  const bool compiled = dispatch_shape(c.shape.m, c.shape.n, [&]<int M, int N>() {
    const index_t d = c.width / M;
    if (c.shape.connection == vwn_connection::name)
      ghc = c.shape.dynamic ? detail::spec_values(ghc_tensors<M, N, true>(d)) : detail::spec_values(ghc_tensors<M, N, false>(d));
    else
      ghc = c.shape.dynamic ? detail::spec_values(manifold_tensors<M, N, true, false>(d))
                            : detail::spec_values(manifold_tensors<M, N, false, false>(d));
    ghc_logits = 2.0 * N * M + double(N) * N;
    if constexpr (connection_offered<mhc_lite_connection, N>) {
      if (c.shape.connection == mhc_lite_connection::name) {
        ghc = c.shape.dynamic ? detail::spec_values(manifold_tensors<M, N, true, true>(d))
                              : detail::spec_values(manifold_tensors<M, N, false, true>(d));
        ghc_logits = 2.0 * N * M + factorial(N);
      }
    }
    embed = c.lowrank_embedding ? detail::spec_values(lowrank_overwidth_embedding_tensors<M, N>(c.vocab, c.width))
                                : detail::spec_values(overwidth_embedding_tensors<M, N>(c.vocab, c.width));
    reduce = detail::spec_values(reduce_head_tensors<M, N>(c.width));
    mixer = detail::spec_values(mtp_mixer_tensors<M, N>(c.width));
    groups = reduce_head_has_groupnorm<M, N> ? double(N / M) : 0.0;
  });
  if (!compiled) (void)width_parts<float>(c.shape);  // throws, naming the compiled shapes

  // One block: two GHCs, two RMSNorms, qkv (3D x D), proj (D x D), SwiGLU (3 x F x D).
  const double block = 2 * ghc + 2 * D + 4 * D * D + 3 * F * D;
  const double blocks = L + (c.mtp ? 1 : 0);
  value_count out;
  out.parameters = embed + L * block + reduce + D /* final norm */ + V * D /* unembedding */ +
                   (c.mtp ? 2 * db /* slot norms */ + mixer + block : 0.0);

  // Per token of one block: X, a, o, z, X2, a2, z2 (D each), qkv_out (3D), C, C2, H_mid, H_out (D' each), the
  // attention probabilities (heads x T), the SwiGLU workspace (a, g, h) and backward scratch (da, dg) (F each),
  // two RMSNorm scales, and for DGHC each GHC's per-slot scales, coefficient projections and B coefficients.
  // The manifold families keep the token's 1/rms, its K logits' projection, its coefficients and d b.
  const double ghc_ws = !c.shape.dynamic ? 0.0
                        : c.shape.connection == vwn_connection::name ? n * (1 + (2 * m + n) + m)
                                                                     : 1 + ghc_logits + n * (2 * m + n) + n * m;
  const double per_block = 10 * D + 4 * Dw + heads * T + 5 * F + 2 + 2 * ghc_ws;
  // Per token of one output head: h, hn (D each), logits and softmax (V each), loss and norm scale, and the
  // reduce head's GroupNorm output and statistics.
  const double per_head = 2 * D + 2 * V + 2 + (groups > 0 ? Dw + 2 * groups : 0.0);
  // Per token, once: H0, the MTP inputs A, E1, B, U, the backward scratch (dH, dprev, dH_mid; with MTP dU2, dU,
  // dA, dB, dE1, dHm: D' each; dz, d_o, da, dX, dz2, da2, dX2, dhn, dh: D each; dqkv: 3D; dlogits: V), the reduce
  // head's backward dnormed (D'), and the batch's tokens (inputs and two targets, in the sampler and in the
  // model); then the embedding's sparse gradient, a row per distinct token.
  const double once = Dw + (c.mtp ? 4 * Dw : 0.0) + 3 * Dw + (c.mtp ? 6 * Dw : 0.0) + 12 * D + V + Dw + 6;
  out.activations = BT * (blocks * per_block + (c.mtp ? 2 : 1) * per_head + once) +
                    std::min(V, BT) * (c.lowrank_embedding ? D : Dw);
  return out;
}

}  // namespace vwn::model
