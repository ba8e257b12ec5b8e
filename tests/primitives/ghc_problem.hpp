#pragma once
// One GHC sub-layer as a test problem, and its finite-difference gradient check.

#include <support/common.hpp>

namespace vwn_test {

// Runs one sub-layer with loss L = sum(X gX) + sum(C gC) + sum(H_out gH_out) for fixed random upstream
// gradients, with Z an independent input (the backbone output).
template <class Layer>
struct sublayer_problem {
  using S = typename Layer::scalar;
  static constexpr int M = Layer::m, N = Layer::n;
  Layer layer;
  index_t T, D, Dw;
  vwn::matrix<S> H, Z, gX, gC, gHout;
  vwn::matrix<S> X, C, Hout, dZ, dH;
  typename Layer::workspace ws;

  sublayer_problem(index_t db, index_t tokens, std::mt19937_64& gen)
      : layer(M * db), T(tokens), D(M * db), Dw(N * db) {
    H = randn<S>(T, Dw, gen);
    Z = randn<S>(T, D, gen);
    gX = randn<S>(T, D, gen);
    gC = randn<S>(T, Dw, gen);
    gHout = randn<S>(T, Dw, gen);
    X.resize(T, D), C.resize(T, Dw), Hout.resize(T, Dw), dZ.resize(T, D), dH.resize(T, Dw);
  }

  // Moves every parameter away from its initial value so that every gradient path is exercised.
  void randomise_parameters(std::mt19937_64& gen) {
    auto& p = layer.params;
    p.alpha += randn<S>(N, M + N, gen, 0.3);
    p.beta += randn<S>(N, M, gen, 0.3);
    if constexpr (Layer::is_dynamic) {
      p.W_alpha = randn<S>(layer.block_width(), M + N, gen, 0.5);
      p.W_beta = randn<S>(layer.block_width(), M, gen, 0.5);
      p.S_alpha.array() += randn<S>(N, M + N, gen, 0.3).array();
      p.S_beta.array() += randn<S>(N, M, gen, 0.3).array();
      p.g.array() += randn<S>(layer.block_width(), 1, gen, 0.3).array();
    }
  }

  void forward() {
    poison(X), poison(C), poison(Hout);
    layer.forward_width(vwn::host, H, X, C, ws);
    layer.forward_depth(vwn::host, Z, C, Hout, ws);
  }

  double loss() {
    forward();
    return double((X.array() * gX.array()).sum() + (C.array() * gC.array()).sum() +
                  (Hout.array() * gHout.array()).sum());
  }

  void backward() {
    poison(dZ), poison(dH);
    layer.zero_grad();
    layer.backward_depth(vwn::host, gHout, Z, dZ, ws);
    const vwn::matrix<S> dC = gHout + gC;
    layer.backward_width(vwn::host, H, gX, dC, dH, ws);
  }
};

template <class Layer>
void gradient_check() {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  constexpr int db = Layer::n >= 64 ? 4 : 6;
  sublayer_problem<Layer> p(db, 3, gen);
  p.randomise_parameters(gen);
  p.forward();
  p.backward();
  auto& v = p.layer.params;
  auto& g = p.layer.grads;
  // Inputs: H (through the mixing and, for DGHC, through the coefficients) and Z.
  std::vector<fd_target> targets{target("dH", p.H, p.dH), target("dZ", p.Z, p.dZ),
                                 target("alpha", v.alpha, g.alpha), target("beta", v.beta, g.beta)};
  if constexpr (Layer::is_dynamic) {
    targets.push_back(target("W_alpha", v.W_alpha, g.W_alpha));
    targets.push_back(target("W_beta", v.W_beta, g.W_beta));
    targets.push_back(target("S_alpha", v.S_alpha, g.S_alpha));
    targets.push_back(target("S_beta", v.S_beta, g.S_beta));
    targets.push_back(target("g", v.g, g.g));
  }
  // Snapshot analytic results: loss() below reruns forward and would not touch grads, but dH/dZ are
  // members, so copy them first.
  const vwn::matrix<double> dH = p.dH, dZ = p.dZ;
  targets[0].analytic = dH.data();
  targets[1].analytic = dZ.data();
  check_gradients([&] { return p.loss(); }, targets);
}

}  // namespace vwn_test
