#pragma once
// A host back end whose GHC width connection is the device's staged kernel bodies (vwn::cuda::detail::staged_width,
// and staged_width_backward with the column passes of the dynamic backward), run on the host by vwn::cuda::detail::host_block: one thread index after the
// other, phase after phase, over the grid the device would launch. Everything else is the host float module
// (float storage) or its bf16 simulation (bf16 storage, support/bf16_simulation.hpp). The shared test bodies run on
// it without a GPU, so the staged kernel's indexing, staging, sums and saved state are checked on any machine with
// nvcc; the device tests check the same code where a GPU is.

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <vwn/cuda/ghc.cuh>

#include <support/backend.hpp>
#include <support/bf16_simulation.hpp>

namespace vwn_test {
namespace emulated {

// Host memory of `count` values of S, 16-byte aligned (as cudaMalloc's, so the vector path is taken where the
// device would take it), filled with NaN.
template <class S>
struct aligned_values {
  std::vector<uint4> storage;
  S* data;
  explicit aligned_values(std::size_t count) : storage((count * sizeof(S) + 15) / 16 + 1) {
    data = reinterpret_cast<S*>(storage.data());
    for (std::size_t i = 0; i < count; ++i) data[i] = vwn::cuda::from_float<S>(std::numeric_limits<float>::quiet_NaN());
  }
};

// The staged width connection of a GHC with host parameters `params` (float) and slot width `db` on the host:
// H (stored as S) -> X, C (stored as S), and, dynamic, rstd (`T n`) and P (`T n x (2m+n)`).
// The device's parameter pointers over a host module's parameters (float).
template <bool Dynamic, class Params>
vwn::cuda::detail::ghc_param_ptrs pointers(const Params& params) {
  if constexpr (Dynamic)
    return {params.alpha.data(), params.beta.data(), params.W_alpha.data(), params.W_beta.data(),
            params.S_alpha.data(), params.S_beta.data(), params.g.data()};
  else
    return {params.alpha.data(), params.beta.data(), nullptr, nullptr, nullptr, nullptr, nullptr};
}

// The folded projection weight (`(2m+n) x db`), as fold_weight_kernel prepares it.
template <int M, int N>
std::vector<float> folded_weight(const vwn::cuda::detail::ghc_param_ptrs& p, int db) {
  std::vector<float> gw(std::size_t(2 * M + N) * std::size_t(db), std::numeric_limits<float>::quiet_NaN());
  for (index_t e = 0; e < index_t(gw.size()); ++e) vwn::cuda::detail::fold_weight_entry<M, N>(p, gw.data(), db, e);
  return gw;
}

// A host matrix stored as S (the values are representable: the back end's inputs are rounded to its storage).
template <class S>
aligned_values<S> stored(vwn::matrix_cref<float> m) {
  aligned_values<S> v(std::size_t(m.size()));
  for (index_t t = 0; t < m.rows(); ++t)
    for (index_t k = 0; k < m.cols(); ++k) v.data[t * m.cols() + k] = vwn::cuda::from_float<S>(m(t, k));
  return v;
}

// Widens values stored as S into a host matrix of the same shape.
template <class S>
void widen(const aligned_values<S>& v, vwn::matrix_ref<float> m) {
  for (index_t t = 0; t < m.rows(); ++t)
    for (index_t k = 0; k < m.cols(); ++k) m(t, k) = vwn::cuda::to_float(v.data[t * m.cols() + k]);
}

// Shared memory of one block, NaN in every float and bf16.
inline std::vector<uint4> shared_memory(std::size_t bytes) {
  std::vector<uint4> smem(bytes / 16 + 1);
  std::memset(smem.data(), 0xff, smem.size() * sizeof(uint4));
  return smem;
}

template <int M, int N, class S, bool Dynamic, class Params>
void staged_forward_width(const Params& params, int db, vwn::matrix_cref<float> H, vwn::matrix_ref<float> X,
                          vwn::matrix_ref<float> C, float* rstd, float* P, float* Q) {
  namespace d = vwn::cuda::detail;
  const index_t T = H.rows();
  const aligned_values<S> h = stored<S>(H);
  aligned_values<S> x(std::size_t(X.size())), c(std::size_t(C.size()));
  const d::ghc_param_ptrs p = pointers<Dynamic>(params);
  std::vector<float> gw;
  if constexpr (Dynamic) gw = folded_weight<M, N>(p, db);
  const d::staged_width_args<S> args{
      h.data, H.cols(), x.data, X.cols(), c.data, C.cols(), p, gw.data(), db, T, rstd, P, Q,
      d::staged_width_vector<S>(db, {{h.data, H.cols()}, {x.data, X.cols()}, {c.data, C.cols()}})};
  std::vector<uint4> smem = shared_memory(d::staged_width_layout<M, N, S, Dynamic>::bytes(db));
  const index_t blocks = index_t(d::token_blocks(T));
  for (index_t b = 0; b < blocks; ++b)
    d::staged_width<M, N, S, Dynamic>(d::host_block{b, blocks}, args, reinterpret_cast<unsigned char*>(smem.data()));
  widen(x, X);
  widen(c, C);
}

// The staged backward of a dynamic width connection on the host, then the device's second passes (the coefficient
// partials summed in block order, the projection gradient's column passes), accumulating into `grads`.
template <int M, int N, class S, class Params, class Workspace>
void staged_backward_width(const Params& params, Params& grads, int db, vwn::matrix_cref<float> H,
                           vwn::matrix_cref<float> dX, vwn::matrix_cref<float> dC, vwn::matrix_ref<float> dH,
                           const Workspace& ws, const std::vector<float>& Q) {
  namespace d = vwn::cuda::detail;
  constexpr int K = 2 * M + N, NK = N * K;
  const index_t T = H.rows();
  const aligned_values<S> h = stored<S>(H), dx = stored<S>(dX), dc = stored<S>(dC);
  aligned_values<S> dh(std::size_t(dH.size()));
  const d::ghc_param_ptrs p = pointers<true>(params);
  const std::vector<float> gw = folded_weight<M, N>(p, db);
  const index_t blocks = index_t(d::token_blocks(T));
  std::vector<float> dQ(std::size_t(T * NK), std::numeric_limits<float>::quiet_NaN()),
      partial(std::size_t(blocks * 2 * NK), std::numeric_limits<float>::quiet_NaN());
  const d::staged_backward_args<S> args{
      h.data, H.cols(), dx.data, dX.cols(), dc.data, dC.cols(), dh.data, dH.cols(), p, gw.data(), db, T,
      ws.P.data(), Q.data(), ws.rstd.data(), ws.dB.data(), dQ.data(), partial.data(),
      d::staged_width_vector<S>(db, {{h.data, H.cols()}, {dx.data, dX.cols()}, {dc.data, dC.cols()},
                                     {dh.data, dH.cols()}})};
  std::vector<uint4> smem = shared_memory(d::staged_backward_layout<M, N, S>::bytes(db));
  for (index_t b = 0; b < blocks; ++b)
    d::staged_width_backward<M, N, S>(d::host_block{b, blocks}, args, reinterpret_cast<unsigned char*>(smem.data()));
  widen(dh, dH);
  const d::dghc_coefficient_target<M, N> target{grads.alpha.data(), grads.beta.data(), grads.S_alpha.data(),
                                                grads.S_beta.data()};
  for (int e = 0; e < 2 * NK; ++e) d::sum_partials_entry(partial.data(), int(blocks), 2 * NK, target, e);
  const int groups = int(d::token_groups(T, d::ceil_div(db, d::column_threads)));
  std::vector<float> column_partial(std::size_t(groups) * K * std::size_t(db), std::numeric_limits<float>::quiet_NaN());
  for (int grp = 0; grp < groups; ++grp)
    for (int col = 0; col < db; ++col)
      d::projection_grad_column<M, N>(h.data, H.cols(), ws.rstd.data(), dQ.data(), column_partial.data(), db, T,
                                      groups, col, grp);
  std::vector<float> A(std::size_t(K) * std::size_t(db), 0.f);  // the groups summed in order, as on the device
  for (int e = 0; e < K * db; ++e) d::sum_partials_entry(column_partial.data(), groups, K * db, d::plain_target{A.data()}, e);
  for (int col = 0; col < db; ++col)
    d::projection_grad_finish_column<M, N>(A.data(), 1, db, p, grads.W_alpha.data(), grads.W_beta.data(),
                                           grads.g.data(), col);
}

// The host module of the back end's storage.
template <int M, int N, bool Dynamic, class S>
using base_ghc = std::conditional_t<std::is_same_v<S, float>, vwn::basic_ghc<M, N, float, Dynamic>,
                                    bf16_simulation::ghc<M, N, Dynamic>>;

// The host module with its width connection (forward, and the backward of a dynamic GHC) replaced by the staged
// kernel bodies. The projections before the tanh, which the device saves and the host does not, are kept here.
template <int M, int N, bool Dynamic, class S>
class ghc : public base_ghc<M, N, Dynamic, S> {
  using base = base_ghc<M, N, Dynamic, S>;
  mutable std::vector<float> Q_;

 public:
  using base::base;
  using typename base::workspace;
  void forward_width(vwn::host_t policy, vwn::matrix_cref<float> H, vwn::matrix_ref<float> X, vwn::matrix_ref<float> C,
                     workspace& ws) const {
    base::forward_width(policy, H, X, C, ws);  // the argument checks and the saved state's sizes; all replaced below
    const float nan = std::numeric_limits<float>::quiet_NaN();
    X.setConstant(nan);
    C.setConstant(nan);
    float *rstd = nullptr, *P = nullptr;
    if constexpr (Dynamic) {
      ws.rstd.setConstant(nan);
      ws.P.setConstant(nan);
      rstd = ws.rstd.data(), P = ws.P.data();
      Q_.assign(std::size_t(ws.P.size()), nan);
    }
    staged_forward_width<M, N, S, Dynamic>(this->params, int(this->block_width()), H, X, C, rstd, P, Q_.data());
  }
  void backward_width(vwn::host_t policy, vwn::matrix_cref<float> H, vwn::matrix_cref<float> dX,
                      vwn::matrix_cref<float> dC, vwn::matrix_ref<float> dH, workspace& ws) {
    if constexpr (Dynamic) {
      const std::string where = "emulated staged ghc::backward_width";  // the host module's checks, as the device's
      vwn::detail::ghc_checks{where, this->width(), this->wide_width()}.backward_width(ws.tokens, H, dX, dC, dH);
      dH.setConstant(std::numeric_limits<float>::quiet_NaN());
      staged_backward_width<M, N, S>(this->params, this->grads, int(this->block_width()), H, dX, dC, dH, ws, Q_);
    } else {
      base::backward_width(policy, H, dX, dC, dH, ws);
    }
  }
};

}  // namespace emulated

// The back end: the host float one (S = float) or its bf16 simulation, with the emulated staged GHC forward.
template <class S>
struct emulated_backend : std::conditional_t<std::is_same_v<S, float>, host_backend<float>, bf16_simulation_backend> {
  template <int M, int N, bool Dynamic>
  using ghc = emulated::ghc<M, N, Dynamic, S>;
  static std::string name() { return std::is_same_v<S, float> ? "emulated_staged_float" : "emulated_staged_bf16"; }
};

}  // namespace vwn_test
