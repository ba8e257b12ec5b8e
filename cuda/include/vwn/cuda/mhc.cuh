#pragma once
/// \file mhc.cuh
/// The manifold-constrained connection families (mHC, mHC-lite, DeepSeek-V4's variant; `<vwn/mhc.hpp>`,
/// docs/mhc.md) on the device, with the calls of every device GHC:
/// ```
///   vwn::cuda::dghc<1, 4, float, vwn::mhc_connection> layer(D);
///   layer.forward_width(vwn::cuda::device.on(s), H, X, C, ws);
///   layer.forward_depth(vwn::cuda::device.on(s), Z, C, H_out, ws);
///   layer.backward_depth(vwn::cuda::device.on(s), dH_out, Z, dZ, ws);
///   layer.backward_width(vwn::cuda::device.on(s), H, dX, dC, dH, ws);
/// ```
/// Each call is a short sequence of steps, each step one thread per output entry (or per token) running a
/// `VWN_HOST_DEVICE` function of the entry's index: the projection `H phi`, the per-token coefficients (the one copy
/// of the formulas, `<vwn/math/mhc.hpp>`, as the host back end calls it), the mixing and the depth connection
/// (`<vwn/math/ghc.hpp>`), their backward passes, and the reductions over tokens in token order. The steps are
/// written once, over an executor (`device_steps`: a kernel launch per step; the tests' host executor: a loop), so
/// that the tests run the very step functions on the host without a GPU. Activations are stored as `S` and
/// accumulated in float; parameters, gradients and the saved state are float.
///
/// These kernels are plain (one thread per entry, no shared-memory tiling; the per-token Sinkhorn runs on one
/// thread): written for correctness first, their speed is not measured.

#include <algorithm>
#include <climits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <vwn/core/connection.hpp>
#include <vwn/math/ghc.hpp>
#include <vwn/math/mhc.hpp>
#include <vwn/math/norm.hpp>
#include <vwn/mhc.hpp>

#include "detail/kernels.cuh"
#include "ghc.cuh"
#include "memory.hpp"

namespace vwn::cuda {

namespace detail {

/// Where the steps of a manifold GHC read and write: the parameters, their gradients (accumulated) and the saved
/// state, as plain pointers (device memory for the class, host memory for the tests).
struct manifold_state_ptrs {
  const float* bias = nullptr;  ///< `K` logit biases `[b_pre | b_post | b_res]`
  const float* phi = nullptr;   ///< dynamic: `n db x K`
  const float* gate = nullptr;  ///< dynamic: 3
  float* dbias = nullptr;       ///< gradient of `bias` (accumulated)
  float* dphi = nullptr;        ///< dynamic: gradient of `phi` (accumulated)
  float* dgate = nullptr;       ///< dynamic: gradient of `gate` (accumulated)
  float* r = nullptr;           ///< dynamic: `T` inverse RMS of each token's `n db` values
  float* q = nullptr;           ///< dynamic: `T x K` projections `H_t phi`, then normalised `r (H_t phi)`
  float* ab = nullptr;          ///< `T x n(2m+n)` coefficients `[a | b]` (dynamic), `n(2m+n)` (static)
  float* dB = nullptr;          ///< `T x n m` gradient of each token's `b`
  float* da = nullptr;          ///< `T x n(m+n)` gradient of each token's `a`
  float* dz = nullptr;          ///< dynamic: `T x K` gradient of each token's logits
  float* dS = nullptr;          ///< dynamic: `T x K` gradient of the raw projection `H_t phi`
  float* tok = nullptr;         ///< dynamic: `T x 4` each token's gate gradient (3) and RMS projection term
  float* sum = nullptr;         ///< static: `n(2m+n)` the coefficient gradient summed over the tokens
  float* scratch = nullptr;     ///< `lanes x lane_floats` per-lane scratch of the per-token steps
  int lanes = 1;                ///< lanes of the per-token steps (each takes every `lanes`-th token)
  int lane_floats = 0;          ///< floats of one lane's scratch (`manifold_sizes::token_floats`)
  int db = 0;                   ///< slot width
  index_t T = 0;                ///< tokens
};

/// Sizes of one manifold GHC's per-token work.
template <int M, int N>
struct manifold_sizes {
  static constexpr int KC = 2 * M + N;  ///< coefficient columns `[a_pre | A_c | b]`
  static constexpr int NKC = N * KC;    ///< coefficients per token
  static constexpr int NM = N * M;
  static constexpr int NA = N * (M + N);  ///< entries of `a = [a_pre | A_c]`
  /// Floats of one lane's scratch: the logits, their gradient, the projection's gradient, `[da | db]`, and the
  /// formulas' own scratch.
  static int token_floats(const manifold_rule& rule, int K) { return 3 * K + NKC + math::manifold_scratch(rule, N); }
};

// ---------------------------------------------------------------------------------------------------------------
// Forward steps
// ---------------------------------------------------------------------------------------------------------------

/// Entry `(t, k)` of the raw projection `q = H phi` (`T x K`, `i = t K + k`).
template <class S>
struct manifold_raw_projection {
  const S* H;
  index_t ldH;
  manifold_state_ptrs p;
  int width, K;
  VWN_HOST_DEVICE void operator()(index_t i) const {
    const index_t t = i / K;
    const int k = int(i % K);
    const S* h = H + t * ldH;
    float s = 0.f;
    for (int e = 0; e < width; ++e) s += to_float(h[e]) * p.phi[index_t(e) * K + k];
    p.q[i] = s;
  }
};

/// One lane of the dynamic coefficients: for every `lanes`-th token, the inverse RMS, `q = r (H_t phi)`, the logits
/// `z = gate q + bias` and `[a | b] = manifold_coefficients(z)`.
template <int M, int N, class S>
struct manifold_token_forward {
  const S* H;
  index_t ldH;
  manifold_state_ptrs p;
  manifold_rule rule;
  int K;
  VWN_HOST_DEVICE void operator()(index_t lane) const {
    using sz = manifold_sizes<M, N>;
    const int width = N * p.db;
    float* z = p.scratch + lane * p.lane_floats;
    float* scratch = z + 3 * K + sz::NKC;
    for (index_t t = lane; t < p.T; t += p.lanes) {
      const S* h = H + t * ldH;
      float ss = 0.f;
      for (int e = 0; e < width; ++e) ss += to_float(h[e]) * to_float(h[e]);
      const float r = math::inverse_rms(ss, float(width));
      p.r[t] = r;
      float* q = p.q + t * K;
      for (int k = 0; k < K; ++k) math::projection_from_raw(q[k], r, q[k]);
      math::manifold_logits<M, N>(q, p.gate, p.bias, z, K);
      math::manifold_coefficients<M, N>(z, p.ab + t * sz::NKC, rule, scratch);
    }
  }
};

/// The static coefficients `[a | b] = manifold_coefficients(bias)` (one entry).
template <int M, int N>
struct manifold_static_forward {
  manifold_state_ptrs p;
  manifold_rule rule;
  VWN_HOST_DEVICE void operator()(index_t) const { math::manifold_coefficients<M, N>(p.bias, p.ab, rule, p.scratch); }
};

/// The coefficients of token `t` (row-major `n x (2m+n)`): its own (dynamic) or the shared ones (static).
template <int M, int N, bool Dynamic>
VWN_HOST_DEVICE const float* token_ab(const manifold_state_ptrs& p, index_t t) {
  return p.ab + (Dynamic ? t * manifold_sizes<M, N>::NKC : 0);
}

/// Column `d` of token `t` of the width mixing (`i = t db + d`): `X = a_pre^T H`, `C = A_c^T H` (math::mix_row).
template <int M, int N, class S, bool Dynamic>
struct manifold_mix {
  const S* H;
  index_t ldH;
  S* X;
  index_t ldX;
  S* C;
  index_t ldC;
  manifold_state_ptrs p;
  VWN_HOST_DEVICE void operator()(index_t i) const {
    const index_t t = i / p.db;
    const int d = int(i % p.db), db = p.db;
    const coefficient_block a{token_ab<M, N, Dynamic>(p, t), manifold_sizes<M, N>::KC};
    float h[N];
    for (int j = 0; j < N; ++j) h[j] = to_float(H[t * ldH + index_t(j) * db + d]);
    const auto slot = [&](int j) { return h[j]; };
    for (int r = 0; r < M + N; ++r) {
      float s;
      math::mix_row<N>(a, r, slot, s);
      (r < M ? X + t * ldX + index_t(r) * db : C + t * ldC + index_t(r - M) * db)[d] = from_float<S>(s);
    }
  }
};

/// Column `d` of token `t` of the depth connection (`i = t db + d`): `H_out = b Z + C` (math::depth_slot). `H_out`
/// may be `C`: each element is read before it is written, by the same thread.
template <int M, int N, class S, bool Dynamic>
struct manifold_depth {
  const S* Z;
  index_t ldZ;
  const S* C;
  index_t ldC;
  S* Hout;
  index_t ldO;
  manifold_state_ptrs p;
  VWN_HOST_DEVICE void operator()(index_t i) const {
    using sz = manifold_sizes<M, N>;
    const index_t t = i / p.db;
    const int d = int(i % p.db), db = p.db;
    const coefficient_block b{token_ab<M, N, Dynamic>(p, t) + M + N, sz::KC};
    float z[M];
    for (int k = 0; k < M; ++k) z[k] = to_float(Z[t * ldZ + index_t(k) * db + d]);
    const auto seg = [&](int k) { return z[k]; };
    for (int j = 0; j < N; ++j) {
      const float c = to_float(C[t * ldC + index_t(j) * db + d]);
      float acc, out;
      math::depth_slot<M>(b, j, seg, c, acc, out);
      Hout[t * ldO + index_t(j) * db + d] = from_float<S>(out);
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Backward steps
// ---------------------------------------------------------------------------------------------------------------

/// Column `d` of token `t` of `dZ = b^T dH_out` (`i = t db + d`; math::depth_backward_segment).
template <int M, int N, class S, bool Dynamic>
struct manifold_depth_backward {
  const S* dHout;
  index_t ldG;
  S* dZ;
  index_t ldZ;
  manifold_state_ptrs p;
  VWN_HOST_DEVICE void operator()(index_t i) const {
    const index_t t = i / p.db;
    const int d = int(i % p.db), db = p.db;
    const coefficient_block b{token_ab<M, N, Dynamic>(p, t) + M + N, manifold_sizes<M, N>::KC};
    float g[N];
    for (int j = 0; j < N; ++j) g[j] = to_float(dHout[t * ldG + index_t(j) * db + d]);
    const auto slot = [&](int j) { return g[j]; };
    for (int k = 0; k < M; ++k) {
      float s;
      math::depth_backward_segment<N>(b, k, slot, s);
      dZ[t * ldZ + index_t(k) * db + d] = from_float<S>(s);
    }
  }
};

/// Entry `(t, j, k)` of each token's `d b = dH_out Z^T` (`i = t n m + j m + k`), a sum over the slot width.
template <int M, int N, class S>
struct manifold_depth_coefficient_gradient {
  const S* dHout;
  index_t ldG;
  const S* Z;
  index_t ldZ;
  manifold_state_ptrs p;
  VWN_HOST_DEVICE void operator()(index_t i) const {
    const index_t t = i / (N * M);
    const int o = int(i % (N * M)), j = o / M, k = o % M, db = p.db;
    const S* g = dHout + t * ldG + index_t(j) * db;
    const S* z = Z + t * ldZ + index_t(k) * db;
    float s = 0.f;
    for (int d = 0; d < db; ++d) s += to_float(g[d]) * to_float(z[d]);
    p.dB[i] = s;
  }
};

/// Entry `(t, j, c)` of each token's `d a` (`i = t n(m+n) + j (m+n) + c`): `sum_d H_t(j, d) dmix_t(c, d)`, `dmix =
/// [dX; dC]`.
template <int M, int N, class S>
struct manifold_width_coefficient_gradient {
  const S* H;
  index_t ldH;
  const S* dX;
  index_t ldX;
  const S* dC;
  index_t ldC;
  manifold_state_ptrs p;
  VWN_HOST_DEVICE void operator()(index_t i) const {
    const index_t t = i / manifold_sizes<M, N>::NA;
    const int o = int(i % manifold_sizes<M, N>::NA), j = o / (M + N), c = o % (M + N), db = p.db;
    const S* h = H + t * ldH + index_t(j) * db;
    const S* g = c < M ? dX + t * ldX + index_t(c) * db : dC + t * ldC + index_t(c - M) * db;
    float s = 0.f;
    for (int d = 0; d < db; ++d) s += to_float(h[d]) * to_float(g[d]);
    p.da[i] = s;
  }
};

/// Entry `e` of the static family's coefficient gradient summed over the tokens, in token order: the `a` block from
/// `da` (`with_a`) or the `b` block from `dB`, zero elsewhere.
template <int M, int N>
struct manifold_static_sum {
  manifold_state_ptrs p;
  bool with_a;
  VWN_HOST_DEVICE void operator()(index_t e) const {
    using sz = manifold_sizes<M, N>;
    const int j = int(e / sz::KC), c = int(e % sz::KC);
    float s = 0.f;
    if (with_a && c < M + N)
      for (index_t t = 0; t < p.T; ++t) s += p.da[t * sz::NA + j * (M + N) + c];
    if (!with_a && c >= M + N)
      for (index_t t = 0; t < p.T; ++t) s += p.dB[t * sz::NM + j * M + (c - M - N)];
    p.sum[e] = s;
  }
};

/// The static family's bias gradient from the summed coefficient gradient (one entry): `dbias += d z`.
template <int M, int N>
struct manifold_static_backward {
  manifold_state_ptrs p;
  manifold_rule rule;
  int K;
  VWN_HOST_DEVICE void operator()(index_t) const {
    float* dz = p.scratch;
    math::manifold_coefficients_backward<M, N>(p.bias, p.sum, dz, rule, dz + K);
    for (int k = 0; k < K; ++k) p.dbias[k] += dz[k];
  }
};

/// One lane of the dynamic backward through the maps: for every `lanes`-th token, `[da | db]` -> the logits'
/// gradient `dz` (recomputing the carry's projection from the logits), the gates' and the normalised projection's
/// gradient, then `dS = r dq` and the RMS term `r^2 mean(dq q)` for `dH`.
template <int M, int N>
struct manifold_token_backward {
  manifold_state_ptrs p;
  manifold_rule rule;
  int K;
  VWN_HOST_DEVICE void operator()(index_t lane) const {
    using sz = manifold_sizes<M, N>;
    float* z = p.scratch + lane * p.lane_floats;
    float* dq = z + K;
    float* dab = dq + K;
    float* scratch = dab + sz::NKC;
    const float width = float(N * p.db);
    for (index_t t = lane; t < p.T; t += p.lanes) {
      for (int j = 0; j < N; ++j) {
        for (int c = 0; c < M + N; ++c) dab[j * sz::KC + c] = p.da[t * sz::NA + j * (M + N) + c];
        for (int k = 0; k < M; ++k) dab[j * sz::KC + M + N + k] = p.dB[t * sz::NM + j * M + k];
      }
      const float* q = p.q + t * K;
      float* dz = p.dz + t * K;
      math::manifold_logits<M, N>(q, p.gate, p.bias, z, K);
      math::manifold_coefficients_backward<M, N>(z, dab, dz, rule, scratch);
      float* tok = p.tok + t * 4;
      tok[0] = tok[1] = tok[2] = 0.f;
      math::manifold_logits_backward<M, N>(q, p.gate, dz, dq, tok, K);
      float s = 0.f;
      for (int k = 0; k < K; ++k) s += dq[k] * q[k];
      const float r = p.r[t];
      tok[3] = r * r * math::mean_of(s, width);
      for (int k = 0; k < K; ++k) p.dS[t * K + k] = r * dq[k];
    }
  }
};

/// Column `d` of token `t` of `dH` (`i = t db + d`): the mixing's `sum_c a(j, c) dmix(c)` (math::mix_width_backward)
/// and, dynamic, the projection's `sum_k dS_t(k) phi(j db + d, k)` and the RMS term `- r^2 mean(dq q) H_t`.
template <int M, int N, class S, bool Dynamic>
struct manifold_width_backward {
  const S* H;
  index_t ldH;
  const S* dX;
  index_t ldX;
  const S* dC;
  index_t ldC;
  S* dH;
  index_t ldD;
  manifold_state_ptrs p;
  int K;
  VWN_HOST_DEVICE void operator()(index_t i) const {
    const index_t t = i / p.db;
    const int d = int(i % p.db), db = p.db;
    const coefficient_block a{token_ab<M, N, Dynamic>(p, t), manifold_sizes<M, N>::KC};
    float g[M + N];
    for (int c = 0; c < M; ++c) g[c] = to_float(dX[t * ldX + index_t(c) * db + d]);
    for (int c = 0; c < N; ++c) g[M + c] = to_float(dC[t * ldC + index_t(c) * db + d]);
    const auto row = [&](int c) { return g[c]; };
    for (int j = 0; j < N; ++j) {
      float s;
      math::mix_width_backward<M, N>(a, j, row, s);
      if constexpr (Dynamic) {
        const index_t e = index_t(j) * db + d;
        float u = 0.f;
        for (int k = 0; k < K; ++k) u += p.dS[t * K + k] * p.phi[e * K + k];
        s = s + u - p.tok[t * 4 + 3] * to_float(H[t * ldH + e]);
      }
      dH[t * ldD + index_t(j) * db + d] = from_float<S>(s);
    }
  }
};

/// Entry `e` of the dynamic family's parameter gradients, summed over the tokens in token order: `e < K` the bias
/// (`sum_t dz_t`), `K <= e < K + 3` the gates, then `phi` (`sum_t H_t(f) dS_t(k)`, `e = K + 3 + f K + k`).
template <class S>
struct manifold_dynamic_parameter_gradient {
  const S* H;
  index_t ldH;
  manifold_state_ptrs p;
  int K;
  VWN_HOST_DEVICE void operator()(index_t e) const {
    float s = 0.f;
    if (e < K) {
      for (index_t t = 0; t < p.T; ++t) s += p.dz[t * K + e];
      p.dbias[e] += s;
    } else if (e < K + 3) {
      for (index_t t = 0; t < p.T; ++t) s += p.tok[t * 4 + (e - K)];
      p.dgate[e - K] += s;
    } else {
      const index_t o = e - K - 3, f = o / K;
      const int k = int(o % K);
      for (index_t t = 0; t < p.T; ++t) s += to_float(H[t * ldH + f]) * p.dS[t * K + k];
      p.dphi[o] += s;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------------
// The calls, as sequences of steps over an executor: `exec(count, step)` runs `step(i)` for `i = 0 .. count-1`
// (entries of one step are independent: each writes its own outputs).
// ---------------------------------------------------------------------------------------------------------------

/// The lanes of the per-token steps over `T` tokens: at most 4096, so that their scratch stays bounded.
inline int manifold_lanes(index_t T) { return int(std::min<index_t>(std::max<index_t>(T, 1), 4096)); }

template <int M, int N, class S, bool Dynamic, class Exec>
void manifold_forward_width(const Exec& exec, const S* H, index_t ldH, S* X, index_t ldX, S* C, index_t ldC,
                            const manifold_state_ptrs& p, const manifold_rule& rule, int K) {
  if constexpr (Dynamic) {
    exec(p.T * K, manifold_raw_projection<S>{H, ldH, p, N * p.db, K});
    exec(p.lanes, manifold_token_forward<M, N, S>{H, ldH, p, rule, K});
  } else {
    exec(1, manifold_static_forward<M, N>{p, rule});
  }
  exec(p.T * p.db, manifold_mix<M, N, S, Dynamic>{H, ldH, X, ldX, C, ldC, p});
}

template <int M, int N, class S, bool Dynamic, class Exec>
void manifold_forward_depth(const Exec& exec, const S* Z, index_t ldZ, const S* C, index_t ldC, S* Hout,
                            index_t ldO, const manifold_state_ptrs& p) {
  exec(p.T * p.db, manifold_depth<M, N, S, Dynamic>{Z, ldZ, C, ldC, Hout, ldO, p});
}

template <int M, int N, class S, bool Dynamic, class Exec>
void manifold_backward_depth(const Exec& exec, const S* dHout, index_t ldG, const S* Z, index_t ldZ, S* dZ,
                             index_t ldDZ, const manifold_state_ptrs& p, const manifold_rule& rule, int K) {
  exec(p.T * p.db, manifold_depth_backward<M, N, S, Dynamic>{dHout, ldG, dZ, ldDZ, p});
  exec(p.T * N * M, manifold_depth_coefficient_gradient<M, N, S>{dHout, ldG, Z, ldZ, p});
  if constexpr (!Dynamic) {
    exec(manifold_sizes<M, N>::NKC, manifold_static_sum<M, N>{p, false});
    exec(1, manifold_static_backward<M, N>{p, rule, K});
  }
}

template <int M, int N, class S, bool Dynamic, class Exec>
void manifold_backward_width(const Exec& exec, const S* H, index_t ldH, const S* dX, index_t ldX, const S* dC,
                             index_t ldC, S* dH, index_t ldD, const manifold_state_ptrs& p, const manifold_rule& rule,
                             int K) {
  exec(p.T * manifold_sizes<M, N>::NA, manifold_width_coefficient_gradient<M, N, S>{H, ldH, dX, ldX, dC, ldC, p});
  if constexpr (Dynamic) {
    exec(p.lanes, manifold_token_backward<M, N>{p, rule, K});
  } else {
    exec(manifold_sizes<M, N>::NKC, manifold_static_sum<M, N>{p, true});
    exec(1, manifold_static_backward<M, N>{p, rule, K});
  }
  exec(p.T * p.db, manifold_width_backward<M, N, S, Dynamic>{H, ldH, dX, ldX, dC, ldC, dH, ldD, p, K});
  if constexpr (Dynamic) exec(index_t(K) + 3 + index_t(N) * p.db * K, manifold_dynamic_parameter_gradient<S>{H, ldH, p, K});
}

/// `step(i)` for every `i < count`, a grid-stride loop.
template <class Step>
__global__ void manifold_step_kernel(Step step, index_t count) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += index_t(gridDim.x) * blockDim.x)
    step(i);
}

/// The device executor of the steps: one kernel launch per step on `policy`'s stream.
struct device_steps {
  cudaStream_t stream;
  template <class Step>
  void operator()(index_t count, const Step& step) const {
    if (count <= 0) return;
    constexpr int threads = 128;
    const index_t blocks = std::min<index_t>(ceil_div(count, threads), 65535);
    manifold_step_kernel<Step><<<unsigned(blocks), threads, 0, stream>>>(step, count);
    VWN_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace detail

/// Parameters (or gradients) of a device manifold GHC, float, one allocation: the tensors of
/// `vwn::manifold_tensors` (names, shapes, order, weight decay), each row-major as on the host.
template <int M, int N, bool Dynamic, bool Permutations>
class manifold_device_parameters {
 public:
  /// Carry logits and logits per token.
  static constexpr int R = carry_logits(Permutations, N), K = 2 * N * M + R;

  /// Parameters for block width `db` (uninitialised).
  explicit manifold_device_parameters(index_t db) : db_(db) {
    buf_.resize(std::size_t(K + (Dynamic ? index_t(N) * db * K + 3 : 0)));
  }

  float* bias() { return buf_.data(); }
  const float* bias() const { return buf_.data(); }
  float* phi() { return Dynamic ? buf_.data() + K : nullptr; }
  const float* phi() const { return Dynamic ? buf_.data() + K : nullptr; }
  float* gate() { return Dynamic ? buf_.data() + K + index_t(N) * db_ * K : nullptr; }
  const float* gate() const { return Dynamic ? buf_.data() + K + index_t(N) * db_ * K : nullptr; }

  /// Visits `f(name, device_data, size, weight_decay)` for each tensor, in the order of `vwn::manifold_tensors`.
  template <class F>
  void visit(F&& f) {
    float* data[5] = {bias(), bias() + N * M, bias() + 2 * N * M, phi(), gate()};
    int i = 0;
    for (const tensor_spec& t : specs()) f(t.name, data[i++], t.size(), t.decay);
  }

  /// Sets every entry to zero (asynchronous on `policy`'s stream).
  void set_zero(const device_t& policy) { buf_.fill_bytes(policy, 0); }

  /// Copies the host tensors in (converted to float). Synchronous.
  template <class Scalar>
  void upload(const device_t& policy, const vwn::manifold_parameters<M, N, Scalar, Dynamic, Permutations>& host) {
    for_pairs(const_cast<vwn::manifold_parameters<M, N, Scalar, Dynamic, Permutations>&>(host),  // only read
              [&](Scalar* h, float* d, index_t n) { upload_floats(policy, h, n, d); });
  }
  /// Copies the tensors out into the host structure (which must have the same sizes). Synchronous.
  template <class Scalar>
  void download(const device_t& policy, vwn::manifold_parameters<M, N, Scalar, Dynamic, Permutations>& host) const {
    const_cast<manifold_device_parameters*>(this)->for_pairs(
        host, [&](Scalar* h, float* d, index_t n) { download_floats(policy, d, n, h); });
  }

 private:
  auto specs() const { return vwn::manifold_tensors<M, N, Dynamic, Permutations>(db_); }

  template <class HostParams, class F>
  void for_pairs(HostParams& host, F&& f) {
    std::vector<std::pair<float*, index_t>> mine;
    visit([&](std::string_view, float* d, index_t n, bool) { mine.emplace_back(d, n); });
    std::size_t i = 0;
    host.visit([&](std::string_view name, auto* h, index_t n, bool) {
      if (i >= mine.size() || mine[i].second != n)
        vwn::detail::fail("vwn::cuda::manifold_device_parameters", std::string(name) + " size",
                          i < mine.size() ? std::to_string(mine[i].second) : "none", std::to_string(n));
      f(h, mine[i].first, n);
      ++i;
    });
  }

  index_t db_;
  device_buffer<float> buf_;
};

/// Device-side saved state of a manifold GHC between its forward and backward calls, and the steps' scratch.
/// Buffers grow on demand and are kept between calls.
struct manifold_device_workspace {
  index_t tokens = 0;              ///< T of the last forward_width
  device_buffer<float> r;          ///< dynamic: `T` inverse RMS
  device_buffer<float> q;          ///< dynamic: `T x K` normalised projections
  device_buffer<float> ab;         ///< `T x n(2m+n)` coefficients (dynamic), `n(2m+n)` (static)
  device_buffer<float> dB;         ///< `T x n m` gradient of each token's `b` (from backward_depth)
  device_buffer<float> da;         ///< `T x n(m+n)` gradient of each token's `a`
  device_buffer<float> dz;         ///< dynamic: `T x K` gradient of the logits
  device_buffer<float> dS;         ///< dynamic: `T x K` gradient of the raw projection
  device_buffer<float> tok;        ///< dynamic: `T x 4` gate gradients and RMS term
  device_buffer<float> sum;        ///< static: the summed coefficient gradient
  device_buffer<float> scratch;    ///< the per-token steps' scratch
};

/// A GHC of a manifold-constrained family `Connection` on the device, storage `S` (`float` or `bf16`): the calls,
/// shapes and parameters of the host `vwn::basic_ghc<M, N, float, Dynamic, Connection>` (`<vwn/mhc.hpp>`), with
/// `device_t` and device views; parameter gradients accumulate into `grads`. Use the aliases:
/// `vwn::cuda::dghc<1, 4, float, vwn::mhc_connection>`. Outputs must not overlap inputs (except `H_out` = `C`
/// exactly, in place).
template <int M, int N, class S, bool Dynamic, class Connection>
  requires(Connection::manifold)
class basic_ghc<M, N, S, Dynamic, Connection> : public widths<M, N> {
  static_assert(is_storage<S>, "vwn::cuda: storage type S must be float or vwn::cuda::bf16");
  static_assert(N <= Connection::max_n,
                "vwn: mHC-lite mixes all n! permutation matrices and is offered for n <= 5 (120 of them)");
  static constexpr bool P = Connection::rule.permutations;

 public:
  using shape = width_shape<M, N>;
  using storage = S;
  using connection = Connection;
  using parameters = manifold_device_parameters<M, N, Dynamic, P>;
  using workspace = manifold_device_workspace;
  /// The host layer of the same shape and family (float), e.g. for initialisation and checks.
  using host_type = vwn::basic_ghc<M, N, float, Dynamic, Connection>;
  static constexpr bool is_dynamic = Dynamic;
  /// Logits per token.
  static constexpr int logits = parameters::K;

  parameters params;  ///< the parameters (float), initialised as on the host
  parameters grads;   ///< accumulated gradients (float)

  /// A sub-layer for backbone width `D` (a positive multiple of `M`), `iterations` Sinkhorn iterations (the family's
  /// 20 by default; ignored by mHC-lite), initialised as the host layer. Synchronous.
  explicit basic_ghc(index_t D, int iterations = Connection::rule.iterations, const device_t& policy = device)
      : widths<M, N>(name() + "::basic_ghc", D), params(this->db_), grads(this->db_), rule_(rule_of(iterations)) {
    if (!P && iterations < 1)
      vwn::detail::fail(name(), "Sinkhorn iterations", "at least 1", std::to_string(iterations));
    if (wide_width() > INT_MAX)
      vwn::detail::fail(name(), "over-width D'", "at most " + std::to_string(INT_MAX), std::to_string(wide_width()));
    reset_parameters(policy);
    zero_grad(policy);
    policy.synchronize();
  }

  /// Library name with shape, storage and family, e.g. "vwn::cuda::dghc<1,4,float,mhc>".
  static std::string name() {
    return std::string(Dynamic ? "vwn::cuda::dghc<" : "vwn::cuda::ghc<") + std::to_string(M) + "," +
           std::to_string(N) + "," + detail::storage_info<S>::name() + "," + std::string(Connection::name) + ">";
  }

  /// The projection rule (Sinkhorn's iterations and epsilons, the maps).
  const manifold_rule& rule() const { return rule_; }

  /// The host layer's initialisation. Synchronous.
  void reset_parameters(const device_t& policy = device) {
    const host_type h(D_, P ? Connection::rule.iterations : rule_.iterations);
    params.upload(policy, h.params);
  }
  /// Clears the accumulated gradients (asynchronous).
  void zero_grad(const device_t& policy = device) { grads.set_zero(policy); }

  /// Width connection, forward: `H` (`T x D'`) -> `X` (`T x D`), `C` (`T x D'`), saving the coefficients.
  void forward_width(const device_t& policy, device_matrix_cref<S> H, device_matrix_ref<S> X, device_matrix_ref<S> C,
                     workspace& ws) const {
    const index_t T = checks(name() + "::forward_width").forward_width(H, X, C);
    ws.tokens = 0;  // replaced below: until the steps are queued, the workspace holds no saved state
    constexpr int NKC = detail::manifold_sizes<M, N>::NKC;
    ws.ab.resize(std::size_t(Dynamic ? T * NKC : NKC));
    if constexpr (Dynamic) {
      ws.r.resize(std::size_t(T));
      ws.q.resize(std::size_t(T * K));
    }
    const detail::manifold_state_ptrs p = pointers(ws, T);
    detail::manifold_forward_width<M, N, S, Dynamic>(detail::device_steps{policy.stream()}, H.data(), H.outerStride(),
                                                      X.data(), X.outerStride(), C.data(), C.outerStride(), p, rule_, K);
    ws.tokens = T;
  }

  /// Depth connection, forward: `H_out = b Z + C` (`Z`: `T x D`). `H_out` may be `C` itself.
  void forward_depth(const device_t& policy, device_matrix_cref<S> Z, device_matrix_cref<S> C,
                     device_matrix_ref<S> H_out, const workspace& ws) const {
    checks(name() + "::forward_depth").forward_depth(ws.tokens, Z, C, H_out);
    const detail::manifold_state_ptrs p = pointers(const_cast<workspace&>(ws), ws.tokens);  // reads only
    detail::manifold_forward_depth<M, N, S, Dynamic>(detail::device_steps{policy.stream()}, Z.data(), Z.outerStride(),
                                                      C.data(), C.outerStride(), H_out.data(), H_out.outerStride(), p);
  }

  /// Depth connection, backward: `dZ = b^T dH_out`; accumulates the gradient of `b_post` (static) or keeps each
  /// token's `d b` in `ws` (dynamic). The gradient of `C` is `dH_out`.
  void backward_depth(const device_t& policy, device_matrix_cref<S> dH_out, device_matrix_cref<S> Z,
                      device_matrix_ref<S> dZ, workspace& ws) {
    checks(name() + "::backward_depth").backward_depth(ws.tokens, dH_out, Z, dZ);
    const index_t T = ws.tokens;
    ws.dB.resize(std::size_t(T * N * M));
    const detail::manifold_state_ptrs p = pointers(ws, T);
    detail::manifold_backward_depth<M, N, S, Dynamic>(detail::device_steps{policy.stream()}, dH_out.data(),
                                                       dH_out.outerStride(), Z.data(), Z.outerStride(), dZ.data(),
                                                       dZ.outerStride(), p, rule_, K);
  }

  /// Width connection, backward: `dH` from `dX` and the total gradient `dC` of the carried state; accumulates every
  /// parameter gradient (through the maps, the carry's projection recomputed from the logits, and, dynamic, the
  /// projection and the token's RMS).
  void backward_width(const device_t& policy, device_matrix_cref<S> H, device_matrix_cref<S> dX,
                      device_matrix_cref<S> dC, device_matrix_ref<S> dH, workspace& ws) {
    const std::string where = name() + "::backward_width";
    checks(where).backward_width(ws.tokens, H, dX, dC, dH);
    const index_t T = ws.tokens;
    if (Dynamic && ws.dB.size() < std::size_t(T * N * M))
      vwn::detail::fail(where, "workspace", "one filled by backward_depth", "no saved d b");
    ws.da.resize(std::size_t(T * N * (M + N)));
    if constexpr (Dynamic) {
      ws.dz.resize(std::size_t(T * K));
      ws.dS.resize(std::size_t(T * K));
      ws.tok.resize(std::size_t(T * 4));
    }
    const detail::manifold_state_ptrs p = pointers(ws, T);
    detail::manifold_backward_width<M, N, S, Dynamic>(detail::device_steps{policy.stream()}, H.data(), H.outerStride(),
                                                       dX.data(), dX.outerStride(), dC.data(), dC.outerStride(),
                                                       dH.data(), dH.outerStride(), p, rule_, K);
  }

  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;

 private:
  static constexpr int K = parameters::K;

  vwn::detail::ghc_checks checks(const std::string& where) const { return {where, D_, wide_width()}; }

  // The family's rule with `iterations` Sinkhorn iterations (mHC-lite has none).
  static manifold_rule rule_of(int iterations) {
    manifold_rule r = Connection::rule;
    if (!r.permutations) r.iterations = iterations;
    return r;
  }

  // The steps' pointers over the parameters, gradients and `ws` (its scratch and static sum sized here).
  detail::manifold_state_ptrs pointers(workspace& ws, index_t T) const {
    auto& self = const_cast<basic_ghc&>(*this);  // the gradients are written by the backward calls only
    const int lanes = Dynamic ? detail::manifold_lanes(T) : 1;
    const int lane_floats = detail::manifold_sizes<M, N>::token_floats(rule_, K);
    ws.scratch.resize(std::size_t(lanes) * std::size_t(lane_floats));
    if constexpr (!Dynamic) ws.sum.resize(std::size_t(detail::manifold_sizes<M, N>::NKC));
    detail::manifold_state_ptrs p;
    p.bias = params.bias();
    p.phi = params.phi();
    p.gate = params.gate();
    p.dbias = self.grads.bias();
    p.dphi = self.grads.phi();
    p.dgate = self.grads.gate();
    p.r = ws.r.data();
    p.q = ws.q.data();
    p.ab = ws.ab.data();
    p.dB = ws.dB.data();
    p.da = ws.da.data();
    p.dz = ws.dz.data();
    p.dS = ws.dS.data();
    p.tok = ws.tok.data();
    p.sum = ws.sum.data();
    p.scratch = ws.scratch.data();
    p.lanes = lanes;
    p.lane_floats = lane_floats;
    p.db = int(db_);
    p.T = T;
    return p;
  }

  manifold_rule rule_;
  using widths<M, N>::D_;
  using widths<M, N>::db_;
};

}  // namespace vwn::cuda
