#pragma once
/// \file device_timing.hpp
/// The timing structure of the device benchmarks (bench_ghc_cuda.cu), host code over an event type of the
/// caller's: CUDA events there, a recording stand-in in the tests (tests/cuda/test_runtime.cu), so that the
/// structure is checked on a machine without a GPU.

namespace vwn_bench {

/// Back-to-back calls of the benchmarked operation per timed window: the host-side work of each call (argument
/// checks, launches) overlaps the device work of the calls queued before it, so the window measures the device
/// rather than the host.
inline constexpr int calls_per_window = 8;

/// One timed sample: `flush()` (evicting the operands from the L2 cache, queued before the window opens), then
/// `start.record()`, `calls` calls of `run()`, `stop.record()`. Returns `stop.elapsed_since(start) / calls`: the
/// time of one call, in the event's unit.
template <class Event, class Run, class Flush>
double time_per_call(Event& start, Event& stop, Run&& run, Flush&& flush, int calls = calls_per_window) {
  flush();
  start.record();
  for (int c = 0; c < calls; ++c) run();
  stop.record();
  return double(stop.elapsed_since(start)) / calls;
}

}  // namespace vwn_bench
