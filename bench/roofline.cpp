// The roofline of every device GHC kernel (docs/cuda.md): for a dynamic GHC with bf16 activations, the bytes each
// kernel must move per token and the FLOPs it must do (vwn::cost, the counts the device benchmark reports against),
// their ratio, and the least time `T` tokens can take on an H100 and an H200 SXM: the larger of bytes / HBM
// bandwidth and FLOPs / FP32 (CUDA-core) peak. The kernels compute in float on the CUDA cores, not on tensor cores.
//
//   vwn_roofline [tokens=16384]    (prints a Markdown table)

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <vwn/core/shape.hpp>

namespace {

struct gpu {
  const char* name;
  double bytes_per_s, flops_per_s;
};
// HBM bandwidth and dense FP32 (non-tensor) peak of the SXM parts (NVIDIA's data sheets).
constexpr gpu gpus[] = {{"H100", 3.35e12, 67e12}, {"H200", 4.8e12, 67e12}};

void row(const std::string& shape, long long D, const char* kernel, double bytes, double flops, double T) {
  std::printf("| %s | %lld | %s | %.0f | %.0f | %.2f |", shape.c_str(), D, kernel, bytes, flops, flops / bytes);
  for (const gpu& g : gpus) {
    const double t_mem = T * bytes / g.bytes_per_s, t_flop = T * flops / g.flops_per_s;
    std::printf(" %.1f (%s) |", 1e6 * std::max(t_mem, t_flop), t_mem >= t_flop ? "memory" : "FP32");
  }
  std::printf("\n");
}

template <int M, int N>
void kernels(vwn::index_t D, double T) {
  const vwn::ghc_cost c = vwn::cost<M, N>(D, 2.0);  // bf16 activations
  const std::string shape = "(" + std::to_string(M) + "," + std::to_string(N) + ")";
  const double width_flops = c.norm_flops + c.coefficient_flops + c.width_flops;
  row(shape, D, "forward width (fused DGHC)", c.width_bytes + c.saved_bytes, width_flops, T);
  row(shape, D, "forward depth", c.depth_bytes + c.coefficient_bytes, c.depth_flops, T);
  row(shape, D, "backward depth", c.depth_backward_bytes + c.coefficient_bytes, 2 * c.depth_flops, T);
  row(shape, D, "backward width (+ projection gradient)", c.width_backward_bytes + c.backward_state_bytes,
      2 * width_flops, T);
}

}  // namespace

int main(int argc, char** argv) {
  const double T = argc > 1 ? std::atof(argv[1]) : 16384;
  if (!(T >= 1)) {
    std::fprintf(stderr, "vwn_roofline: tokens: expected a number >= 1, got %s\n", argv[1]);
    return 2;
  }
  std::printf("Dynamic GHC, bf16 activations, float state, %.0f tokens; least time in microseconds and what bounds "
              "it\n\n", T);
  std::printf("| (m,n) | D | kernel | bytes / token | FLOPs / token | FLOPs / byte |");
  for (const gpu& g : gpus) std::printf(" %s us |", g.name);
  std::printf("\n|---|---:|---|---:|---:|---:|---:|---:|\n");
  for (vwn::index_t D : {1024, 4096}) {
    kernels<2, 3>(D, T);
    kernels<4, 8>(D, T);
  }
  kernels<8, 64>(4096, T);
  return 0;
}
