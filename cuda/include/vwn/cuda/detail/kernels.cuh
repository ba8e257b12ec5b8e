#pragma once
// Building blocks shared by the device kernels: block size, shared-memory tiles, a register-tiled
// "rows of A dot rows of B" accumulator, per-block gradient partials and their deterministic second pass.

#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstddef>

#include <vwn/core/checks.hpp>
#include <vwn/core/config.hpp>

#include "../error.hpp"
#include "../policy.hpp"
#include "../scalar.hpp"

#if !defined(__CUDACC__)
#error "vwn/cuda kernels must be compiled by nvcc (a .cu file); <vwn/cuda/memory.hpp> and <vwn/cuda/policy.hpp> work in any C++ file"
#endif

namespace vwn::cuda::detail {

/// Threads per block of the per-token kernels (8 warps).
inline constexpr int block_threads = 256;
/// Columns of a shared-memory tile (one per lane of a warp).
inline constexpr int chunk = 32;
/// Row stride of a shared-memory tile (one float of padding against bank conflicts).
inline constexpr int tile_ld = chunk + 1;
/// Upper bound on the blocks of a token-loop kernel. The grid is min(T, max_blocks); it depends on T only,
/// so the per-block gradient partials (and the summed result) do not depend on the device.
inline constexpr index_t max_blocks = 1024;
/// Token groups of the column reductions over tokens (dynamic GHC projection gradient, GroupNorm affine): at least
/// `min_groups` and at most `max_groups`, as many as give `column_grid` blocks with the column blocks (a full
/// H100 or H200: 132 SMs x 16 blocks of 128 threads), never more than the tokens.
inline constexpr index_t min_groups = 128, max_groups = 1024, column_grid = 2048;

/// Blocks of a token-loop kernel over T tokens.
inline unsigned token_blocks(index_t T) { return unsigned(T < max_blocks ? T : max_blocks); }
/// Ceiling division.
constexpr index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
/// Token groups of a column reduction over T tokens whose columns take `column_blocks` blocks. The partition
/// depends on T and the width only, so the sums (added in group order) are the same on every device.
inline unsigned token_groups(index_t T, index_t column_blocks) {
  index_t g = ceil_div(column_grid, column_blocks > 0 ? column_blocks : 1);
  g = g < min_groups ? min_groups : g > max_groups ? max_groups : g;
  return unsigned(T < g ? T : g);
}

/// Coefficient accessor of the math layer over a row-major block in shared memory: `(j, k) -> p[j * ld + k]`.
struct coefficient_block {
  const float* p;
  int ld;
  VWN_HOST_DEVICE float operator()(int j, int k) const { return p[j * ld + k]; }
};

/// Value accessor of the math layer over column `c` of a shared-memory tile: `j -> tile[j * tile_ld + c]`.
struct tile_column {
  const float* tile;
  int c;
  __device__ __forceinline__ float operator()(int j) const { return tile[j * tile_ld + c]; }
};

/// Sum over the 32 lanes of a warp (butterfly: every lane gets the same, order-fixed result).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Register tiling of an `R x Kc` result over `block_threads` threads: each thread owns a `tj x tk` tile,
/// and when there are fewer tiles than threads, `parts` threads share a tile, each taking every
/// `parts`-th column of the chunk.
struct tile_plan {
  int tj, tk, tiles_k, tiles, parts;
};

constexpr tile_plan plan_tiles(int R, int Kc) {
  tile_plan best{0, 0, 0, 0, 0};
  int best_regs = 1 << 30, best_waste = 1 << 30;
  for (int tj = 1; tj <= 8; ++tj)
    for (int tk = 1; tk <= 8; ++tk) {
      const int tiles_j = (R + tj - 1) / tj, tiles_k = (Kc + tk - 1) / tk, tiles = tiles_j * tiles_k;
      if (tiles > block_threads) continue;
      const int regs = tj * tk, waste = tiles * regs - R * Kc;
      if (regs < best_regs || (regs == best_regs && waste < best_waste)) {
        best = {tj, tk, tiles_k, tiles, block_threads / tiles};
        best_regs = regs, best_waste = waste;
      }
    }
  return best;
}

/// Accumulates `out[r][k] = sum_c A[r][c] B[k][c]` over shared-memory tiles `A` (`R x chunk`) and `B`
/// (`Kc x chunk`), row stride `tile_ld`, then reduces the parts in a fixed order.
template <int R, int Kc>
struct tile_dot {
  static constexpr tile_plan plan = plan_tiles(R, Kc);
  static_assert(plan.tiles > 0, "vwn: tile_dot result too large for one block");
  /// Floats of shared memory `reduce` needs.
  static constexpr int scratch = plan.parts * R * Kc;

  float acc[plan.tj][plan.tk];
  int r0, k0, part;

  __device__ __forceinline__ explicit tile_dot(int tid) {
    const int tile = tid % plan.tiles;
    part = tid / plan.tiles;  // >= plan.parts: idle thread
    r0 = (tile / plan.tiles_k) * plan.tj;
    k0 = (tile % plan.tiles_k) * plan.tk;
#pragma unroll
    for (int u = 0; u < plan.tj; ++u)
#pragma unroll
      for (int v = 0; v < plan.tk; ++v) acc[u][v] = 0.f;
  }

  /// Adds columns `0 .. cols-1` of the tiles.
  __device__ __forceinline__ void add(const float* A, const float* B, int cols) {
    if (part >= plan.parts) return;
    for (int c = part; c < cols; c += plan.parts) {
      float a[plan.tj], b[plan.tk];
#pragma unroll
      for (int u = 0; u < plan.tj; ++u) a[u] = (r0 + u < R) ? A[(r0 + u) * tile_ld + c] : 0.f;
#pragma unroll
      for (int v = 0; v < plan.tk; ++v) b[v] = (k0 + v < Kc) ? B[(k0 + v) * tile_ld + c] : 0.f;
#pragma unroll
      for (int u = 0; u < plan.tj; ++u)
#pragma unroll
        for (int v = 0; v < plan.tk; ++v) acc[u][v] = fmaf(a[u], b[v], acc[u][v]);
    }
  }

  /// Leaves the full sums in `red[0 .. R*Kc)` (row-major `R x Kc`); `red` holds `scratch` floats.
  /// Every thread of the block must call it (it synchronises).
  __device__ __forceinline__ void reduce(float* red, int tid) const {
    if (part < plan.parts) {
#pragma unroll
      for (int u = 0; u < plan.tj; ++u)
#pragma unroll
        for (int v = 0; v < plan.tk; ++v)
          if (r0 + u < R && k0 + v < Kc) red[(part * R + r0 + u) * Kc + k0 + v] = acc[u][v];
    }
    __syncthreads();
    for (int o = tid; o < R * Kc; o += block_threads) {
      float s = red[o];
      for (int p = 1; p < plan.parts; ++p) s += red[p * R * Kc + o];
      red[o] = s;  // only this thread touches entry o in this phase
    }
    __syncthreads();
  }
};

/// Per-block running sums of `E` gradient entries, entry `o` held by thread `o % block_threads` (the same
/// mapping as the loops `for (o = tid; o < E; o += block_threads)`), summed in token order.
template <int E>
struct block_partial {
  static constexpr int per_thread = (E + block_threads - 1) / block_threads;
  float v[per_thread];
  __device__ __forceinline__ block_partial() {
#pragma unroll
    for (int i = 0; i < per_thread; ++i) v[i] = 0.f;
  }
  /// Adds `src[o]` (shared memory) for this thread's entries.
  __device__ __forceinline__ void add(const float* src, int tid) {
#pragma unroll
    for (int i = 0; i < per_thread; ++i)
      if (tid + i * block_threads < E) v[i] += src[tid + i * block_threads];
  }
  /// Writes this thread's entries to `dst[o]`.
  __device__ __forceinline__ void store(float* dst, int tid) const {
#pragma unroll
    for (int i = 0; i < per_thread; ++i)
      if (tid + i * block_threads < E) dst[tid + i * block_threads] = v[i];
  }
};

/// Second pass of the gradient reductions: `*target(e) += sum_b partial[b][e]`, blocks summed in order.
/// One entry of it (the thread's work; also run on the host by the tests).
template <class Target>
VWN_HOST_DEVICE void sum_partials_entry(const float* partial, int blocks, int E, const Target& target, int e) {
  float s = 0.f;
  for (int b = 0; b < blocks; ++b) s += partial[std::size_t(b) * std::size_t(E) + std::size_t(e)];
  *target(e) += s;
}

template <class Target>
__global__ void sum_partials_kernel(const float* __restrict__ partial, int blocks, int E, Target target) {
  const int e = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (e < E) sum_partials_entry(partial, blocks, E, target, e);
}

/// A contiguous gradient tensor as a target of sum_partials_kernel.
struct plain_target {
  float* p;
  VWN_HOST_DEVICE float* operator()(int e) const { return p + e; }
};

/// Launches sum_partials_kernel on `stream`.
template <class Target>
void sum_partials(cudaStream_t stream, const float* partial, unsigned blocks, int E, Target target) {
  if (E == 0) return;
  sum_partials_kernel<<<unsigned(ceil_div(E, 256)), 256, 0, stream>>>(partial, int(blocks), E, target);
  VWN_CUDA_CHECK_LAUNCH();
}

/// The most dynamic shared memory a block of the current device may have (after opting in above 48 KiB). Asked
/// of the driver once per device (the first 64 devices) and kept: every staged call consults it.
inline std::size_t shared_memory_optin() {
  int dev = 0, optin = 0;
  VWN_CUDA_CHECK(cudaGetDevice(&dev));
  static std::array<std::atomic<int>, 64> known{};  // 0: not asked yet
  if (dev >= 0 && dev < int(known.size()) && (optin = known[std::size_t(dev)].load(std::memory_order_relaxed)) > 0)
    return std::size_t(optin);
  VWN_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (dev >= 0 && dev < int(known.size())) known[std::size_t(dev)].store(optin, std::memory_order_relaxed);
  return std::size_t(optin);
}

/// Sets the dynamic shared-memory limit of `kernel` to `bytes` (needed above 48 KiB) and checks that the
/// device has that much per block.
template <class Kernel>
void allow_shared_memory(Kernel kernel, std::size_t bytes, const char* where) {
  if (bytes <= 48 * 1024) return;
  const std::size_t optin = shared_memory_optin();
  if (optin < bytes)
    vwn::detail::fail(where, "shared memory per block", std::to_string(bytes) + " bytes",
                      "a device with " + std::to_string(optin) + " bytes");
  VWN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace vwn::cuda::detail
