#pragma once
/// \file ghc.cuh
/// Generalized Hyper-Connections (GHC) and Dynamic GHC (DGHC) on the device, with the same calls as the host
/// `vwn::basic_ghc` (see ghc.hpp for the math and docs/math.md for the backward):
/// ```
///   vwn::cuda::dghc<2, 3, vwn::cuda::bf16> layer(D);
///   layer.forward_width(vwn::cuda::device.on(s), H, X, C, ws);   // one kernel: RMSNorm, projection, tanh, mixing
///   layer.forward_depth(vwn::cuda::device.on(s), Z, C, H_out, ws);
///   layer.backward_depth(vwn::cuda::device.on(s), dH_out, Z, dZ, ws);
///   layer.backward_width(vwn::cuda::device.on(s), H, dX, dC, dH, ws);
/// ```
/// Activations are stored as `S` (`float` or `bf16`) and accumulated in float; parameters, gradients and the
/// saved state are float. Parameters mirror the host layout tensor by tensor, so `params.upload(policy,
/// host_layer.params)` and `grads.download(policy, host_layer.grads)` copy them across.

#include <climits>
#include <string>
#include <type_traits>
#include <vector>

#include <vwn/core/connection.hpp>
#include <vwn/ghc.hpp>

#include "detail/kernels.cuh"
#include "detail/staged_width.cuh"
#include "memory.hpp"

namespace vwn::cuda {

namespace detail {

// Loads an `rows x chunk` tile of a token's slots (`rows` slots of `db` values from `src`), columns d0 ..,
// zero beyond the block width.
template <class S>
__device__ __forceinline__ void load_tile(float* tile, const S* src, int rows, int db, int d0, int cols, int tid) {
  for (int e = tid; e < rows * chunk; e += block_threads) {
    const int j = e / chunk, c = e % chunk;
    tile[j * tile_ld + c] = c < cols ? to_float(src[j * db + d0 + c]) : 0.f;
  }
}

// The `N x chunk` tile of the normalised slots `Hn_j = H_j r_j g` of one token (math::rms_forward), zero beyond db.
template <int N, class S>
__device__ __forceinline__ void load_normalised_tile(float* tile, const S* src, const float* r, const float* g, int db,
                                                     int d0, int cols, int tid) {
  for (int e = tid; e < N * chunk; e += block_threads) {
    const int j = e / chunk, c = e % chunk;
    float v = 0.f;
    if (c < cols) vwn::math::rms_forward(to_float(src[j * db + d0 + c]), r[j], g[d0 + c], v);
    tile[j * tile_ld + c] = v;
  }
}

// The `(m+n) x chunk` tile of [dX; dC] of one token.
template <int M, int N, class S>
__device__ __forceinline__ void load_mix_tile(float* tile, const S* dXt, const S* dCt, int db, int d0, int cols,
                                              int tid) {
  load_tile(tile, dXt, M, db, d0, cols, tid);
  load_tile(tile + M * tile_ld, dCt, N, db, d0, cols, tid);
}

// The `(2m+n) x chunk` tile of [W_alpha | W_beta]^T (zero beyond db).
template <int M, int N>
__device__ __forceinline__ void load_projection_tile(float* tile, const ghc_param_ptrs& p, int d0, int cols, int tid) {
  constexpr int K = 2 * M + N;
  for (int e = tid; e < K * chunk; e += block_threads) {
    const int c = e / K, k = e % K, d = d0 + c;  // k fastest: consecutive threads read a row of W
    float w = 0.f;
    if (c < cols) w = k < M + N ? p.W_alpha[d * (M + N) + k] : p.W_beta[d * M + (k - M - N)];
    tile[k * tile_ld + c] = w;
  }
}

// Per-slot inverse RMS of one token (math::inverse_rms), a warp per slot, into r[0 .. N).
template <int N, class S>
__device__ __forceinline__ void slot_inverse_rms(const S* Ht, int db, float* r, int tid) {
  constexpr int warps = block_threads / 32;
  const int lane = tid & 31, warp = tid >> 5;
  for (int j = warp; j < N; j += warps) {  // uniform over the warp
    float s = 0.f;
    for (int d = lane; d < db; d += 32) {
      const float x = to_float(Ht[j * db + d]);
      s = fmaf(x, x, s);
    }
    s = warp_sum(s);
    if (lane == 0) r[j] = vwn::math::inverse_rms(s, float(db));
  }
}

// Width mixing of one token (math::mix_row for every row and column): X = mix[0:m], C = mix[m:m+n], with
// mix = a^T H and a(j, i) = coef[j * ld + i].
template <int M, int N, class S>
__device__ __forceinline__ void mix_token(const S* Ht, S* Xt, S* Ct, const float* coef, int ld, int db, int tid) {
  const coefficient_block a{coef, ld};
  for (int d = tid; d < db; d += block_threads) {
    float h[N];
#pragma unroll
    for (int j = 0; j < N; ++j) h[j] = to_float(Ht[j * db + d]);
    const auto slot = [&](int j) { return h[j]; };
    for (int i = 0; i < M + N; ++i) {
      float s;
      vwn::math::mix_row<N>(a, i, slot, s);
      (i < M ? Xt + i * db : Ct + (i - M) * db)[d] = from_float<S>(s);
    }
  }
}

template <int M, int N>
struct dghc_forward_width_smem {
  static constexpr int K = 2 * M + N;
  static constexpr std::size_t floats = std::size_t(N + K) * tile_ld + tile_dot<N, K>::scratch + N;
  static constexpr std::size_t bytes = floats * sizeof(float);
};

// Dynamic width connection, one kernel: per token, the per-slot inverse RMS, the projection Q = Hn W over
// shared-memory tiles of the normalised slots, P = tanh(Q / sqrt(db)), [a | b] = S . P + [alpha | beta], then
// the mixing. Saves rstd (T n), Q and P (T n x (2m+n) each).
template <int M, int N, class S>
__global__ void __launch_bounds__(block_threads)
    dghc_forward_width_kernel(const S* __restrict__ H, index_t ldH, S* __restrict__ X, index_t ldX,
                              S* __restrict__ C, index_t ldC, ghc_param_ptrs p, int db, index_t T,
                              float* __restrict__ rstd, float* __restrict__ P, float* __restrict__ Qsaved) {
  constexpr int K = 2 * M + N, NK = N * K;
  using dot = tile_dot<N, K>;
  extern __shared__ float smem[];
  float* Hs = smem;                 // N x chunk of Hn
  float* Ws = Hs + N * tile_ld;     // K x chunk of W^T
  float* red = Ws + K * tile_ld;    // dot scratch; then Q; then [a | b]
  float* rs = red + dot::scratch;   // N inverse RMS
  const int tid = int(threadIdx.x);
  const float inv_tau = vwn::math::inverse_tau(float(db));
  for (index_t t = blockIdx.x; t < T; t += gridDim.x) {
    const S* Ht = H + t * ldH;
    slot_inverse_rms<N>(Ht, db, rs, tid);
    __syncthreads();
    dot acc(tid);
    for (int d0 = 0; d0 < db; d0 += chunk) {
      const int cols = min(chunk, db - d0);
      load_normalised_tile<N>(Hs, Ht, rs, p.g, db, d0, cols, tid);
      load_projection_tile<M, N>(Ws, p, d0, cols, tid);
      __syncthreads();
      acc.add(Hs, Ws, cols);
      __syncthreads();
    }
    acc.reduce(red, tid);  // synchronises
    for (int o = tid; o < NK; o += block_threads) {
      const int j = o / K, k = o % K;
      float pk;
      vwn::math::projection(red[o], inv_tau, pk);
      Qsaved[t * NK + o] = red[o];
      P[t * NK + o] = pk;
      if (k == 0) rstd[t * N + j] = rs[j];
      vwn::math::coefficients(pair_entry<M, N>(p.S_alpha, p.S_beta, j, k), pk, pair_entry<M, N>(p.alpha, p.beta, j, k),
                              red[o]);
    }
    __syncthreads();
    mix_token<M, N>(Ht, X + t * ldX, C + t * ldC, red, K, db, tid);
    __syncthreads();  // red and rs are rewritten by the next token
  }
}

// Static width connection: the mixing with a = alpha for every token.
template <int M, int N, class S>
__global__ void __launch_bounds__(block_threads)
    ghc_forward_width_kernel(const S* __restrict__ H, index_t ldH, S* __restrict__ X, index_t ldX,
                             S* __restrict__ C, index_t ldC, const float* __restrict__ alpha, int db, index_t T) {
  __shared__ float a[N * (M + N)];
  const int tid = int(threadIdx.x);
  for (int o = tid; o < N * (M + N); o += block_threads) a[o] = alpha[o];
  __syncthreads();
  for (index_t t = blockIdx.x; t < T; t += gridDim.x) mix_token<M, N>(H + t * ldH, X + t * ldX, C + t * ldC, a, M + N, db, tid);
}

// b of one token into shared memory: beta (static), or S_beta . P[:, m+n:] + beta (math::coefficients).
template <int M, int N, bool Dynamic>
__device__ __forceinline__ void load_depth_coefficients(float* b, const ghc_param_ptrs& p, const float* Pt, int tid) {
  constexpr int K = 2 * M + N;
  for (int o = tid; o < N * M; o += block_threads) {
    if constexpr (Dynamic)
      vwn::math::coefficients(p.S_beta[o], Pt[(o / M) * K + (M + N) + o % M], p.beta[o], b[o]);
    else
      b[o] = p.beta[o];
  }
}

// Depth connection, one kernel: H_out = b Z + C per slot (math::depth_slot).
// H_out may be C itself: each element is read and then written by the same thread.
template <int M, int N, class S, bool Dynamic>
__global__ void __launch_bounds__(block_threads)
    ghc_forward_depth_kernel(const S* __restrict__ Z, index_t ldZ, const S* C, index_t ldC, S* Hout, index_t ldO,
                             ghc_param_ptrs p, const float* __restrict__ P, int db, index_t T) {
  constexpr int K = 2 * M + N;
  __shared__ float b[N * M];
  const int tid = int(threadIdx.x);
  const coefficient_block bc{b, M};
  if constexpr (!Dynamic) {
    load_depth_coefficients<M, N, false>(b, p, nullptr, tid);
    __syncthreads();
  }
  for (index_t t = blockIdx.x; t < T; t += gridDim.x) {
    if constexpr (Dynamic) {
      load_depth_coefficients<M, N, true>(b, p, P + t * N * K, tid);
      __syncthreads();
    }
    const S* Zt = Z + t * ldZ;
    const S* Ct = C + t * ldC;
    S* Ot = Hout + t * ldO;
    for (int d = tid; d < db; d += block_threads) {
      float z[M];
#pragma unroll
      for (int k = 0; k < M; ++k) z[k] = to_float(Zt[k * db + d]);
      const auto segment = [&](int k) { return z[k]; };
      for (int j = 0; j < N; ++j) {
        float acc, out;
        vwn::math::depth_slot<M>(bc, j, segment, to_float(Ct[j * db + d]), acc, out);
        Ot[j * db + d] = from_float<S>(out);
      }
    }
    if constexpr (Dynamic) __syncthreads();  // b is rewritten by the next token
  }
}

template <int M, int N>
struct ghc_backward_depth_smem {
  static constexpr std::size_t floats = std::size_t(N + M) * tile_ld + tile_dot<N, M>::scratch + N * M;
  static constexpr std::size_t bytes = floats * sizeof(float);
};

// Depth connection, backward: dZ = b^T dH_out (math::depth_backward_segment) and the per-token d b = dH_out Z^T
// (saved for the dynamic backward, or summed into per-block partials of d beta for the static one).
template <int M, int N, class S, bool Dynamic>
__global__ void __launch_bounds__(block_threads)
    ghc_backward_depth_kernel(const S* __restrict__ G, index_t ldG, const S* __restrict__ Z, index_t ldZ,
                              S* __restrict__ dZ, index_t ldDZ, ghc_param_ptrs p, const float* __restrict__ P,
                              float* __restrict__ dB, float* __restrict__ partial, int db, index_t T) {
  constexpr int K = 2 * M + N, NM = N * M;
  using dot = tile_dot<N, M>;
  extern __shared__ float smem[];
  float* Gs = smem;               // N x chunk of dH_out
  float* Zs = Gs + N * tile_ld;   // M x chunk of Z
  float* red = Zs + M * tile_ld;  // dot scratch
  float* b = red + dot::scratch;  // N x M
  const int tid = int(threadIdx.x);
  const coefficient_block bc{b, M};
  block_partial<NM> dbeta;
  if constexpr (!Dynamic) {
    load_depth_coefficients<M, N, false>(b, p, nullptr, tid);
    __syncthreads();
  }
  for (index_t t = blockIdx.x; t < T; t += gridDim.x) {
    if constexpr (Dynamic) load_depth_coefficients<M, N, true>(b, p, P + t * N * K, tid);
    dot acc(tid);
    for (int d0 = 0; d0 < db; d0 += chunk) {
      const int cols = min(chunk, db - d0);
      load_tile(Gs, G + t * ldG, N, db, d0, cols, tid);
      load_tile(Zs, Z + t * ldZ, M, db, d0, cols, tid);
      __syncthreads();
      acc.add(Gs, Zs, cols);
      for (int e = tid; e < M * chunk; e += block_threads) {
        const int k = e / chunk, c = e % chunk;
        if (c < cols) {
          float s;
          vwn::math::depth_backward_segment<N>(bc, k, tile_column{Gs, c}, s);
          dZ[t * ldDZ + k * db + d0 + c] = from_float<S>(s);
        }
      }
      __syncthreads();
    }
    acc.reduce(red, tid);
    if constexpr (Dynamic) {
      for (int o = tid; o < NM; o += block_threads) dB[t * NM + o] = red[o];
    } else {
      dbeta.add(red, tid);
    }
    __syncthreads();  // red and b are rewritten by the next token
  }
  if constexpr (!Dynamic) dbeta.store(partial + std::size_t(blockIdx.x) * NM, tid);
}

template <int M, int N>
struct ghc_backward_width_smem {
  static constexpr std::size_t floats = std::size_t(N + M + N) * tile_ld + tile_dot<N, M + N>::scratch + N * (M + N);
  static constexpr std::size_t bytes = floats * sizeof(float);
};

// Static width connection, backward: dH = alpha [dX; dC] (math::mix_width_backward) and per-block partials of
// d alpha = H [dX; dC]^T.
template <int M, int N, class S>
__global__ void __launch_bounds__(block_threads)
    ghc_backward_width_kernel(const S* __restrict__ H, index_t ldH, const S* __restrict__ dX, index_t ldX,
                              const S* __restrict__ dC, index_t ldC, S* __restrict__ dH, index_t ldDH,
                              const float* __restrict__ alpha, float* __restrict__ partial, int db, index_t T) {
  constexpr int R = M + N, NR = N * R;
  using dot = tile_dot<N, R>;
  extern __shared__ float smem[];
  float* Hs = smem;               // N x chunk
  float* Gs = Hs + N * tile_ld;   // (m+n) x chunk of [dX; dC]
  float* red = Gs + R * tile_ld;  // dot scratch
  float* a = red + dot::scratch;  // N x (m+n)
  const int tid = int(threadIdx.x);
  for (int o = tid; o < NR; o += block_threads) a[o] = alpha[o];
  __syncthreads();
  const coefficient_block ac{a, R};
  block_partial<NR> dalpha;
  for (index_t t = blockIdx.x; t < T; t += gridDim.x) {
    dot acc(tid);
    for (int d0 = 0; d0 < db; d0 += chunk) {
      const int cols = min(chunk, db - d0);
      load_tile(Hs, H + t * ldH, N, db, d0, cols, tid);
      load_mix_tile<M, N>(Gs, dX + t * ldX, dC + t * ldC, db, d0, cols, tid);
      __syncthreads();
      acc.add(Hs, Gs, cols);
      for (int e = tid; e < N * chunk; e += block_threads) {
        const int j = e / chunk, c = e % chunk;
        if (c < cols) {
          float s;
          vwn::math::mix_width_backward<M, N>(ac, j, tile_column{Gs, c}, s);
          dH[t * ldDH + j * db + d0 + c] = from_float<S>(s);
        }
      }
      __syncthreads();
    }
    acc.reduce(red, tid);
    dalpha.add(red, tid);
    __syncthreads();
  }
  dalpha.store(partial + std::size_t(blockIdx.x) * NR, tid);
}

template <int M, int N>
struct dghc_backward_width_smem {
  static constexpr int R = M + N, K = 2 * M + N;
  static constexpr int red = tile_dot<N, R>::scratch;
  static constexpr std::size_t floats = std::size_t(N + R + K) * tile_ld + red + N * K + 2 * N + chunk;
  static constexpr std::size_t bytes = floats * sizeof(float);
};

// Dynamic width connection, backward, per token in one kernel and three sweeps over the slot width:
//  A: d a = H [dX; dC]^T; then d[alpha|beta] and dS partials, dQ = math::projection_backward (saved);
//  B: proj_j = mean_d(dHn g u) with dHn = math::projection_input_backward, u = math::rms_unit;
//  C: dH = math::mix_width_backward + math::rms_backward.
// The projection and norm-weight gradients (sums over tokens) are left to dghc_projection_grad_kernel.
template <int M, int N, class S>
__global__ void __launch_bounds__(block_threads)
    dghc_backward_width_kernel(const S* __restrict__ H, index_t ldH, const S* __restrict__ dX, index_t ldX,
                               const S* __restrict__ dC, index_t ldC, S* __restrict__ dH, index_t ldDH,
                               ghc_param_ptrs p, const float* __restrict__ P, const float* __restrict__ rstd,
                               const float* __restrict__ dB, float* __restrict__ dQ, float* __restrict__ partial,
                               int db, index_t T) {
  constexpr int R = M + N, K = 2 * M + N, NK = N * K, NR = N * R;
  constexpr int warps = block_threads / 32, slots_per_warp = (N + warps - 1) / warps;
  constexpr int per_thread = (NK + block_threads - 1) / block_threads;
  using dot = tile_dot<N, R>;
  extern __shared__ float smem[];
  float* Hs = smem;                 // N x chunk
  float* Gs = Hs + N * tile_ld;     // (m+n) x chunk of [dX; dC]
  float* Ws = Gs + R * tile_ld;     // (2m+n) x chunk of [W_alpha | W_beta]^T
  float* red = Ws + K * tile_ld;    // dot scratch, then a (N x (m+n))
  float* dq = red + dot::scratch;   // N x K
  float* rs = dq + NK;              // N
  float* proj = rs + N;             // N
  float* gc = proj + N;             // chunk of g
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const float inv_tau = vwn::math::inverse_tau(float(db));
  const coefficient_block ac{red, R}, dqc{dq, K};
  float d_static[per_thread], d_scale[per_thread];
#pragma unroll
  for (int i = 0; i < per_thread; ++i) d_static[i] = d_scale[i] = 0.f;

  for (index_t t = blockIdx.x; t < T; t += gridDim.x) {
    const S* Ht = H + t * ldH;
    const S* dXt = dX + t * ldX;
    const S* dCt = dC + t * ldC;
    if (tid < N) rs[tid] = rstd[t * N + tid];
    // Sweep A: d a.
    dot acc(tid);
    for (int d0 = 0; d0 < db; d0 += chunk) {
      const int cols = min(chunk, db - d0);
      load_tile(Hs, Ht, N, db, d0, cols, tid);
      load_mix_tile<M, N>(Gs, dXt, dCt, db, d0, cols, tid);
      __syncthreads();
      acc.add(Hs, Gs, cols);
      __syncthreads();
    }
    acc.reduce(red, tid);
#pragma unroll
    for (int i = 0; i < per_thread; ++i) {
      const int o = tid + i * block_threads;
      if (o < NK) {
        const int j = o / K, k = o % K;
        const float dab = k < R ? red[j * R + k] : dB[t * N * M + j * M + (k - R)];
        const float pk = P[t * NK + o];
        d_static[i] += dab;
        d_scale[i] = fmaf(dab, pk, d_scale[i]);
        float q;
        vwn::math::projection_backward(dab, pair_entry<M, N>(p.S_alpha, p.S_beta, j, k), pk, inv_tau, q);
        dq[o] = q;
        dQ[t * NK + o] = q;
      }
    }
    __syncthreads();
    for (int o = tid; o < NR; o += block_threads)  // a = S_alpha . P[:, :m+n] + alpha, into red
      vwn::math::coefficients(p.S_alpha[o], P[t * NK + (o / R) * K + o % R], p.alpha[o], red[o]);
    // Sweep B: proj.
    float pp[slots_per_warp];
#pragma unroll
    for (int i = 0; i < slots_per_warp; ++i) pp[i] = 0.f;
    for (int d0 = 0; d0 < db; d0 += chunk) {
      const int cols = min(chunk, db - d0);
      load_tile(Hs, Ht, N, db, d0, cols, tid);
      load_projection_tile<M, N>(Ws, p, d0, cols, tid);
      if (tid < chunk) gc[tid] = tid < cols ? p.g[d0 + tid] : 0.f;
      __syncthreads();
      for (int e = tid; e < N * chunk; e += block_threads) {
        const int j = e / chunk, c = e % chunk;
        float dhn, u;
        vwn::math::projection_input_backward<M, N>(dqc, j, tile_column{Ws, c}, dhn);
        vwn::math::rms_unit(Hs[j * tile_ld + c], rs[j], u);
        Hs[j * tile_ld + c] = dhn * gc[c] * u;  // dHn g u; zero in the padding (Hs = 0 there)
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < slots_per_warp; ++i) {
        const int j = warp + i * warps;
        if (j < N) pp[i] += Hs[j * tile_ld + lane];
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < slots_per_warp; ++i) {
      const int j = warp + i * warps;
      if (j < N) {
        const float s = warp_sum(pp[i]);
        if (lane == 0) proj[j] = vwn::math::mean_of(s, float(db));
      }
    }
    __syncthreads();
    // Sweep C: dH.
    for (int d0 = 0; d0 < db; d0 += chunk) {
      const int cols = min(chunk, db - d0);
      load_tile(Hs, Ht, N, db, d0, cols, tid);
      load_mix_tile<M, N>(Gs, dXt, dCt, db, d0, cols, tid);
      load_projection_tile<M, N>(Ws, p, d0, cols, tid);
      if (tid < chunk) gc[tid] = tid < cols ? p.g[d0 + tid] : 0.f;
      __syncthreads();
      for (int e = tid; e < N * chunk; e += block_threads) {
        const int j = e / chunk, c = e % chunk;
        if (c < cols) {
          float dh, dhn, u;
          vwn::math::mix_width_backward<M, N>(ac, j, tile_column{Gs, c}, dh);
          vwn::math::projection_input_backward<M, N>(dqc, j, tile_column{Ws, c}, dhn);
          vwn::math::rms_unit(Hs[j * tile_ld + c], rs[j], u);
          vwn::math::rms_backward<true>(dhn * gc[c], u, proj[j], rs[j], dh);
          dH[t * ldDH + j * db + d0 + c] = from_float<S>(dh);
        }
      }
      __syncthreads();
    }
  }
  float* out = partial + std::size_t(blockIdx.x) * 2 * NK;
#pragma unroll
  for (int i = 0; i < per_thread; ++i) {
    const int o = tid + i * block_threads;
    if (o < NK) out[o] = d_static[i], out[NK + o] = d_scale[i];
  }
}

/// Threads per block of the column reductions over tokens.
inline constexpr int column_threads = 128;

// Projection gradient, first pass: for a group of tokens and one column d of the slot width,
// A[k][d] = sum_{t in group, j} dQ[t][j][k] u[t][j][d] (u = math::rms_unit). Then d W[d][k] = g[d] A[k][d] and
// d g[d] = sum_k W[d][k] A[k][d] (dghc_projection_grad_finish). One thread's work (column d, group grp; also run
// on the host by the tests):
template <int M, int N, class S>
VWN_HOST_DEVICE void projection_grad_column(const S* H, index_t ldH, const float* rstd, const float* dQ,
                                            float* partial, int db, index_t T, int groups, int d, int grp) {
  constexpr int K = 2 * M + N;
  const index_t t0 = T * grp / groups, t1 = T * (grp + 1) / groups;
  float acc[K];
  VWN_UNROLL
  for (int k = 0; k < K; ++k) acc[k] = 0.f;
  for (index_t t = t0; t < t1; ++t)
    for (int j = 0; j < N; ++j) {
      float u;
      vwn::math::rms_unit(to_float(H[t * ldH + j * db + d]), rstd[t * N + j], u);
      const float* q = dQ + (t * N + j) * K;  // the same address in every thread: a broadcast
      VWN_UNROLL
      for (int k = 0; k < K; ++k) acc[k] = fmaf(q[k], u, acc[k]);
    }
  VWN_UNROLL
  for (int k = 0; k < K; ++k) partial[(std::size_t(grp) * K + k) * std::size_t(db) + d] = acc[k];
}

template <int M, int N, class S>
__global__ void __launch_bounds__(column_threads)
    dghc_projection_grad_kernel(const S* __restrict__ H, index_t ldH, const float* __restrict__ rstd,
                                const float* __restrict__ dQ, float* __restrict__ partial, int db, index_t T,
                                int groups) {
  const int d = int(blockIdx.x) * column_threads + int(threadIdx.x), grp = int(blockIdx.y);
  if (d < db) projection_grad_column<M, N>(H, ldH, rstd, dQ, partial, db, T, groups, d, grp);
}

// Projection gradient, last pass: sums the `groups` rows of partials in order into A[k][d] and adds d W_alpha,
// d W_beta and d g. The backward passes it A already summed over the token groups (groups = 1), one thread per
// entry of A (sum_partials), so that this pass, one thread per column, reads K values. One thread's work (column d):
template <int M, int N>
VWN_HOST_DEVICE void projection_grad_finish_column(const float* partial, int groups, int db, const ghc_param_ptrs& p,
                                                   float* dW_alpha, float* dW_beta, float* dg, int d) {
  constexpr int R = M + N, K = 2 * M + N;
  const float gd = p.g[d];
  float dgs = 0.f;
  for (int k = 0; k < K; ++k) {
    float a = 0.f;
    for (int grp = 0; grp < groups; ++grp) a += partial[(std::size_t(grp) * K + k) * std::size_t(db) + d];
    if (k < R) {
      dW_alpha[d * R + k] += gd * a;
      dgs = fmaf(p.W_alpha[d * R + k], a, dgs);
    } else {
      dW_beta[d * M + (k - R)] += gd * a;
      dgs = fmaf(p.W_beta[d * M + (k - R)], a, dgs);
    }
  }
  dg[d] += dgs;
}

template <int M, int N>
__global__ void dghc_projection_grad_finish(const float* __restrict__ partial, int groups, int db, ghc_param_ptrs p,
                                            float* __restrict__ dW_alpha, float* __restrict__ dW_beta,
                                            float* __restrict__ dg) {
  const int d = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (d < db) projection_grad_finish_column<M, N>(partial, groups, db, p, dW_alpha, dW_beta, dg, d);
}

// Targets of the per-block partials of the dynamic width backward: [d alpha | d beta] then [dS_alpha | dS_beta].
template <int M, int N>
struct dghc_coefficient_target {
  float *alpha, *beta, *S_alpha, *S_beta;
  VWN_HOST_DEVICE float* operator()(int e) const {
    constexpr int K = 2 * M + N;
    const bool scale = e >= N * K;
    const int o = scale ? e - N * K : e, j = o / K, k = o % K;
    if (k < M + N) return (scale ? S_alpha : alpha) + j * (M + N) + k;
    return (scale ? S_beta : beta) + j * M + (k - M - N);
  }
};

}  // namespace detail

/// Parameters (or gradients) of a device GHC, float, one allocation; the tensors are those of
/// `vwn::ghc_tensors` (names, shapes, order, weight decay), each row-major as on the host.
template <int M, int N, bool Dynamic>
class ghc_device_parameters {
 public:
  /// Parameters for block width `db` (uninitialised).
  explicit ghc_device_parameters(index_t db) : db_(db) { buf_.resize(std::size_t(offset(count))); }

  float* alpha() { return at(0); }
  float* beta() { return at(1); }
  float* W_alpha() { return Dynamic ? at(2) : nullptr; }
  float* W_beta() { return Dynamic ? at(3) : nullptr; }
  float* S_alpha() { return Dynamic ? at(4) : nullptr; }
  float* S_beta() { return Dynamic ? at(5) : nullptr; }
  float* g() { return Dynamic ? at(6) : nullptr; }

  /// Device pointers for the kernels.
  detail::ghc_param_ptrs pointers() const {
    auto* self = const_cast<ghc_device_parameters*>(this);
    return {self->alpha(), self->beta(), self->W_alpha(), self->W_beta(), self->S_alpha(), self->S_beta(), self->g()};
  }

  /// Visits `f(name, device_data, size, weight_decay)` for each tensor, in the order of `vwn::ghc_tensors`.
  template <class F>
  void visit(F&& f) {
    int i = 0;
    for (const tensor_spec& t : specs()) f(t.name, at(i++), t.size(), t.decay);
  }

  /// Sets every entry to zero (asynchronous on `policy`'s stream).
  void set_zero(const device_t& policy) { buf_.fill_bytes(policy, 0); }

  /// Copies the host tensors in (converted to float). Synchronous.
  template <class Scalar>
  void upload(const device_t& policy, const vwn::ghc_parameters<M, N, Scalar, Dynamic>& host) {
    for_pairs(const_cast<vwn::ghc_parameters<M, N, Scalar, Dynamic>&>(host),  // visit only reads here
              [&](Scalar* h, float* d, index_t n) { upload_floats(policy, h, n, d); });
  }
  /// Copies the tensors out into the host structure (which must have the same sizes). Synchronous.
  template <class Scalar>
  void download(const device_t& policy, vwn::ghc_parameters<M, N, Scalar, Dynamic>& host) const {
    const_cast<ghc_device_parameters*>(this)->for_pairs(
        host, [&](Scalar* h, float* d, index_t n) { download_floats(policy, d, n, h); });
  }

 private:
  static constexpr int count = int(vwn::ghc_tensors<M, N, Dynamic>(0).size());
  auto specs() const { return vwn::ghc_tensors<M, N, Dynamic>(db_); }
  index_t offset(int i) const {
    index_t o = 0;
    for (int k = 0; k < i; ++k) o += specs()[std::size_t(k)].size();
    return o;
  }
  float* at(int i) { return buf_.data() + offset(i); }

  template <class HostParams, class F>
  void for_pairs(HostParams& host, F&& f) {
    const auto mine = specs();
    std::size_t i = 0;
    host.visit([&](std::string_view name, auto* h, index_t n, bool) {
      if (i >= mine.size() || mine[i].size() != n || mine[i].name != name)
        vwn::detail::fail("vwn::cuda::ghc_device_parameters", std::string(name) + " size",
                          i < mine.size() ? std::string(mine[i].name) + " of " + std::to_string(mine[i].size()) : "none",
                          std::to_string(n));
      f(h, at(int(i)), n);
      ++i;
    });
  }

  index_t db_;
  device_buffer<float> buf_;
};

/// Device-side saved state of one GHC sub-layer between its forward and backward calls, plus scratch for the
/// gradient reductions. Buffers grow on demand and are kept between calls.
template <int M, int N, bool Dynamic>
struct ghc_device_workspace {
  index_t tokens = 0;                      ///< T of the last forward_width
  device_buffer<float> rstd;               ///< dynamic: `T n` per-slot 1/rms
  device_buffer<float> P;                  ///< dynamic: `T n x (2m+n)` tanh outputs
  device_buffer<float> Q;                  ///< dynamic: `T n x (2m+n)` projections before the tanh
  device_buffer<float> dB;                 ///< dynamic: `T n x m` gradient of each token's b
  device_buffer<float> dQ;                 ///< dynamic: `T n x (2m+n)` gradient before tanh
  device_buffer<float> partial;            ///< per-block gradient partials
  device_buffer<float> column_partial;     ///< dynamic: per-group partials of the projection gradient
  device_buffer<float> gw;                 ///< dynamic: `(2m+n) x db` projection weight with g folded in (staged)
};

/// The kernel of a GHC's width connection. Forward: `staged` copies each token's `n x db` slab of `H` into shared
/// memory once and reads it there for the norm, the projection and the mixing (DRAM traffic: `H` once, `X` and
/// `C` once); `tiled` reads `H` from global memory in 32-column tiles, twice for a dynamic GHC (projection, then
/// mixing), and needs little shared memory. Backward of a dynamic GHC: `staged` stages the slabs of `H`, `dX`
/// and `dC` and reads each once; `tiled` sweeps them three times. `automatic` takes `staged` where its shared
/// memory fits a block of the device, else `tiled`. Both give the same results up to float rounding of sums.
enum class width_kernel { automatic, staged, tiled };

/// A GHC sub-layer of compile-time shape `(M, N)` on the device, storage `S` (`float` or `bf16`), static or
/// dynamic, of connection family `Connection` (`vwn_connection`, the VWN paper's coefficients, here; the
/// manifold-constrained families are the specialisation of <vwn/cuda/mhc.cuh>). Use the aliases `vwn::cuda::ghc`
/// and `vwn::cuda::dghc`. Same calls and shapes as the host `vwn::basic_ghc`, with `device_t` and device views;
/// parameter gradients accumulate into `grads`. Outputs must not overlap inputs (except `H_out` = `C` exactly, in
/// place). Row strides are free; the slots of one row are contiguous.
template <int M, int N, class S, bool Dynamic, class Connection = vwn_connection>
class basic_ghc : public widths<M, N> {
  static_assert(is_storage<S>, "vwn::cuda: storage type S must be float or vwn::cuda::bf16");
  static_assert(std::is_same_v<Connection, vwn_connection>,
                "vwn::cuda::basic_ghc: the manifold families are in <vwn/cuda/mhc.cuh>");

 public:
  using shape = width_shape<M, N>;
  using storage = S;
  using parameters = ghc_device_parameters<M, N, Dynamic>;
  using workspace = ghc_device_workspace<M, N, Dynamic>;
  /// The host layer of the same shape (float), e.g. for initialisation and checks.
  using host_type = vwn::basic_ghc<M, N, float, Dynamic>;
  static constexpr bool is_dynamic = Dynamic;

  parameters params;  ///< the parameters (float), initialised as on the host
  parameters grads;   ///< accumulated gradients (float)

  /// A sub-layer for backbone width `D` (a positive multiple of `M`), initialised per the paper.
  /// Allocates device memory on the current device. Synchronous: the parameters and the cleared gradients are in
  /// place when it returns, so later work may go to any stream.
  explicit basic_ghc(index_t D, const device_t& policy = device)
      : widths<M, N>(name() + "::basic_ghc", D), params(this->db_), grads(this->db_) {
    if (wide_width() > INT_MAX)
      vwn::detail::fail(name(), "over-width D'", "at most " + std::to_string(INT_MAX), std::to_string(wide_width()));
    reset_parameters(policy);
    zero_grad(policy);
    policy.synchronize();
  }

  /// Library name with shape and storage, e.g. "vwn::cuda::dghc<2,3,bf16>".
  static std::string name() {
    return std::string(Dynamic ? "vwn::cuda::dghc<" : "vwn::cuda::ghc<") + std::to_string(M) + "," +
           std::to_string(N) + "," + detail::storage_info<S>::name() + ">";
  }

  /// The paper's initialisation (as `vwn::basic_ghc::reset_parameters`). Synchronous.
  void reset_parameters(const device_t& policy = device) {
    const host_type h(D_);
    params.upload(policy, h.params);
  }
  /// Clears the accumulated gradients (asynchronous).
  void zero_grad(const device_t& policy = device) { grads.set_zero(policy); }

  /// Width connection, forward: `H` (`T x D'`) -> `X` (`T x D`) and `C` (`T x D'`). One kernel (the staged one
  /// of a dynamic GHC after a small one that folds `g` into the projection weight); `kernel` chooses it.
  void forward_width(const device_t& policy, device_matrix_cref<S> H, device_matrix_ref<S> X,
                     device_matrix_ref<S> C, workspace& ws, width_kernel kernel = width_kernel::automatic) const {
    const std::string where = name() + "::forward_width";
    const index_t T = checks(where).forward_width(H, X, C);
    ws.tokens = 0;  // the saved state is replaced below: until the launch is queued, the workspace holds none
    const std::size_t staged_bytes = detail::staged_width_layout<M, N, S, Dynamic>::bytes(int(db_));
    kernel = choose(kernel, staged_bytes, where);
    if constexpr (Dynamic) {
      ws.rstd.resize(std::size_t(T * N));
      ws.P.resize(std::size_t(T * N * K));
      ws.Q.resize(std::size_t(T * N * K));
    }
    const unsigned blocks = detail::token_blocks(T);
    if (kernel != width_kernel::tiled) {
      if constexpr (Dynamic) fold_weight(policy, ws);
      const detail::staged_width_args<S> args{
          H.data(), H.outerStride(), X.data(), X.outerStride(), C.data(), C.outerStride(), params.pointers(),
          Dynamic ? ws.gw.data() : nullptr, int(db_), T, Dynamic ? ws.rstd.data() : nullptr,
          Dynamic ? ws.P.data() : nullptr, Dynamic ? ws.Q.data() : nullptr,
          detail::staged_width_vector<S>(int(db_), {{H.data(), H.outerStride()}, {X.data(), X.outerStride()},
                                                    {C.data(), C.outerStride()}})};
      const auto staged = detail::staged_width_kernel<M, N, S, Dynamic>;
      detail::allow_shared_memory(staged, staged_bytes, where.c_str());
      staged<<<blocks, detail::block_threads, staged_bytes, policy.stream()>>>(args);
    } else if constexpr (Dynamic) {
      constexpr std::size_t smem = detail::dghc_forward_width_smem<M, N>::bytes;
      const auto kernel = detail::dghc_forward_width_kernel<M, N, S>;
      detail::allow_shared_memory(kernel, smem, where.c_str());
      kernel<<<blocks, detail::block_threads, smem, policy.stream()>>>(
          H.data(), H.outerStride(), X.data(), X.outerStride(), C.data(), C.outerStride(), params.pointers(),
          int(db_), T, ws.rstd.data(), ws.P.data(), ws.Q.data());
    } else {
      detail::ghc_forward_width_kernel<M, N, S><<<blocks, detail::block_threads, 0, policy.stream()>>>(
          H.data(), H.outerStride(), X.data(), X.outerStride(), C.data(), C.outerStride(),
          params.pointers().alpha, int(db_), T);
    }
    VWN_CUDA_CHECK_LAUNCH();
    ws.tokens = T;
  }

  /// Depth connection, forward: `H_out = b Z + C` (`Z`: `T x D`). `H_out` may be `C` itself. One kernel.
  void forward_depth(const device_t& policy, device_matrix_cref<S> Z, device_matrix_cref<S> C,
                     device_matrix_ref<S> H_out, const workspace& ws) const {
    const std::string where = name() + "::forward_depth";
    checks(where).forward_depth(ws.tokens, Z, C, H_out);  // H_out may be C exactly: each element is read first
    const index_t T = ws.tokens;
    detail::ghc_forward_depth_kernel<M, N, S, Dynamic>
        <<<detail::token_blocks(T), detail::block_threads, 0, policy.stream()>>>(
            Z.data(), Z.outerStride(), C.data(), C.outerStride(), H_out.data(), H_out.outerStride(),
            params.pointers(), Dynamic ? ws.P.data() : nullptr, int(db_), T);
    VWN_CUDA_CHECK_LAUNCH();
  }

  /// Depth connection, backward: `dZ = b^T dH_out` (`T x D`); accumulates d beta (static) or keeps each
  /// token's d b in `ws` (dynamic). The gradient of `C` is `dH_out`.
  void backward_depth(const device_t& policy, device_matrix_cref<S> dH_out, device_matrix_cref<S> Z,
                      device_matrix_ref<S> dZ, workspace& ws) {
    const std::string where = name() + "::backward_depth";
    checks(where).backward_depth(ws.tokens, dH_out, Z, dZ);
    const index_t T = ws.tokens;
    const unsigned blocks = detail::token_blocks(T);
    if constexpr (Dynamic)
      ws.dB.resize(std::size_t(T * N * M));
    else
      ws.partial.resize(std::size_t(blocks) * N * M);
    constexpr std::size_t smem = detail::ghc_backward_depth_smem<M, N>::bytes;
    const auto kernel = detail::ghc_backward_depth_kernel<M, N, S, Dynamic>;
    detail::allow_shared_memory(kernel, smem, where.c_str());
    kernel<<<blocks, detail::block_threads, smem, policy.stream()>>>(
        dH_out.data(), dH_out.outerStride(), Z.data(), Z.outerStride(), dZ.data(), dZ.outerStride(),
        params.pointers(), Dynamic ? ws.P.data() : nullptr, Dynamic ? ws.dB.data() : nullptr,
        Dynamic ? nullptr : ws.partial.data(), int(db_), T);
    VWN_CUDA_CHECK_LAUNCH();
    if constexpr (!Dynamic)
      detail::sum_partials(policy.stream(), ws.partial.data(), blocks, N * M, detail::plain_target{grads.beta()});
  }

  /// Width connection, backward: from `dX` (`T x D`) and the total gradient `dC` of the carried state
  /// (`T x D'`), writes `dH` (`T x D'`) and accumulates every parameter gradient. Dynamic GHC: `kernel` chooses
  /// between the staged kernel (the three inputs' slabs in shared memory, each read from DRAM once) and the tiled
  /// one (three sweeps over them), as for `forward_width`; then the column passes of the projection gradient.
  void backward_width(const device_t& policy, device_matrix_cref<S> H, device_matrix_cref<S> dX,
                      device_matrix_cref<S> dC, device_matrix_ref<S> dH, workspace& ws,
                      width_kernel kernel = width_kernel::automatic) {
    const std::string where = name() + "::backward_width";
    checks(where).backward_width(ws.tokens, H, dX, dC, dH);
    const index_t T = ws.tokens;
    const unsigned blocks = detail::token_blocks(T);
    if constexpr (Dynamic) {
      if (ws.dB.size() < std::size_t(T * N * M))
        vwn::detail::fail(where, "workspace", "one filled by backward_depth", "no saved d b");
      const std::size_t staged_bytes = detail::staged_backward_layout<M, N, S>::bytes(int(db_));
      kernel = choose(kernel, staged_bytes, where);
      ws.dQ.resize(std::size_t(T * N * K));
      ws.partial.resize(std::size_t(blocks) * 2 * N * K);
      if (kernel != width_kernel::tiled) {
        fold_weight(policy, ws);
        const detail::staged_backward_args<S> args{
            H.data(), H.outerStride(), dX.data(), dX.outerStride(), dC.data(), dC.outerStride(), dH.data(),
            dH.outerStride(), params.pointers(), ws.gw.data(), int(db_), T, ws.P.data(), ws.Q.data(),
            ws.rstd.data(), ws.dB.data(), ws.dQ.data(), ws.partial.data(),
            detail::staged_width_vector<S>(int(db_), {{H.data(), H.outerStride()}, {dX.data(), dX.outerStride()},
                                                      {dC.data(), dC.outerStride()}, {dH.data(), dH.outerStride()}})};
        const auto staged = detail::staged_width_backward_kernel<M, N, S>;
        detail::allow_shared_memory(staged, staged_bytes, where.c_str());
        staged<<<blocks, detail::block_threads, staged_bytes, policy.stream()>>>(args);
      } else {
        constexpr std::size_t smem = detail::dghc_backward_width_smem<M, N>::bytes;
        const auto tiled = detail::dghc_backward_width_kernel<M, N, S>;
        detail::allow_shared_memory(tiled, smem, where.c_str());
        tiled<<<blocks, detail::block_threads, smem, policy.stream()>>>(
            H.data(), H.outerStride(), dX.data(), dX.outerStride(), dC.data(), dC.outerStride(), dH.data(),
            dH.outerStride(), params.pointers(), ws.P.data(), ws.rstd.data(), ws.dB.data(), ws.dQ.data(),
            ws.partial.data(), int(db_), T);
      }
      VWN_CUDA_CHECK_LAUNCH();
      detail::sum_partials(policy.stream(), ws.partial.data(), blocks, 2 * N * K,
                           detail::dghc_coefficient_target<M, N>{grads.alpha(), grads.beta(), grads.S_alpha(),
                                                                grads.S_beta()});
      // The column pass over token groups, then the groups summed in order into A (K x db, after the groups'
      // partials), one thread per entry, then the gradients from A.
      const index_t column_blocks = detail::ceil_div(db_, detail::column_threads), KD = K * db_;
      const unsigned groups = detail::token_groups(T, column_blocks);
      ws.column_partial.resize(std::size_t((index_t(groups) + 1) * KD));
      float* A = ws.column_partial.data() + std::size_t(index_t(groups) * KD);
      const dim3 grid(unsigned(column_blocks), groups);
      detail::dghc_projection_grad_kernel<M, N, S><<<grid, detail::column_threads, 0, policy.stream()>>>(
          H.data(), H.outerStride(), ws.rstd.data(), ws.dQ.data(), ws.column_partial.data(), int(db_), T,
          int(groups));
      VWN_CUDA_CHECK_LAUNCH();
      VWN_CUDA_CHECK(cudaMemsetAsync(A, 0, std::size_t(KD) * sizeof(float), policy.stream()));
      detail::sum_partials(policy.stream(), ws.column_partial.data(), groups, int(KD), detail::plain_target{A});
      detail::dghc_projection_grad_finish<M, N><<<unsigned(column_blocks), detail::column_threads, 0, policy.stream()>>>(
          A, 1, int(db_), params.pointers(), grads.W_alpha(), grads.W_beta(), grads.g());
      VWN_CUDA_CHECK_LAUNCH();
    } else {
      ws.partial.resize(std::size_t(blocks) * N * (M + N));
      constexpr std::size_t smem = detail::ghc_backward_width_smem<M, N>::bytes;
      const auto kernel = detail::ghc_backward_width_kernel<M, N, S>;
      detail::allow_shared_memory(kernel, smem, where.c_str());
      kernel<<<blocks, detail::block_threads, smem, policy.stream()>>>(
          H.data(), H.outerStride(), dX.data(), dX.outerStride(), dC.data(), dC.outerStride(), dH.data(),
          dH.outerStride(), params.pointers().alpha, ws.partial.data(), int(db_), T);
      VWN_CUDA_CHECK_LAUNCH();
      detail::sum_partials(policy.stream(), ws.partial.data(), blocks, N * (M + N),
                           detail::plain_target{grads.alpha()});
    }
  }

 private:
  static constexpr int K = 2 * M + N;

  vwn::detail::ghc_checks checks(const std::string& where) const { return {where, D_, wide_width()}; }

  // The kernel a call runs: `staged` where its `staged_bytes` of shared memory fit a block of the current device
  // (asked for and not fitting: an error), else `tiled`.
  width_kernel choose(width_kernel kernel, std::size_t staged_bytes, const std::string& where) const {
    if (kernel == width_kernel::tiled) return kernel;
    const std::size_t limit = detail::shared_memory_optin();
    if (staged_bytes <= limit) return width_kernel::staged;
    if (kernel == width_kernel::staged)
      vwn::detail::fail(where, "shared memory of the staged kernel",
                        "at most " + std::to_string(limit) + " bytes (the device's limit per block)",
                        std::to_string(staged_bytes) + " bytes (slot width " + std::to_string(db_) + ")");
    return width_kernel::tiled;
  }

  // The folded projection weight `g . [W_alpha | W_beta]` into `ws.gw` (asynchronous).
  void fold_weight(const device_t& policy, workspace& ws) const {
    ws.gw.resize(std::size_t(K) * std::size_t(db_));
    detail::fold_weight_kernel<M, N><<<unsigned(detail::ceil_div(K * db_, 256)), 256, 0, policy.stream()>>>(
        params.pointers(), ws.gw.data(), int(db_));
    VWN_CUDA_CHECK_LAUNCH();
  }

  using widths<M, N>::D_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

/// Static GHC on the device (of family `Connection`, <vwn/core/connection.hpp>).
template <int M, int N, class S = float, class Connection = vwn_connection>
using ghc = basic_ghc<M, N, S, false, Connection>;
/// Dynamic GHC on the device (of family `Connection`).
template <int M, int N, class S = float, class Connection = vwn_connection>
using dghc = basic_ghc<M, N, S, true, Connection>;

}  // namespace vwn::cuda
