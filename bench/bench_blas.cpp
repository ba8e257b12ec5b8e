// The host products of one training step of the reference transformer (D = 512, batch 4 x 256 tokens, (2,3) DGHC,
// 256-byte vocabulary: the bench_train_step model) on Eigen's own product and on the BLAS libraries Debian has
// (OpenBLAS and BLIS, their OpenMP builds), at 1 and 2 threads, in one run: GFLOP/s per shape. Every product goes
// through vwn's own `detail::gemm` (row panels in parallel, one single-threaded product each; the FFN's products run
// as the same row panels inside its row tasks) or, for an attention tile, one `detail::serial_gemm` on the calling
// thread (the model runs one such task per sequence and head): what the model runs. The BLAS
// is installed with the loader the programs use (examples/transformer/blas.hpp). One more row per library, "own
// threads", is a 1024^3 product handed to the library whole, with its own threading: the machine's best rate.
//
//   bench_blas [--benchmark_filter=...]     (bench/blas_table.py turns its JSON into docs/benchmarks.md's table)

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <transformer/blas.hpp>
#include <vwn/vwn.hpp>

#ifndef VWN_BENCH_OPENBLAS
#define VWN_BENCH_OPENBLAS ""
#endif
#ifndef VWN_BENCH_BLIS
#define VWN_BENCH_BLIS ""
#endif

namespace {

using vwn::index_t;
using mat = vwn::matrix<float>;

// One product of the step: dst (m x n) (+)= op(A) op(B) with inner size k.
struct shape {
  const char* name;
  index_t m, n, k;
  bool ta, tb, accumulate;
  bool serial;  // inside a task (FFN rows, attention tiles): serial_product, not the panelled gemm
};

constexpr index_t kTokens = 1024, kD = 512, kF = 1368, kV = 256, kDw = 768, kDb = 256;
const std::vector<shape> kShapes = {
    {"qkv: x W^T", kTokens, 3 * kD, kD, false, true, false, false},
    {"attention out: o W^T", kTokens, kD, kD, false, true, false, false},
    {"FFN up: x W1^T", kTokens, kF, kD, false, true, false, false},
    {"FFN down: h W2^T", kTokens, kD, kF, false, true, false, false},
    {"FFN weight grad: dW1 += da^T x", kF, kD, kTokens, true, false, true, false},
    {"input grad: dy W", kTokens, kD, kD, false, false, false, false},
    {"unembedding: h W^T", kTokens, kV, kD, false, true, false, false},
    {"reduce head: H W^T", kTokens, kD, kDw, false, true, false, false},
    {"MTP mixer: A W^T", 3 * kTokens, kDb, kDb, false, true, false, false},
    {"attention scores (tile)", 64, 256, 64, false, true, false, true},
    {"square 1024^3", 1024, 1024, 1024, false, false, false, false},
};

struct backend {
  const char* name;
  std::string path;  // empty: Eigen
};
const std::vector<backend> kBackends = {{"Eigen", ""}, {"OpenBLAS", VWN_BENCH_OPENBLAS}, {"BLIS", VWN_BENCH_BLIS}};

void install(const backend& b) {
  if (b.path.empty())
    vwn::model::use_eigen_products();
  else
    vwn::model::use_blas(b.path);
}

void set_threads(int threads) {
#ifdef _OPENMP
  omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

template <bool A, bool TA, bool TB>
void run(const shape& s, mat& dst, const mat& a, const mat& b) {
  if (s.serial) {
    vwn::detail::serial_gemm<float, A, TA, TB>(dst, a, b);
  } else {
    vwn::detail::gemm<float, A, TA, TB>(dst, a, b);
  }
}

void product(const shape& s, mat& dst, const mat& a, const mat& b) {
  if (s.accumulate && s.ta && !s.tb) return run<true, true, false>(s, dst, a, b);
  if (!s.accumulate && !s.ta && s.tb) return run<false, false, true>(s, dst, a, b);
  if (!s.accumulate && !s.ta && !s.tb) return run<false, false, false>(s, dst, a, b);
  throw std::logic_error("bench_blas: a shape without its product variant");
}

void BM_product(benchmark::State& state, shape s, backend be, int threads) {
  if (!be.name || (be.path.empty() && std::string(be.name) != "Eigen")) {
    state.SkipWithError("library not found at configure time");
    return;
  }
  install(be);
  set_threads(threads);
  const vwn::detail::eigen_serial serial;  // as in the model: every product split by vwn's own loops
  vwn::rng r(11);
  mat a(s.ta ? s.k : s.m, s.ta ? s.m : s.k), b(s.tb ? s.n : s.k, s.tb ? s.k : s.n), dst(s.m, s.n);
  r.fill_normal(a, 1.0);
  r.fill_normal(b, 1.0);
  dst.setZero();
  for (auto _ : state) {
    product(s, dst, a, b);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOPs"] = benchmark::Counter(2.0 * double(s.m) * double(s.n) * double(s.k) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  vwn::model::use_eigen_products();
}

// A 1024^3 product handed to the library in one call, outside any parallel region: its own threading.
void BM_own_threads(benchmark::State& state, backend be, int threads) {
  if (be.path.empty()) {
    state.SkipWithError("library not found at configure time");
    return;
  }
  install(be);
  set_threads(threads);
  const index_t n = 1024;
  vwn::rng r(12);
  mat a(n, n), b(n, n), c(n, n);
  r.fill_normal(a, 1.0);
  r.fill_normal(b, 1.0);
  const auto kernel = vwn::detail::host_gemm<float>;
  for (auto _ : state) {
    kernel(false, false, n, n, n, a.data(), n, b.data(), n, false, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] =
      benchmark::Counter(2.0 * double(n) * n * n * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  vwn::model::use_eigen_products();
}

}  // namespace

int main(int argc, char** argv) {
  // BLIS 0.9.0 takes this machine's processor for an unknown one and runs its generic kernels (a third of its
  // speed): unless the user chose, give it its AVX-512 kernels (arch id 0, skx) where the processor has them, as the
  // loader gives OpenBLAS its SkylakeX kernels, so that each library is measured at its best.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
    setenv("BLIS_ARCH_TYPE", "0", 0);
#endif
  for (int threads : {1, 2}) {
    for (const shape& s : kShapes)
      for (const backend& be : kBackends)
        benchmark::RegisterBenchmark((std::string(s.name) + " [" + std::to_string(s.m) + " x " + std::to_string(s.n) +
                                      " x " + std::to_string(s.k) + "]/" + be.name + "/" + std::to_string(threads))
                                         .c_str(),
                                     BM_product, s, be, threads)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
    for (const backend& be : kBackends)
      if (!be.path.empty() || std::string(be.name) != "Eigen")
        benchmark::RegisterBenchmark(
            (std::string("square 1024^3, the library's own threads/") + be.name + "/" + std::to_string(threads)).c_str(),
            BM_own_threads, be, threads)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
  }
  benchmark::AddCustomContext("openblas", VWN_BENCH_OPENBLAS);
  benchmark::AddCustomContext("blis", VWN_BENCH_BLIS);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
