#pragma once
// The staged width connection of a GHC sub-layer. Forward: each block copies one token's `n x db` slab of `H`
// into shared memory (16-byte loads where the layout allows), and everything else of the token reads it there:
// the per-slot sums of squares and the projection onto `g . W` (prepared once per call, `fold_weight_kernel`),
// the tanh and the coefficients, then the mixing into `X` and `C`. Each byte of `H` crosses DRAM once. Backward
// (dynamic): the slabs of `H`, `dX` and `dC` are staged the same way and each read from DRAM once.
//
// The body is written once for two executors of a block: the device (`device_block`: each thread runs a phase,
// then all meet at a barrier) and the host (`host_block`: one thread runs the phase for every thread index in
// turn, then the next phase). The threads of one phase only read what earlier phases wrote and write disjoint
// locations, so both give the same result bit for bit; the tests run the host one on any machine
// (tests/cuda/test_ghc_emulated.cu), and the device one where a GPU is.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <type_traits>

#include <vwn/math/ghc.hpp>
#include <vwn/math/norm.hpp>

#include "kernels.cuh"

namespace vwn::cuda::detail {

/// Pointers to the parameters of one GHC (the dynamic ones are null for a static GHC).
struct ghc_param_ptrs {
  const float *alpha, *beta, *W_alpha, *W_beta, *S_alpha, *S_beta, *g;
};

/// Entry (j, k) of an `n x (2m+n)` block stored as an `n x (m+n)` and an `n x m` tensor side by side.
template <int M, int N>
VWN_HOST_DEVICE float pair_entry(const float* a, const float* b, int j, int k) {
  return k < M + N ? a[j * (M + N) + k] : b[j * M + (k - M - N)];
}

/// The threads of one block on the device: `phase(f)` runs `f(threadIdx.x)`, then waits for the whole block.
struct device_block {
  __device__ __forceinline__ index_t index() const { return index_t(blockIdx.x); }
  __device__ __forceinline__ index_t count() const { return index_t(gridDim.x); }
  template <class F>
  __device__ __forceinline__ void phase(F&& f) const {
    f(int(threadIdx.x));
    __syncthreads();
  }
};

/// The threads of block `block` of `blocks` on the host: `phase(f)` runs `f(tid)` for every thread index in turn.
struct host_block {
  index_t block, blocks;
  index_t index() const { return block; }
  index_t count() const { return blocks; }
  template <class F>
  void phase(F&& f) const {
    for (int tid = 0; tid < block_threads; ++tid) f(tid);
  }
};

/// Copies 16 bytes between 16-byte aligned addresses (one vector load and store on the device).
VWN_HOST_DEVICE void copy16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__)
  *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
#else
  std::memcpy(dst, src, 16);
#endif
}

/// The bits of a stored value, as an unsigned integer (no type punning: `__float_as_uint`, `__bfloat16_as_ushort`).
VWN_HOST_DEVICE unsigned stored_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  unsigned u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}
/// The bits of a stored value, as an unsigned integer (no type punning: `__float_as_uint`, `__bfloat16_as_ushort`).
VWN_HOST_DEVICE unsigned stored_bits(bf16 x) { return unsigned(__bfloat16_as_ushort(x)); }

/// Four values rounded to `S` and packed into one vector, element 0 in the lowest bytes (the order of memory on a
/// little-endian machine): a `uint4` for float, a `uint2` for bf16. Built from the values' bits, so no array of
/// `S` is ever read through a vector type.
template <class S>
VWN_HOST_DEVICE auto pack4(const float (&v)[4]) {
  if constexpr (sizeof(S) == 4) {
    return uint4{stored_bits(from_float<S>(v[0])), stored_bits(from_float<S>(v[1])), stored_bits(from_float<S>(v[2])),
                 stored_bits(from_float<S>(v[3]))};
  } else {
    static_assert(sizeof(S) == 2, "storage of 4 or 2 bytes");
    return uint2{stored_bits(from_float<S>(v[0])) | stored_bits(from_float<S>(v[1])) << 16,
                 stored_bits(from_float<S>(v[2])) | stored_bits(from_float<S>(v[3])) << 16};
  }
}

/// Stores four values of `S` at an address aligned to four of them (one 16- or 8-byte store on the device).
template <class S>
VWN_HOST_DEVICE void store4(S* dst, const float (&v)[4]) {
  const auto packed = pack4<S>(v);
  using vector = std::remove_const_t<decltype(packed)>;
  static_assert(sizeof(vector) == 4 * sizeof(S));
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<vector*>(dst) = packed;
#else
  std::memcpy(static_cast<void*>(dst), &packed, sizeof(packed));
#endif
}

/// Register tiling of the staged projection (`R x Kc` products over the slab's columns): each thread owns a
/// `tj x tk` tile (at most 32 accumulators) and `parts` threads share a tile, each taking every `parts`-th column.
/// The shape is the one with the fewest instructions per column over the block: `tiles (tj + tk)` loads plus
/// `tiles tj tk` FMAs, the padding of partial tiles included; among equals, the fewer accumulators.
__host__ __device__ constexpr tile_plan plan_staged_tiles(int R, int Kc) {
  tile_plan best{0, 0, 0, 0, 0};
  int best_cost = 0;
  for (int tj = 1; tj <= R && tj <= 32; ++tj)
    for (int tk = 1; tk <= Kc && tj * tk <= 32; ++tk) {
      const int tiles_k = (Kc + tk - 1) / tk, tiles = ((R + tj - 1) / tj) * tiles_k;
      if (tiles > block_threads) continue;
      const int cost = tiles * (tj + tk + tj * tk);
      if (best.tiles == 0 || cost < best_cost || (cost == best_cost && tj * tk < best.tj * best.tk)) {
        best = {tj, tk, tiles_k, tiles, block_threads / tiles};
        best_cost = cost;
      }
    }
  return best;
}

/// Per-thread state of a block that lives across phases (registers on the device): `local[tid]` is thread
/// `tid`'s value.
template <class T>
struct device_local {
  T value;
  VWN_HOST_DEVICE T& operator[](int) { return value; }
};
/// Per-thread state of a block on the host: one value per thread index.
template <class T>
struct host_local {
  std::unique_ptr<T[]> owner = std::make_unique<T[]>(block_threads);
  T* values = owner.get();
  VWN_HOST_DEVICE T& operator[](int tid) const { return values[tid]; }
};
template <class T>
__device__ __forceinline__ device_local<T> make_local(const device_block&) {
  return {};
}
template <class T>
host_local<T> make_local(const host_block&) {
  return {};
}

/// Sums over the `Parts` rows of `E` per-part partial sums, at `scratch` (`Parts x E`), in up to two levels of
/// fixed order: `sub` interleaved subsets summed side by side (enough to use the block; where `sub > 1`), then
/// the subsets' sums; with one part the partials are the totals. Totals at `scratch + total_offset`.
template <int Parts, int E>
struct part_sums {
  static constexpr int sub = (block_threads / E < 1) ? 1 : (block_threads / E < Parts ? block_threads / E : Parts);
  static constexpr int second_offset = Parts * E;
  static constexpr int total_offset = Parts > 1 ? second_offset + (sub > 1 ? sub * E : 0) : 0;
  /// Floats of scratch: partials, second level and totals.
  static constexpr int floats = Parts > 1 ? total_offset + E : Parts * E;

  /// The phases of the sums (every thread of the block calls it).
  VWN_GENERIC template <class Block>
  __host__ __device__ static void run(const Block& block, float* scratch) {
    if constexpr (sub > 1)
      block.phase([&](int tid) {
        for (int w = tid; w < sub * E; w += block_threads) {
          const int s = w / E, e = w % E;
          float acc = 0.f;
          for (int q = s; q < Parts; q += sub) acc += scratch[q * E + e];
          scratch[second_offset + s * E + e] = acc;
        }
      });
    if constexpr (Parts > 1)
      block.phase([&](int tid) {
        const float* in = scratch + (sub > 1 ? second_offset : 0);
        constexpr int rows = sub > 1 ? sub : Parts;
        for (int e = tid; e < E; e += block_threads) {
          float acc = in[e];
          for (int s = 1; s < rows; ++s) acc += in[s * E + e];
          scratch[total_offset + e] = acc;
        }
      });
  }
};

/// Phase body: thread `tid`'s share of the register-tiled products `sum_d a(r, d) b(k, d)` (`r < R`, `k < Kc`)
/// over the columns `d = part, part + parts, ... < db`, into `partial[part E + r Kc + k]` (plan_staged_tiles);
/// with `Squares`, also `sum_d a(r, d)^2` into `partial[part E + R Kc + r]` (by the tiles of column 0).
/// `E = R Kc (+ R)`.
template <int R, int Kc, bool Squares, class A, class B>
VWN_HOST_DEVICE void tiled_products(int tid, const A& a, const B& b, int db, float* partial) {
  constexpr tile_plan plan = plan_staged_tiles(R, Kc);
  constexpr int E = R * Kc + (Squares ? R : 0);
  const int tile = tid % plan.tiles, part = tid / plan.tiles;
  if (part >= plan.parts) return;
  const int r0 = (tile / plan.tiles_k) * plan.tj, k0 = (tile % plan.tiles_k) * plan.tk;
  float acc[plan.tj][plan.tk], sq[plan.tj];
  VWN_UNROLL
  for (int u = 0; u < plan.tj; ++u) {
    sq[u] = 0.f;
    VWN_UNROLL
    for (int v = 0; v < plan.tk; ++v) acc[u][v] = 0.f;
  }
  for (int d = part; d < db; d += plan.parts) {
    float x[plan.tj], w[plan.tk];
    VWN_UNROLL
    for (int u = 0; u < plan.tj; ++u) x[u] = r0 + u < R ? a(r0 + u, d) : 0.f;
    VWN_UNROLL
    for (int v = 0; v < plan.tk; ++v) w[v] = k0 + v < Kc ? b(k0 + v, d) : 0.f;
    VWN_UNROLL
    for (int u = 0; u < plan.tj; ++u) {
      if constexpr (Squares) sq[u] = fmaf(x[u], x[u], sq[u]);
      VWN_UNROLL
      for (int v = 0; v < plan.tk; ++v) acc[u][v] = fmaf(x[u], w[v], acc[u][v]);
    }
  }
  float* out = partial + part * E;
  VWN_UNROLL
  for (int u = 0; u < plan.tj; ++u) {
    if (r0 + u >= R) continue;
    VWN_UNROLL
    for (int v = 0; v < plan.tk; ++v)
      if (k0 + v < Kc) out[(r0 + u) * Kc + k0 + v] = acc[u][v];
    if constexpr (Squares)
      if (k0 == 0) out[R * Kc + r0 + u] = sq[u];
  }
}

/// Phase body: thread `tid`'s share of copying `count` values from `src` to `dst` (16 bytes at a time with
/// `vector`, both then 16-byte aligned; the tail value by value).
template <class S>
VWN_HOST_DEVICE void copy_values(S* dst, const S* src, index_t count, bool vector, int tid) {
  index_t first = 0;
  if (vector) {
    constexpr int per = 16 / int(sizeof(S));
    const index_t units = count / per;
    for (index_t u = tid; u < units; u += block_threads) copy16(dst + u * per, src + u * per);
    first = units * per;
  }
  for (index_t e = first + tid; e < count; e += block_threads) dst[e] = src[e];
}

/// Bytes of `values` values of `S` in shared memory, rounded up to 16 (the next array stays 16-byte aligned).
template <class S>
VWN_HOST_DEVICE std::size_t slab_bytes(index_t values) {
  return (std::size_t(values) * sizeof(S) + 15) / 16 * 16;
}

/// Shared-memory layout of the staged width connection (forward) of shape `(M, N)`, storage `S`: the slab
/// (`N db` values of `S`), then, dynamic: the sums of the projection (`part_sums` over `E = N K + N`: the products,
/// then the sums of squares) and the coefficients (`N x K`); static: the coefficients alpha (`N x (M+N)`).
template <int M, int N, class S, bool Dynamic>
struct staged_width_layout {
  static constexpr int K = 2 * M + N, NK = N * K;
  static constexpr tile_plan plan = plan_staged_tiles(N, K);
  static_assert(plan.tiles > 0, "vwn: staged projection tile too large for one block");
  static constexpr int E = NK + N;  ///< sums per token: the N x K products, then the N sums of squares
  using sums = part_sums<plan.parts, E>;
  static constexpr int scratch_floats = Dynamic ? sums::floats + NK : N * (M + N);

  /// Bytes of the slab, rounded up to 16.
  VWN_HOST_DEVICE static std::size_t slab_bytes(int db) { return detail::slab_bytes<S>(index_t(N) * db); }
  /// Bytes of dynamic shared memory a block needs at slot width `db`.
  VWN_HOST_DEVICE static std::size_t bytes(int db) { return slab_bytes(db) + std::size_t(scratch_floats) * sizeof(float); }
};

/// Arguments of the staged width connection. `gw` (dynamic) is the folded projection weight, `K x db`
/// (`fold_weight_kernel`); `rstd`, `P`, `Q` receive the saved state; `vector`: 16-byte copies and 4-value stores
/// (`staged_width_vector`).
template <class S>
struct staged_width_args {
  const S* H;
  index_t ldH;
  S* X;
  index_t ldX;
  S* C;
  index_t ldC;
  ghc_param_ptrs p;
  const float* gw;
  int db;
  index_t T;
  float* rstd;
  float* P;
  float* Q;
  bool vector;
};

/// One row-major operand of a staged kernel: its base address and row stride in elements.
struct staged_rows {
  const void* data;
  index_t ld;
};

/// Whether a staged kernel may use 16-byte copies and 4-value stores: every base address 16-byte aligned, every
/// row stride a multiple of 16 bytes, and the slot width a multiple of 4.
template <class S>
inline bool staged_width_vector(int db, std::initializer_list<staged_rows> operands) {
  if (db % 4 != 0) return false;
  for (const staged_rows& o : operands)
    if (reinterpret_cast<std::uintptr_t>(o.data) % 16 != 0 || (std::size_t(o.ld) * sizeof(S)) % 16 != 0) return false;
  return true;
}

/// Entry `e` (= k db + d) of the folded projection weight `gw` (`K x db`): `g[d] [W_alpha | W_beta](d, k)`.
template <int M, int N>
VWN_HOST_DEVICE void fold_weight_entry(const ghc_param_ptrs& p, float* gw, int db, index_t e) {
  const int k = int(e / db), d = int(e % db);
  const float w = k < M + N ? p.W_alpha[d * (M + N) + k] : p.W_beta[d * M + (k - M - N)];
  vwn::math::folded_weight(p.g[d], w, gw[e]);
}

/// Prepares the folded projection weight of a dynamic GHC (`(2m+n) x db` entries).
template <int M, int N>
__global__ void fold_weight_kernel(ghc_param_ptrs p, float* __restrict__ gw, int db) {
  const index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < index_t(2 * M + N) * db) fold_weight_entry<M, N>(p, gw, db, e);
}

/// Phase body: thread `tid`'s share of four-column groups of `rows` rows of `db` values, `f(i, d0, v)` giving
/// row `i`'s values at columns `d0 .. d0+3` (a column past `db` repeats `d0` and is never stored), stored at
/// `row(i) + d0` (one 4-value store with `vector`).
template <class S, class Row, class F>
VWN_HOST_DEVICE void store_rows(int tid, int rows, int db, bool vector, const Row& row, const F& f) {
  const int groups = (db + 3) / 4;
  for (int e = tid; e < rows * groups; e += block_threads) {
    const int i = e / groups, d0 = (e % groups) * 4;
    float v[4];
    f(i, d0, v);
    S* out = row(i) + d0;
    if (vector) {
      store4(out, v);
    } else {
      VWN_UNROLL
      for (int c = 0; c < 4; ++c)
        if (d0 + c < db) out[c] = from_float<S>(v[c]);
    }
  }
}

/// The staged width connection of the tokens `block.index()`, `+ block.count()`, ... on block executor `block`,
/// with `smem` the block's shared memory (`staged_width_layout::bytes(db)`, 16-byte aligned). Per token:
///   1. the slab `H[t]` into shared memory;
///   2. (dynamic) each thread's partial products `H_j . gw_k` and sums of squares over its columns;
///   3. (dynamic) the partials summed in up to two levels, in a fixed order;
///   4. (dynamic) `r_j`, `q = r_j s`, `P = tanh(q / sqrt(db))`, `[a | b] = S . P + [alpha | beta]`; saves `rstd`,
///      `P` and `Q`;
///   5. the mixing `X`, `C` (`math::mix_row`), four columns per thread.
VWN_GENERIC template <int M, int N, class S, bool Dynamic, class Block>
__host__ __device__ void staged_width(const Block& block, const staged_width_args<S>& a, unsigned char* smem) {
  using layout = staged_width_layout<M, N, S, Dynamic>;
  using sums = typename layout::sums;
  constexpr int R = M + N, K = layout::K, NK = layout::NK;
  const int db = a.db;
  S* slab = reinterpret_cast<S*>(smem);
  float* scratch = reinterpret_cast<float*>(smem + layout::slab_bytes(db));
  const float* total = scratch + sums::total_offset;  // dynamic: the N x K sums, then the N sums of squares
  float* coef = Dynamic ? scratch + sums::floats : scratch;
  const int ld_coef = Dynamic ? K : R;
  const float inv_tau = vwn::math::inverse_tau(float(db));
  const auto h = [&](int j, int d) { return to_float(slab[j * db + d]); };

  if constexpr (!Dynamic)
    block.phase([&](int tid) {
      for (int o = tid; o < N * R; o += block_threads) coef[o] = a.p.alpha[o];
    });

  for (index_t t = block.index(); t < a.T; t += block.count()) {
    // 1. The slab.
    block.phase([&](int tid) { copy_values(slab, a.H + t * a.ldH, index_t(N) * db, a.vector, tid); });
    if constexpr (Dynamic) {
      // 2, 3. Products with the folded weight and sums of squares, summed over the parts.
      block.phase([&](int tid) {
        tiled_products<N, K, true>(tid, h, [&](int k, int d) { return a.gw[index_t(k) * db + d]; }, db, scratch);
      });
      sums::run(block, scratch);
      // 4. Coefficients.
      block.phase([&](int tid) {
        for (int o = tid; o < NK; o += block_threads) {
          const int j = o / K, k = o % K;
          const float r = vwn::math::inverse_rms(total[NK + j], float(db));
          float q, pk;
          vwn::math::projection_from_raw(total[o], r, q);
          vwn::math::projection(q, inv_tau, pk);
          a.Q[t * NK + o] = q;
          a.P[t * NK + o] = pk;
          if (k == 0) a.rstd[t * N + j] = r;
          vwn::math::coefficients(pair_entry<M, N>(a.p.S_alpha, a.p.S_beta, j, k), pk,
                                  pair_entry<M, N>(a.p.alpha, a.p.beta, j, k), coef[o]);
        }
      });
    }
    // 5. Mixing; the barrier after it keeps the slab until every thread is done.
    block.phase([&](int tid) {
      const coefficient_block ab{coef, ld_coef};
      const auto row = [&](int i) {
        return i < M ? a.X + t * a.ldX + index_t(i) * db : a.C + t * a.ldC + index_t(i - M) * db;
      };
      store_rows<S>(tid, R, db, a.vector, row, [&](int i, int d0, float(&v)[4]) {
        VWN_UNROLL
        for (int c = 0; c < 4; ++c) {
          const int d = d0 + c < db ? d0 + c : d0;
          vwn::math::mix_row<N>(ab, i, [&](int j) { return h(j, d); }, v[c]);
        }
      });
    });
  }
}

/// Shared-memory layout of the staged width connection's backward (dynamic) of shape `(M, N)`, storage `S`: the
/// slabs of `H` (`N db`), `dX` (`M db`) and `dC` (`N db`), then the sums of `d a = H [dX; dC]^T` (`part_sums` over
/// `N (M+N)`), `dq` (`N x K`), the coefficients `a` (`N x (M+N)`), `proj` and `r` (`N` each).
template <int M, int N, class S>
struct staged_backward_layout {
  static constexpr int R = M + N, K = 2 * M + N, NK = N * K, NR = N * R;
  static constexpr tile_plan plan = plan_staged_tiles(N, R);
  static_assert(plan.tiles > 0, "vwn: staged width-gradient tile too large for one block");
  using sums = part_sums<plan.parts, NR>;
  static constexpr int scratch_floats = sums::floats + NK + NR + 2 * N;

  /// Offsets of the three slabs, and their bytes.
  VWN_HOST_DEVICE static std::size_t dX_offset(int db) { return slab_bytes<S>(index_t(N) * db); }
  VWN_HOST_DEVICE static std::size_t dC_offset(int db) { return dX_offset(db) + slab_bytes<S>(index_t(M) * db); }
  VWN_HOST_DEVICE static std::size_t slabs_bytes(int db) { return dC_offset(db) + slab_bytes<S>(index_t(N) * db); }
  /// Bytes of dynamic shared memory a block needs at slot width `db`.
  VWN_HOST_DEVICE static std::size_t bytes(int db) { return slabs_bytes(db) + std::size_t(scratch_floats) * sizeof(float); }
};

/// Arguments of the staged width connection's backward: the inputs, `dH`, the parameters, the folded projection
/// weight `gw`, the saved state (`P`, `Q`, `rstd`, each token's `d b`), and the outputs `dQ` (`T n x K`) and the
/// per-block partials of `[d alpha | d beta]` and `[dS_alpha | dS_beta]` (`2 n K` per block).
template <class S>
struct staged_backward_args {
  const S* H;
  index_t ldH;
  const S* dX;
  index_t ldX;
  const S* dC;
  index_t ldC;
  S* dH;
  index_t ldDH;
  ghc_param_ptrs p;
  const float* gw;
  int db;
  index_t T;
  const float* P;
  const float* Q;
  const float* rstd;
  const float* dB;
  float* dQ;
  float* partial;
  bool vector;
};

/// Each thread's running sums of the coefficient gradients over its block's tokens: entry `o = tid + i 256` of
/// `d [alpha | beta]` (`fixed`) and of `d [S_alpha | S_beta]` (`scale`).
template <int NK>
struct coefficient_sums {
  static constexpr int per_thread = (NK + block_threads - 1) / block_threads;
  float fixed[per_thread], scale[per_thread];
};

/// The staged backward of a dynamic width connection, on block executor `block` (`smem`:
/// `staged_backward_layout::bytes(db)`). Per token, reading `H`, `dX`, `dC` from DRAM once:
///   1. the three slabs into shared memory;
///   2. `d a = H [dX; dC]^T` (register-tiled products, summed over the parts);
///   3. `d [alpha | beta]` and `d [S_alpha | S_beta]` summed per thread, `dq = math::projection_backward`
///      (saved as `dQ`), and `a = S_alpha . P + alpha`;
///   4. `proj_j = math::slot_norm_projection` from `dq` and the saved `Q` (no sweep over the slab);
///   5. `dH = math::mix_width_backward + math::rms_backward` with `dHn g = math::projection_input_backward` over
///      the folded weight.
/// After the last token the per-thread sums go to the block's partials. The projection and norm-weight gradients
/// are left to `dghc_projection_grad_kernel`.
VWN_GENERIC template <int M, int N, class S, class Block>
__host__ __device__ void staged_width_backward(const Block& block, const staged_backward_args<S>& a,
                                               unsigned char* smem) {
  using layout = staged_backward_layout<M, N, S>;
  using sums = typename layout::sums;
  using acc_t = coefficient_sums<layout::NK>;
  constexpr int R = layout::R, K = layout::K, NK = layout::NK, NR = layout::NR, per_thread = acc_t::per_thread;
  const int db = a.db;
  S* Hs = reinterpret_cast<S*>(smem);
  S* dXs = reinterpret_cast<S*>(smem + layout::dX_offset(db));
  S* dCs = reinterpret_cast<S*>(smem + layout::dC_offset(db));
  float* scratch = reinterpret_cast<float*>(smem + layout::slabs_bytes(db));
  const float* da = scratch + sums::total_offset;
  float* dq = scratch + sums::floats;
  float* coef = dq + NK;
  float* proj = coef + NR;
  float* rs = proj + N;
  const float inv_tau = vwn::math::inverse_tau(float(db));
  const auto h = [&](int j, int d) { return to_float(Hs[j * db + d]); };
  const auto g = [&](int i, int d) { return to_float(i < M ? dXs[i * db + d] : dCs[(i - M) * db + d]); };
  auto acc = make_local<acc_t>(block);  // device: registers; host: one per thread index
  block.phase([&](int tid) {
    VWN_UNROLL
    for (int i = 0; i < per_thread; ++i) acc[tid].fixed[i] = acc[tid].scale[i] = 0.f;
  });

  for (index_t t = block.index(); t < a.T; t += block.count()) {
    // 1. The slabs and the inverse RMS.
    block.phase([&](int tid) {
      copy_values(Hs, a.H + t * a.ldH, index_t(N) * db, a.vector, tid);
      copy_values(dXs, a.dX + t * a.ldX, index_t(M) * db, a.vector, tid);
      copy_values(dCs, a.dC + t * a.ldC, index_t(N) * db, a.vector, tid);
      if (tid < N) rs[tid] = a.rstd[t * N + tid];
    });
    // 2. d a = H [dX; dC]^T.
    block.phase([&](int tid) { tiled_products<N, R, false>(tid, h, g, db, scratch); });
    sums::run(block, scratch);
    // 3. Coefficient gradients, dq and a.
    block.phase([&](int tid) {
      VWN_UNROLL
      for (int i = 0; i < per_thread; ++i) {
        const int o = tid + i * block_threads;
        if (o < NK) {
          const int j = o / K, k = o % K;
          const float dab = k < R ? da[j * R + k] : a.dB[t * N * M + j * M + (k - R)];
          const float pk = a.P[t * NK + o];
          acc[tid].fixed[i] += dab;
          acc[tid].scale[i] = fmaf(dab, pk, acc[tid].scale[i]);
          float q;
          vwn::math::projection_backward(dab, pair_entry<M, N>(a.p.S_alpha, a.p.S_beta, j, k), pk, inv_tau, q);
          dq[o] = q;
          a.dQ[t * NK + o] = q;
        }
      }
      for (int o = tid; o < NR; o += block_threads)
        vwn::math::coefficients(a.p.S_alpha[o], a.P[t * NK + (o / R) * K + o % R], a.p.alpha[o], coef[o]);
    });
    // 4. The norm's projection of each slot.
    block.phase([&](int tid) {
      for (int j = tid; j < N; j += block_threads)
        vwn::math::slot_norm_projection<K>(coefficient_block{dq, K}, coefficient_block{a.Q + t * NK, K}, j,
                                           float(db), proj[j]);
    });
    // 5. dH; the barrier after it keeps the slabs until every thread is done.
    block.phase([&](int tid) {
      const coefficient_block ac{coef, R}, dqc{dq, K};
      const auto row = [&](int j) { return a.dH + t * a.ldDH + index_t(j) * db; };
      store_rows<S>(tid, N, db, a.vector, row, [&](int j, int d0, float(&v)[4]) {
        VWN_UNROLL
        for (int c = 0; c < 4; ++c) {
          const int d = d0 + c < db ? d0 + c : d0;
          float dhn_g, u;
          vwn::math::mix_width_backward<M, N>(ac, j, [&](int i) { return g(i, d); }, v[c]);
          vwn::math::projection_input_backward<M, N>(dqc, j, [&](int k) { return a.gw[index_t(k) * db + d]; }, dhn_g);
          vwn::math::rms_unit(h(j, d), rs[j], u);
          vwn::math::rms_backward<true>(dhn_g, u, proj[j], rs[j], v[c]);
        }
      });
    });
  }
  float* out = a.partial + std::size_t(block.index()) * 2 * NK;
  block.phase([&](int tid) {
    VWN_UNROLL
    for (int i = 0; i < per_thread; ++i) {
      const int o = tid + i * block_threads;
      if (o < NK) out[o] = acc[tid].fixed[i], out[NK + o] = acc[tid].scale[i];
    }
  });
}

/// The staged backward on the device.
template <int M, int N, class S>
__global__ void __launch_bounds__(block_threads) staged_width_backward_kernel(staged_backward_args<S> a) {
  extern __shared__ __align__(16) unsigned char staged_backward_smem[];
  staged_width_backward<M, N, S>(device_block{}, a, staged_backward_smem);
}

/// The staged width connection on the device: one block per token of a grid-stride loop.
template <int M, int N, class S, bool Dynamic>
__global__ void __launch_bounds__(block_threads) staged_width_kernel(staged_width_args<S> a) {
  extern __shared__ __align__(16) unsigned char staged_smem[];
  staged_width<M, N, S, Dynamic>(device_block{}, a, staged_smem);
}

}  // namespace vwn::cuda::detail
