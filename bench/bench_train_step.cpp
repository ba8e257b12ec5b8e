// One training step (forward, backward, AdamW update) of the reference transformer on the host, float32:
// D = 256 and 512, 4 layers, context 256, batch 4, for the (1,1) baseline without MTP, (2,3) DGHC without
// and with MTP, and (8,32) DGHC with MTP (as the paper trains VWN). bench/train_step_vs_torch.sh runs each
// of these beside the same step in PyTorch with the same thread count and prints the ratios.
//
// BM_overhead/<D> measures the cost of VWN (2,3) dynamic over the (1,1) baseline (both without MTP) by
// alternating steps of the two models in one process, so that load from other processes on a shared machine
// affects both alike; it reports the median of the per-pair ratios.
//
// BM_connections<M, N>/<D> does the same for the connection families (docs/mhc.md) of one dynamic shape with MTP:
// a step of each of vwn, mhc, mhc-lite (n <= 5) in rotating order per iteration, the median milliseconds of each and
// the median ratio of each family's step to vwn's.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <transformer/blas.hpp>
#include <transformer/model.hpp>
#include <transformer/optim.hpp>

namespace {

constexpr vwn::index_t kBatch = 4, kContext = 256, kLayers = 4;

// A model, its optimiser and a fixed random batch.
template <int M, int N, bool Dynamic>
struct trainer {
  vwn::model::transformer<float> model;
  vwn::optim::adamw<float> opt;
  std::vector<std::int32_t> tokens;
  double loss = 0;

  static vwn::model::config settings(vwn::index_t D, bool mtp, const std::string& connection = "vwn") {
    vwn::model::config c;
    c.shape = {M, N, Dynamic, connection};
    c.width = D;
    c.layers = kLayers;
    c.heads = D / 64;
    c.context = kContext;
    c.mtp = mtp;
    return c;
  }

  trainer(vwn::index_t D, bool mtp, const std::string& connection = "vwn") : model(settings(D, mtp, connection)) {
    model.visit([&](const std::string& name, float* p, float* g, vwn::index_t size, bool decay) {
      opt.add(name, p, g, size, decay);
    });
    vwn::rng r(3);
    tokens.resize(std::size_t(kBatch * kContext) + 2);
    for (auto& t : tokens) t = std::int32_t(r.next() % 256);
    step();  // warm-up: sizes every buffer once, as the first step of a training run does
  }

  void step() {
    const auto BT = std::size_t(kBatch * kContext);
    const std::span<const std::int32_t> all(tokens);
    model.zero_grad();
    loss = model.forward(vwn::host, all.subspan(0, BT), all.subspan(1, BT), all.subspan(2, BT), kContext).total;
    model.backward(vwn::host);
    opt.step(1e-4);
  }

  // Wall-clock milliseconds of one step.
  double timed_step() {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
};

double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  const std::size_t n = x.size();
  return n == 0 ? NAN : n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

template <int M, int N, bool Dynamic>
void BM_train_step(benchmark::State& state) {
  trainer<M, N, Dynamic> t(state.range(0), state.range(1) != 0);
  std::vector<double> ms;
  for (auto _ : state) {
    ms.push_back(t.timed_step());
    benchmark::DoNotOptimize(t.loss);
  }
  if (!std::isfinite(t.loss)) state.SkipWithError("non-finite loss");
  state.SetItemsProcessed(int64_t(state.iterations()) * kBatch * kContext);
  state.counters["loss"] = t.loss;
  state.counters["median_ms"] = median(ms);
}

// One iteration = one step of the (1,1) baseline and one of (2,3) dynamic, in alternating order.
void BM_overhead(benchmark::State& state) {
  trainer<1, 1, false> base(state.range(0), false);
  trainer<2, 3, true> vwn(state.range(0), false);
  std::vector<double> tb, tv, ratio;
  bool base_first = true;
  for (auto _ : state) {
    double b, v;
    if (base_first) {
      b = base.timed_step();
      v = vwn.timed_step();
    } else {
      v = vwn.timed_step();
      b = base.timed_step();
    }
    base_first = !base_first;
    tb.push_back(b);
    tv.push_back(v);
    ratio.push_back(v / b);
    state.SetIterationTime(1e-3 * (b + v));
  }
  state.counters["base_ms"] = median(tb);
  state.counters["vwn_ms"] = median(tv);
  state.counters["overhead_pct"] = 100 * (median(ratio) - 1);
}

// One iteration = one step of each connection family offered for (M, N), dynamic with MTP, in rotating order.
template <int M, int N>
void BM_connections(benchmark::State& state) {
  std::vector<std::string> names{"vwn", "mhc"};
  if (N <= vwn::mhc_lite_connection::max_n) names.push_back("mhc-lite");
  std::vector<std::unique_ptr<trainer<M, N, true>>> t;
  for (const std::string& c : names) t.push_back(std::make_unique<trainer<M, N, true>>(state.range(0), true, c));
  const std::size_t k = names.size();
  std::vector<std::vector<double>> ms(k), ratio(k);
  std::size_t first = 0;
  for (auto _ : state) {
    std::vector<double> now(k);
    double total = 0;
    for (std::size_t i = 0; i < k; ++i) {
      const std::size_t c = (first + i) % k;
      now[c] = t[c]->timed_step();
      total += now[c];
    }
    first = (first + 1) % k;
    for (std::size_t c = 0; c < k; ++c) ms[c].push_back(now[c]), ratio[c].push_back(now[c] / now[0]);
    state.SetIterationTime(1e-3 * total);
  }
  for (std::size_t c = 0; c < k; ++c) {
    if (!std::isfinite(t[c]->loss)) state.SkipWithError(("non-finite loss in " + names[c]).c_str());
    state.counters[names[c] + "_ms"] = median(ms[c]);
    if (c > 0) state.counters[names[c] + "_over_vwn"] = median(ratio[c]);
  }
}

}  // namespace

// Extra flag: --steps=N runs every benchmark for exactly N steps (N pairs for BM_overhead) after its warm-up
// step, instead of Google Benchmark's adaptive count (which builds the model again for every trial count).
int main(int argc, char** argv) {
  std::int64_t steps = 0;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--steps=", 0) == 0)
      steps = std::stoll(a.substr(8));
    else
      args.push_back(argv[i]);
  }
  auto fix = [&](benchmark::internal::Benchmark* b) {
    b->Unit(benchmark::kMillisecond);
    if (steps > 0) b->Iterations(steps);
    return b;
  };
  fix(benchmark::RegisterBenchmark("BM_train_step<1, 1, false>", BM_train_step<1, 1, false>))
      ->Args({256, 0})->Args({512, 0})->UseRealTime();
  fix(benchmark::RegisterBenchmark("BM_train_step<2, 3, true>", BM_train_step<2, 3, true>))
      ->Args({256, 0})->Args({512, 0})->Args({256, 1})->Args({512, 1})->UseRealTime();
  fix(benchmark::RegisterBenchmark("BM_train_step<8, 32, true>", BM_train_step<8, 32, true>))
      ->Args({256, 1})->Args({512, 1})->UseRealTime();
  fix(benchmark::RegisterBenchmark("BM_overhead", BM_overhead))->Arg(256)->Arg(512)->UseManualTime();
  // The connection families at the paper's (1,4), the practical (2,3) and VWN's (8,32), D = 128 (the scaling
  // experiment's width) and 256, where the build compiles the shape.
  if (vwn::is_compiled_shape(1, 4))
    fix(benchmark::RegisterBenchmark("BM_connections<1, 4>", BM_connections<1, 4>))->Arg(128)->Arg(256)->UseManualTime();
  if (vwn::is_compiled_shape(2, 3))
    fix(benchmark::RegisterBenchmark("BM_connections<2, 3>", BM_connections<2, 3>))->Arg(128)->Arg(256)->UseManualTime();
  if (vwn::is_compiled_shape(8, 32))
    fix(benchmark::RegisterBenchmark("BM_connections<8, 32>", BM_connections<8, 32>))->Arg(128)->Arg(256)->UseManualTime();
  // The products on the configured BLAS, as in vwn-train (VWN_BLAS=off in the environment: Eigen's own product).
  benchmark::AddCustomContext("products", vwn::model::use_default_blas().name);
  int n = int(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
