// Host benchmarks of one GHC sub-layer (static and dynamic), forward (width + depth connection) and
// backward (depth + width), float32, at D = 1024 and 4096 tokens, beside a plain memory copy of the same
// number of bytes, so that the ratio to this machine's bandwidth can be read from one run.
//
// Bytes are the compulsory traffic of the spec's cost section (each tensor read or written once);
// FLOPs are the spec's counts (section 3.5) per token; backward FLOPs are taken as twice the forward's.

#include <benchmark/benchmark.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include <vwn/vwn.hpp>

namespace {

constexpr vwn::index_t kD = 1024;
constexpr vwn::index_t kTokens = 4096;

template <int M, int N, bool Dynamic>
struct problem {
  using layer_t = vwn::basic_ghc<M, N, float, Dynamic>;
  layer_t layer{kD};
  vwn::index_t T = kTokens, Dw = layer.wide_width();
  vwn::matrix<float> H{T, Dw}, Z{T, kD}, X{T, kD}, C{T, Dw}, Hout{T, Dw}, dZ{T, kD}, dH{T, Dw};
  typename layer_t::workspace ws;

  problem() {
    vwn::rng gen(7);
    gen.fill_normal(H, 1.0);
    gen.fill_normal(Z, 1.0);
    forward();
    // Correctness before timing: at init H_out[j] = H[j] + Z[j mod m] exactly.
    const vwn::index_t db = layer.block_width();
    for (vwn::index_t t : {vwn::index_t(0), T / 2, T - 1})
      for (int j = 0; j < N; ++j)
        if (Hout.row(t).segment(j * db, db) != H.row(t).segment(j * db, db) + Z.row(t).segment((j % M) * db, db))
          throw std::logic_error("benchmark problem: init identity violated");
    if constexpr (Dynamic) {  // move off the init so the dynamic path does real work
      layer.params.W_alpha.setConstant(1e-3f);
      layer.params.W_beta.setConstant(1e-3f);
    }
  }
  void forward() {
    layer.forward_width(vwn::host, H, X, C, ws);
    layer.forward_depth(vwn::host, Z, C, Hout, ws);
  }
  void backward() {
    layer.backward_depth(vwn::host, Hout, Z, dZ, ws);
    layer.backward_width(vwn::host, H, X, Hout, dH, ws);
  }
  // Compulsory bytes per token.
  static double bytes(bool backward) {
    const vwn::ghc_cost c = vwn::cost<M, N>(kD, sizeof(float));
    const double saved = Dynamic ? sizeof(float) * (N * (2.0 * M + N) + N) : 0.0;  // P and 1/rms
    return backward ? c.width_backward_bytes + c.depth_backward_bytes + 2 * saved
                    : c.width_bytes + c.depth_bytes + saved;
  }
  static double flops(bool backward) {
    const vwn::ghc_cost c = vwn::cost<M, N>(kD);
    const double f = Dynamic ? c.dynamic_forward_flops() : c.static_forward_flops();
    return backward ? 2 * f : f;
  }
};

template <int M, int N, bool Dynamic, bool Backward>
void BM_ghc(benchmark::State& state) {
  problem<M, N, Dynamic> p;
  // One untimed pass first: the outputs' pages are touched (faulted in) there, not in the first timed iteration,
  // which for the large shapes is a good part of the few iterations run.
  if constexpr (Backward) {
    p.forward();
    p.backward();
  } else {
    p.forward();
  }
  for (auto _ : state) {
    if constexpr (Backward)
      p.backward();
    else
      p.forward();
    benchmark::DoNotOptimize(p.Hout.data());
    benchmark::DoNotOptimize(p.dH.data());
    benchmark::ClobberMemory();
  }
  const double iters = double(state.iterations());
  state.SetBytesProcessed(int64_t(iters * kTokens * p.bytes(Backward)));
  state.SetItemsProcessed(int64_t(iters * kTokens));
  state.counters["FLOP/s"] = benchmark::Counter(iters * kTokens * p.flops(Backward), benchmark::Counter::kIsRate);
  state.counters["bytes_per_token"] = p.bytes(Backward);
}

// Plain copy moving the same number of bytes (half read, half written), for the bandwidth ratio. It is
// split over the same threads as the GHC passes (OpenMP), so the ratio compares like with like.
void BM_copy(benchmark::State& state) {
  const auto total = std::size_t(state.range(0));
  std::vector<char> src(total / 2, 1), dst(total / 2);
  for (auto _ : state) {
    vwn::detail::for_chunks(vwn::index_t(src.size()), 64, [&](vwn::index_t, vwn::index_t b, vwn::index_t e) {
      std::memcpy(dst.data() + b, src.data() + b, std::size_t(e - b));
    });
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(2 * src.size()));
}

template <int M, int N>
void register_shape() {
  const std::string s = std::to_string(M) + "," + std::to_string(N);
  benchmark::RegisterBenchmark(("ghc_forward/(" + s + ")").c_str(), BM_ghc<M, N, false, false>)->UseRealTime();
  benchmark::RegisterBenchmark(("ghc_backward/(" + s + ")").c_str(), BM_ghc<M, N, false, true>)->UseRealTime();
  benchmark::RegisterBenchmark(("dghc_forward/(" + s + ")").c_str(), BM_ghc<M, N, true, false>)->UseRealTime();
  benchmark::RegisterBenchmark(("dghc_backward/(" + s + ")").c_str(), BM_ghc<M, N, true, true>)->UseRealTime();
  benchmark::RegisterBenchmark(("copy/(" + s + ")").c_str(), BM_copy)
      ->Arg(int64_t(kTokens * problem<M, N, false>::bytes(false)))
      ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  register_shape<2, 3>();
  register_shape<4, 8>();
  register_shape<8, 64>();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
