// Instantiates a custom (m, n) = (3, 5) dynamic GHC, runs one sub-layer forward and backward on a random
// batch (checking the paper's initialisation identity), and prints the per-token cost table of section 3.5
// for the paper's configurations and the custom one.
//
//   vwn_costs [D=960] [tokens=256]

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <vwn/vwn.hpp>

namespace {

template <int M, int N>
void cost_row(vwn::index_t D) {
  const vwn::ghc_cost c = vwn::cost<M, N>(D);
  const double d = double(D);
  std::printf("%-8s %5.2f %8lld %9lld %10.1f %10.1f %10.1f %10.1f %11.1f %12.1f\n", vwn::width_shape<M, N>::name().c_str(),
              vwn::width_shape<M, N>::ratio, static_cast<long long>(D / M), static_cast<long long>(N * (D / M)),
              c.norm_flops / d, c.coefficient_flops / d, c.width_flops / d, c.depth_flops / d,
              c.dynamic_forward_flops() / d, c.width_bytes + c.depth_bytes);
}

}  // namespace

int main(int argc, char** argv) {
  const vwn::index_t D = argc > 1 ? std::atol(argv[1]) : 960;
  const vwn::index_t T = argc > 2 ? std::atol(argv[2]) : 256;
  constexpr int M = 3, N = 5;
  try {
    vwn::dghc<M, N> layer(D);  // throws std::invalid_argument unless D % 3 == 0
    std::printf("vwn %d.%d.%d: custom configuration vwn::dghc<%d, %d>, D = %lld, db = %lld, D' = %lld, %lld tokens\n",
                VWN_VERSION_MAJOR, VWN_VERSION_MINOR, VWN_VERSION_PATCH, M, N, static_cast<long long>(D),
                static_cast<long long>(layer.block_width()), static_cast<long long>(layer.wide_width()),
                static_cast<long long>(T));

    vwn::rng gen(42);
    vwn::matrix<float> H(T, layer.wide_width()), Z(T, D), X(T, D), C(T, layer.wide_width()), Hout(T, layer.wide_width());
    gen.fill_normal(H, 1.0);
    gen.fill_normal(Z, 1.0);
    vwn::dghc<M, N>::workspace ws;
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward_width(vwn::host, H, X, C, ws);
    layer.forward_depth(vwn::host, Z, C, Hout, ws);
    const auto t1 = std::chrono::steady_clock::now();
    // At init H_out[j] = H[j] + Z[j mod m] exactly.
    double worst = 0;
    const vwn::index_t db = layer.block_width();
    for (vwn::index_t t = 0; t < T; ++t)
      for (int j = 0; j < N; ++j)
        worst = std::max<double>(worst, (Hout.row(t).segment(j * db, db) -
                                         (H.row(t).segment(j * db, db) + Z.row(t).segment((j % M) * db, db)))
                                            .cwiseAbs()
                                            .maxCoeff());
    vwn::matrix<float> dZ(T, D), dH(T, layer.wide_width());
    layer.backward_depth(vwn::host, Hout, Z, dZ, ws);
    layer.backward_width(vwn::host, H, X, Hout, dH, ws);
    const auto t2 = std::chrono::steady_clock::now();
    std::printf("forward %.3f ms, backward %.3f ms, init identity max error %g (must be 0)\n",
                std::chrono::duration<double, std::milli>(t1 - t0).count(),
                std::chrono::duration<double, std::milli>(t2 - t1).count(), worst);
    if (worst != 0) return 1;

    std::printf("\nPer-token cost of one GHC sub-layer (paper section 3.5), FLOPs in units of D, bytes for float32:\n");
    std::printf("%-8s %5s %8s %9s %10s %10s %10s %10s %11s %12s\n", "(m,n)", "r", "db", "D'", "norm/D", "coef/D",
                "width/D", "depth/D", "DGHC fwd/D", "fwd bytes");
    cost_row<1, 1>(D);
    cost_row<1, 4>(D);
    cost_row<2, 3>(D);
    cost_row<4, 8>(D);
    cost_row<8, 16>(D);
    cost_row<8, 32>(D);
    cost_row<8, 64>(D);
    cost_row<M, N>(D);
    std::printf("\nPer-kernel bytes and roofline times on a GPU: vwn_roofline (docs/cuda.md)\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vwn_costs: %s\n", e.what());
    return 2;
  }
  return 0;
}
