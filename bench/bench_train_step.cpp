// One training step (forward, backward, AdamW update) of the reference transformer on the host, float32:
// D = 256 and 512, 4 layers, context 256, batch 4, for the (1,1) baseline without MTP, (2,3) DGHC and
// (8,32) DGHC (both with MTP, as the paper trains VWN). bench/train_step_vs_torch.sh runs this beside the
// same step in PyTorch with the same thread count and prints the ratios.

#include <benchmark/benchmark.h>

#include <vector>

#include <vwn/model.hpp>
#include <vwn/optim.hpp>

namespace {

constexpr vwn::index_t kBatch = 4, kContext = 256, kLayers = 4;

template <int M, int N, bool Dynamic>
void BM_train_step(benchmark::State& state) {
  vwn::model::config c;
  c.width = state.range(0);
  c.layers = kLayers;
  c.heads = c.width / 64;
  c.context = kContext;
  c.mtp = state.range(1) != 0;
  vwn::model::transformer<M, N, Dynamic, float> model(c);
  vwn::optim::adamw<float> opt;
  model.visit([&](const std::string& name, float* p, float* g, vwn::index_t size, bool decay) {
    opt.add(name, p, g, size, decay);
  });
  vwn::rng r(3);
  const auto BT = std::size_t(kBatch * kContext);
  std::vector<std::int32_t> tokens(BT + 2);
  for (auto& t : tokens) t = std::int32_t(r.next() % 256);
  const std::span<const std::int32_t> all(tokens);
  double loss = 0;
  for (auto _ : state) {
    model.zero_grad();
    loss = model.forward(vwn::host, all.subspan(0, BT), all.subspan(1, BT), all.subspan(2, BT), kContext).total;
    model.backward(vwn::host);
    opt.step(1e-4);
    benchmark::DoNotOptimize(loss);
  }
  if (!std::isfinite(loss)) state.SkipWithError("non-finite loss");
  state.SetItemsProcessed(int64_t(state.iterations()) * int64_t(BT));
  state.counters["loss"] = loss;
}

}  // namespace

BENCHMARK(BM_train_step<1, 1, false>)->Args({256, 0})->Args({512, 0})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_train_step<2, 3, true>)->Args({256, 0})->Args({512, 0})->Args({256, 1})->Args({512, 1})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_train_step<8, 32, true>)->Args({256, 1})->Args({512, 1})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
