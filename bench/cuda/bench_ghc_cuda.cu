// Device GHC benchmarks: fused DGHC forward (width connection: one kernel) and backward, the depth
// connection, and the unfused forward baseline (separate RMSNorm, cuBLAS projection, coefficient and mixing
// kernels), each beside a device-to-device copy of the same bytes in the same binary. CUDA-event timing
// (UseManualTime) of back-to-back calls after an L2 flush (device_timing.hpp); bytes are the compulsory traffic
// of vwn::cost (plus DGHC's saved P and 1/rms).
// Every benchmark checks its result (the initialisation identity X = H[0:m]) before timing.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>

#include <vwn/cuda.hpp>

#include "device_timing.hpp"

namespace {

using vwn::index_t;
using vwn::cuda::bf16;
namespace vd = vwn::cuda::detail;

template <class S>
__global__ void fill_kernel(S* p, index_t n, std::uint32_t seed) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  std::uint32_t h = std::uint32_t(i) * 2654435761u ^ seed;
  h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
  p[i] = vwn::cuda::from_float<S>(float(h & 0xffff) / 32768.f - 1.f);
}

template <class S>
vwn::cuda::device_matrix<S> random_matrix(index_t rows, index_t cols, std::uint32_t seed) {
  vwn::cuda::device_matrix<S> m(rows, cols);
  fill_kernel<S><<<unsigned(vd::ceil_div(m.size(), 256)), 256>>>(m.data(), m.size(), seed);
  VWN_CUDA_CHECK_LAUNCH();
  return m;
}

bool skip_without_device(benchmark::State& state) {
  if (vwn::cuda::device_count() > 0) return false;
  state.SkipWithError("no CUDA device");
  return true;
}

// A CUDA event on the default stream, as vwn_bench::time_per_call records it.
struct stream_event {
  vwn::cuda::event e;
  void record() { e.record(nullptr); }
  float elapsed_since(const stream_event& start) const { return e.elapsed_since(start.e); }
};

// Evicts the previous window's data from the L2 cache: writes a buffer of twice its size (an H100 has 50 MB, as
// much as H at (2,3), D = 1024, 16K tokens), queued before the window opens.
void flush_l2() {
  static vwn::cuda::device_buffer<char> buffer = [] {
    int dev = 0, bytes = 0;
    VWN_CUDA_CHECK(cudaGetDevice(&dev));
    VWN_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrL2CacheSize, dev));
    return vwn::cuda::device_buffer<char>(2 * std::size_t(bytes));
  }();
  VWN_CUDA_CHECK(cudaMemsetAsync(buffer.data(), 0, buffer.size(), nullptr));
}

// Times `run` per iteration as vwn_bench::time_per_call does: an L2 flush, then calls_per_window calls back to
// back between two CUDA events; the iteration time is the time of one call.
template <class F>
void time_loop(benchmark::State& state, F&& run, double bytes, double flops) {
  stream_event start, stop;
  run();  // warm-up
  for (auto _ : state) state.SetIterationTime(vwn_bench::time_per_call(start, stop, run, flush_l2) / 1e3);
  state.SetBytesProcessed(std::int64_t(bytes) * state.iterations());
  state.counters["GFLOP/s"] = benchmark::Counter(flops * double(state.iterations()), benchmark::Counter::kIsRate,
                                                 benchmark::Counter::kIs1000);
}

// X = H[0:m] at initialisation: the first row of X against the first m db values of H, exactly.
template <class S>
bool identity_holds(const vwn::cuda::device_matrix<S>& H, const vwn::cuda::device_matrix<S>& X) {
  vwn::matrix<float> h, x;
  vwn::cuda::download<S>(vwn::cuda::device, vwn::cuda::device_matrix_cref<S>(H).middle_rows(0, 1), h);
  vwn::cuda::download<S>(vwn::cuda::device, vwn::cuda::device_matrix_cref<S>(X).middle_rows(0, 1), x);
  return (h.leftCols(x.cols()).array() == x.array()).all();
}

template <int M, int N, class S>
double forward_bytes(index_t D, index_t T) {
  const auto c = vwn::cost<M, N>(D, sizeof(S));
  return double(T) * (c.width_bytes + c.saved_bytes);
}

// The fused DGHC forward width connection with kernel `Kernel` (vwn::cuda::width_kernel).
template <int M, int N, class S, vwn::cuda::width_kernel Kernel>
void dghc_forward(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const index_t D = state.range(0), T = state.range(1);
  vwn::cuda::dghc<M, N, S> layer(D);
  const auto H = random_matrix<S>(T, layer.wide_width(), 1);
  vwn::cuda::device_matrix<S> X(T, D), C(T, layer.wide_width());
  typename vwn::cuda::dghc<M, N, S>::workspace ws;
  layer.forward_width(vwn::cuda::device, H, X, C, ws, Kernel);
  if (!identity_holds(H, X)) return state.SkipWithError("result check failed");
  const auto c = vwn::cost<M, N>(D, sizeof(S));
  time_loop(state, [&] { layer.forward_width(vwn::cuda::device, H, X, C, ws, Kernel); }, forward_bytes<M, N, S>(D, T),
            double(T) * (c.norm_flops + c.coefficient_flops + c.width_flops));
}

// The library's choice (the staged kernel where its slab fits in shared memory).
template <int M, int N, class S>
void BM_dghc_forward_fused(benchmark::State& state) {
  dghc_forward<M, N, S, vwn::cuda::width_kernel::automatic>(state);
}

// The tiled kernel (reads H twice, in 32-column tiles), for the comparison with the staged one.
template <int M, int N, class S>
void BM_dghc_forward_tiled(benchmark::State& state) {
  dghc_forward<M, N, S, vwn::cuda::width_kernel::tiled>(state);
}

template <int M, int N, class S>
void BM_dghc_backward_fused(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const index_t D = state.range(0), T = state.range(1), Dw = (D / M) * N;
  vwn::cuda::dghc<M, N, S> layer(D);
  const auto H = random_matrix<S>(T, Dw, 1), Z = random_matrix<S>(T, D, 2), dHo = random_matrix<S>(T, Dw, 3),
             dX = random_matrix<S>(T, D, 4);
  vwn::cuda::device_matrix<S> X(T, D), C(T, Dw), dZ(T, D), dH(T, Dw);
  typename vwn::cuda::dghc<M, N, S>::workspace ws;
  layer.forward_width(vwn::cuda::device, H, X, C, ws);
  if (!identity_holds(H, X)) return state.SkipWithError("result check failed");
  const auto c = vwn::cost<M, N>(D, sizeof(S));
  const double bytes = double(T) * (c.width_backward_bytes + c.depth_backward_bytes + c.backward_state_bytes) +
                       double(T) * Dw * sizeof(S);  // the projection gradient reads H once more
  time_loop(state, [&] {
    layer.backward_depth(vwn::cuda::device, dHo, Z, dZ, ws);
    layer.backward_width(vwn::cuda::device, H, dX, dHo, dH, ws);
  }, bytes, 2.0 * double(T) * c.dynamic_forward_flops());
}

template <int M, int N, class S>
void BM_dghc_depth(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const index_t D = state.range(0), T = state.range(1), Dw = (D / M) * N;
  vwn::cuda::dghc<M, N, S> layer(D);
  const auto H = random_matrix<S>(T, Dw, 1), Z = random_matrix<S>(T, D, 2);
  vwn::cuda::device_matrix<S> X(T, D), C(T, Dw), Ho(T, Dw);
  typename vwn::cuda::dghc<M, N, S>::workspace ws;
  layer.forward_width(vwn::cuda::device, H, X, C, ws);
  if (!identity_holds(H, X)) return state.SkipWithError("result check failed");
  const auto c = vwn::cost<M, N>(D, sizeof(S));
  time_loop(state, [&] { layer.forward_depth(vwn::cuda::device, Z, C, Ho, ws); },
            double(T) * (c.depth_bytes + c.coefficient_bytes), double(T) * c.depth_flops);
}

// ---- The unfused baseline: RMSNorm kernel, cuBLAS projection, coefficient kernel, mixing kernel. ----

template <class S>
__global__ void rmsnorm_kernel(const S* H, const float* g, S* Hn, float* rstd, int db) {
  __shared__ float scratch[vd::block_threads / 32];
  const index_t row = blockIdx.x;  // one slot of one token
  float s = 0.f;
  for (int d = int(threadIdx.x); d < db; d += vd::block_threads) {
    const float x = vwn::cuda::to_float(H[row * db + d]);
    s = fmaf(x, x, s);
  }
  const float r = 1.f / sqrtf(vd::block_sum(s, scratch) / float(db) + float(vwn::norm_eps));
  for (int d = int(threadIdx.x); d < db; d += vd::block_threads)
    Hn[row * db + d] = vwn::cuda::from_float<S>(vwn::cuda::to_float(H[row * db + d]) * r * g[d]);
  if (threadIdx.x == 0) rstd[row] = r;
}

template <int M, int N>
__global__ void coefficients_kernel(float* Q, vd::ghc_param_ptrs p, index_t count, float inv_tau) {
  constexpr int K = 2 * M + N;
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int o = int(i % (N * K)), j = o / K, k = o % K;
  const float pk = tanhf(Q[i] * inv_tau);
  Q[i] = fmaf(vd::pair_entry<M, N>(p.S_alpha, p.S_beta, j, k), pk, vd::pair_entry<M, N>(p.alpha, p.beta, j, k));
}

template <int M, int N, class S>
__global__ void mixing_kernel(const S* H, S* X, S* C, const float* ab, int db, index_t T) {
  constexpr int K = 2 * M + N;
  __shared__ float a[N * K];
  for (index_t t = blockIdx.x; t < T; t += gridDim.x) {
    for (int o = int(threadIdx.x); o < N * K; o += vd::block_threads) a[o] = ab[t * N * K + o];
    __syncthreads();
    vd::mix_token<M, N>(H + t * N * db, X + t * M * db, C + t * N * db, a, K, db, int(threadIdx.x));
    __syncthreads();
  }
}

template <int M, int N, class S>
void BM_dghc_forward_unfused(benchmark::State& state) {
  if (skip_without_device(state)) return;
  constexpr int K = 2 * M + N;
  const index_t D = state.range(0), T = state.range(1), db = D / M, Dw = N * db;
  vwn::cuda::dghc<M, N, S> layer(D);
  const auto H = random_matrix<S>(T, Dw, 1);
  vwn::cuda::device_matrix<S> X(T, D), C(T, Dw), Hn(T * N, db);
  vwn::cuda::device_matrix<float> Q(T * N, K), rstd(T * N, 1);
  vwn::cuda::device_matrix<S> Wcat(db, K);
  // [W_alpha | W_beta] as one db x K operand.
  const auto p = layer.params.pointers();
  vwn::cuda::detail::gemm_weight<S> wa, wb;
  const S* Wa = wa.get(nullptr, p.W_alpha, db * (M + N));
  const S* Wb = wb.get(nullptr, p.W_beta, db * M);
  VWN_CUDA_CHECK(cudaMemcpy2D(Wcat.data(), K * sizeof(S), Wa, (M + N) * sizeof(S), (M + N) * sizeof(S), db,
                              cudaMemcpyDeviceToDevice));
  VWN_CUDA_CHECK(cudaMemcpy2D(Wcat.data() + (M + N), K * sizeof(S), Wb, M * sizeof(S), M * sizeof(S), db,
                              cudaMemcpyDeviceToDevice));
  constexpr cudaDataType_t st = vd::storage_info<S>::blas_type;
  const float inv_tau = 1.f / std::sqrt(float(db));
  auto run = [&] {
    rmsnorm_kernel<S><<<unsigned(T * N), vd::block_threads>>>(H.data(), p.g, Hn.data(), rstd.data(), int(db));
    vd::gemm(vwn::cuda::device.blas(), false, false, T * N, K, db, 1.f, Hn.data(), st, db, Wcat.data(), st, K, 0.f,
             Q.data(), CUDA_R_32F, K);
    coefficients_kernel<M, N><<<unsigned(vd::ceil_div(T * N * K, 256)), 256>>>(Q.data(), p, T * N * K, inv_tau);
    mixing_kernel<M, N, S><<<vd::token_blocks(T), vd::block_threads>>>(H.data(), X.data(), C.data(), Q.data(),
                                                                        int(db), T);
    VWN_CUDA_CHECK_LAUNCH();
  };
  run();
  if (!identity_holds(H, X)) return state.SkipWithError("result check failed");
  const auto c = vwn::cost<M, N>(D, sizeof(S));
  time_loop(state, run, forward_bytes<M, N, S>(D, T), double(T) * (c.norm_flops + c.coefficient_flops + c.width_flops));
}

// A device-to-device copy of the bytes the fused forward moves (half read, half written).
template <int M, int N, class S>
void BM_copy_forward_bytes(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const double bytes = forward_bytes<M, N, S>(state.range(0), state.range(1));
  vwn::cuda::device_buffer<char> a(std::size_t(bytes / 2)), b(std::size_t(bytes / 2));
  time_loop(state, [&] {
    VWN_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), a.size(), cudaMemcpyDeviceToDevice, nullptr));
  }, double(2 * a.size()), 0.0);
}

void sizes_small(benchmark::internal::Benchmark* b) {
  for (const index_t D : {1024, 2048, 4096})
    for (const index_t T : {16384, 65536}) b->Args({D, T});
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}
void sizes_large(benchmark::internal::Benchmark* b) {  // (8,64): D' = 8 D, so 16K tokens only
  for (const index_t D : {1024, 2048, 4096}) b->Args({D, 16384});
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}

#define VWN_GHC_BENCH(M, N, sizes)                                          \
  BENCHMARK(BM_copy_forward_bytes<M, N, bf16>)->Apply(sizes);               \
  BENCHMARK(BM_dghc_forward_fused<M, N, bf16>)->Apply(sizes);               \
  BENCHMARK(BM_dghc_forward_tiled<M, N, bf16>)->Apply(sizes);               \
  BENCHMARK(BM_dghc_forward_unfused<M, N, bf16>)->Apply(sizes);             \
  BENCHMARK(BM_dghc_backward_fused<M, N, bf16>)->Apply(sizes);              \
  BENCHMARK(BM_dghc_depth<M, N, bf16>)->Apply(sizes);

VWN_GHC_BENCH(2, 3, sizes_small)
VWN_GHC_BENCH(4, 8, sizes_small)
VWN_GHC_BENCH(8, 64, sizes_large)

}  // namespace

BENCHMARK_MAIN();
