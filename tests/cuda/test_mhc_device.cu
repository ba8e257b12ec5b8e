// The manifold-constrained families on the device back end (<vwn/cuda/mhc.cuh>) against the host back end
// (<vwn/mhc.hpp>, itself checked by finite differences and the PyTorch reference in tests/primitives):
//  - EmulatedManifold*: the device's step functions run on the host (an executor that loops over the entries
//    instead of launching a kernel), on any machine with nvcc, CI included;
//  - CudaFloatMhc*: the device class on a GPU (skipped without one).
// Both run one forward and backward of every call on fresh random inputs, parameters drawn away from the initial
// identity, outputs and saved state poisoned with NaN, and compare every output and parameter gradient with the
// host float module.

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>

#include <vwn/cuda/mhc.cuh>
#include <vwn/mhc.hpp>

#include "backend.cuh"

namespace {

using vwn::index_t;
namespace d = vwn::cuda::detail;

template <int M_, int N_, bool Dynamic_, class C_>
struct mhc_case {
  static constexpr int M = M_, N = N_;
  static constexpr bool Dynamic = Dynamic_;
  using Connection = C_;
};

std::uint64_t fresh_seed() { return std::random_device{}() * 0x9E3779B97F4A7C15ull + std::random_device{}(); }

// Everything one forward and backward produce: outputs and parameter gradients, as float matrices.
struct results {
  vwn::matrix<float> X, C, Hout, dZ, dH;
  std::vector<std::vector<float>> grads;  // in the order of vwn::manifold_tensors
};

// The inputs of a case: D = m db, T tokens; parameters away from the identity (pre, post logits N(0, 1), carry
// N(0, 2^2): Sinkhorn not converged after 20 iterations; phi N(0, 0.3^2), gates N(0, 0.7^2)).
template <class Case>
struct inputs {
  static constexpr int M = Case::M, N = Case::N;
  using host_ghc = vwn::basic_ghc<M, N, float, Case::Dynamic, typename Case::Connection>;
  int db;
  index_t T, D, Dw;
  host_ghc ref;
  vwn::matrix<float> H, Z, dHout, dX, dC;
  inputs(int db_, index_t T_, std::mt19937_64& gen) : db(db_), T(T_), D(index_t(M) * db_), Dw(index_t(N) * db_), ref(D) {
    std::normal_distribution<float> n01(0.f, 1.f);
    const auto draw = [&](index_t r, index_t c) {
      vwn::matrix<float> m(r, c);
      for (index_t i = 0; i < m.size(); ++i) m.data()[i] = n01(gen);
      return m;
    };
    float* bias = ref.params.bias.data();
    for (int k = 0; k < host_ghc::logits; ++k) bias[k] = (k < 2 * N * M ? 1.f : 2.f) * n01(gen);
    if constexpr (Case::Dynamic) {
      for (index_t i = 0; i < ref.params.phi.size(); ++i) ref.params.phi.data()[i] = 0.3f * n01(gen);
      for (int g = 0; g < 3; ++g) ref.params.gate(g) = 0.7f * n01(gen);
    }
    H = draw(T, Dw);
    Z = draw(T, D);
    dHout = draw(T, Dw);
    dX = draw(T, D);
    dC = draw(T, Dw);
  }

  // Rounds every input to bf16, as a back end storing bf16 holds them (the device rounds to nearest even).
  void round_to_bf16() {
    for (vwn::matrix<float>* m : {&H, &Z, &dHout, &dX, &dC})
      for (index_t i = 0; i < m->size(); ++i)
        m->data()[i] = vwn::cuda::to_float(vwn::cuda::from_float<vwn::cuda::bf16>(m->data()[i]));
  }

  // The host module's results; the depth connection reads `C_stored` where given (the carried state as a back end
  // stored it), else the host's own `C`.
  results host(const vwn::matrix<float>* C_stored = nullptr) {
    results r;
    r.X.resize(T, D);
    r.C.resize(T, Dw);
    r.Hout.resize(T, Dw);
    r.dZ.resize(T, D);
    r.dH.resize(T, Dw);
    typename host_ghc::workspace ws;
    ref.zero_grad();
    ref.forward_width(vwn::host, H, r.X, r.C, ws);
    ref.forward_depth(vwn::host, Z, C_stored ? *C_stored : r.C, r.Hout, ws);
    ref.backward_depth(vwn::host, dHout, Z, r.dZ, ws);
    ref.backward_width(vwn::host, H, dX, dC, r.dH, ws);
    ref.grads.visit([&](std::string_view, float* g, index_t size, bool) { r.grads.emplace_back(g, g + size); });
    return r;
  }
};

constexpr float nan = std::numeric_limits<float>::quiet_NaN();

// The host executor of the steps: every entry in turn.
struct host_steps {
  template <class Step>
  void operator()(index_t count, const Step& step) const {
    for (index_t i = 0; i < count; ++i) step(i);
  }
};

// Values stored as S (the inputs are representable in S), and back as a float matrix of the given shape.
template <class S>
std::vector<S> stored(const vwn::matrix<float>& m) {
  std::vector<S> v(std::size_t(m.size()));
  for (index_t i = 0; i < m.size(); ++i) v[std::size_t(i)] = vwn::cuda::from_float<S>(m.data()[i]);
  return v;
}
template <class S>
vwn::matrix<float> widened(const std::vector<S>& v, index_t rows, index_t cols) {
  vwn::matrix<float> m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = vwn::cuda::to_float(v[std::size_t(i)]);
  return m;
}

// The device's steps run on the host over host buffers (NaN-filled), activations stored as S, with the parameters
// of `in.ref`.
template <class Case, class S = float>
results emulated(inputs<Case>& in) {
  constexpr int M = Case::M, N = Case::N, K = inputs<Case>::host_ghc::logits;
  constexpr bool Dyn = Case::Dynamic;
  using sz = d::manifold_sizes<M, N>;
  const index_t T = in.T;
  const vwn::manifold_rule rule = in.ref.rule();
  const auto buffer = [](index_t n) { return std::vector<float>(std::size_t(n), nan); };
  std::vector<float> bias(in.ref.params.bias.data(), in.ref.params.bias.data() + K);
  std::vector<float> phi(in.ref.params.phi.data(), in.ref.params.phi.data() + in.ref.params.phi.size());
  std::vector<float> gate(in.ref.params.gate.data(), in.ref.params.gate.data() + in.ref.params.gate.size());
  std::vector<float> dbias(std::size_t(K), 0.f), dphi(phi.size(), 0.f), dgate(gate.size(), 0.f);
  const int lanes = Dyn ? d::manifold_lanes(T) : 1;
  std::vector<float> r = buffer(T), q = buffer(T * K), ab = buffer(Dyn ? T * sz::NKC : sz::NKC), dB = buffer(T * sz::NM),
                     da = buffer(T * sz::NA), dz = buffer(T * K), dS = buffer(T * K), tok = buffer(T * 4),
                     sum = buffer(sz::NKC), scratch = buffer(index_t(lanes) * sz::token_floats(rule, K));
  d::manifold_state_ptrs p;
  p.bias = bias.data();
  p.phi = Dyn ? phi.data() : nullptr;
  p.gate = Dyn ? gate.data() : nullptr;
  p.dbias = dbias.data();
  p.dphi = Dyn ? dphi.data() : nullptr;
  p.dgate = Dyn ? dgate.data() : nullptr;
  p.r = r.data();
  p.q = q.data();
  p.ab = ab.data();
  p.dB = dB.data();
  p.da = da.data();
  p.dz = dz.data();
  p.dS = dS.data();
  p.tok = tok.data();
  p.sum = sum.data();
  p.scratch = scratch.data();
  p.lanes = lanes;
  p.lane_floats = sz::token_floats(rule, K);
  p.db = in.db;
  p.T = T;
  results out;
  const auto poisoned = [](index_t rows, index_t cols) {
    return std::vector<S>(std::size_t(rows * cols), vwn::cuda::from_float<S>(nan));
  };
  std::vector<S> X = poisoned(T, in.D), C = poisoned(T, in.Dw), Hout = poisoned(T, in.Dw), dZ = poisoned(T, in.D),
                 dH = poisoned(T, in.Dw);
  const std::vector<S> H = stored<S>(in.H), Z = stored<S>(in.Z), dHout = stored<S>(in.dHout), dX = stored<S>(in.dX),
                       dC = stored<S>(in.dC);
  const host_steps exec;
  d::manifold_forward_width<M, N, S, Dyn>(exec, H.data(), in.Dw, X.data(), in.D, C.data(), in.Dw, p, rule, K);
  d::manifold_forward_depth<M, N, S, Dyn>(exec, Z.data(), in.D, C.data(), in.Dw, Hout.data(), in.Dw, p);
  d::manifold_backward_depth<M, N, S, Dyn>(exec, dHout.data(), in.Dw, Z.data(), in.D, dZ.data(), in.D, p, rule, K);
  d::manifold_backward_width<M, N, S, Dyn>(exec, H.data(), in.Dw, dX.data(), in.D, dC.data(), in.Dw, dH.data(), in.Dw,
                                           p, rule, K);
  out.X = widened(X, T, in.D);
  out.C = widened(C, T, in.Dw);
  out.Hout = widened(Hout, T, in.Dw);
  out.dZ = widened(dZ, T, in.D);
  out.dH = widened(dH, T, in.Dw);
  out.grads.push_back(std::vector<float>(dbias.begin(), dbias.begin() + N * M));
  out.grads.push_back(std::vector<float>(dbias.begin() + N * M, dbias.begin() + 2 * N * M));
  out.grads.push_back(std::vector<float>(dbias.begin() + 2 * N * M, dbias.end()));
  if constexpr (Dyn) {
    out.grads.push_back(dphi);
    out.grads.push_back(dgate);
  }
  return out;
}

// `got` against `want`, entry by entry: |got - want| <= atol max|want| + rtol |want|, and finite. Both are float
// computations of the same sums in other orders (the host sums per token with Eigen's kernels, the steps one entry
// per thread; the host's GEMMs block the projection's sums): float round-off of sums of up to n db = 264 products,
// and the Sinkhorn backward's 40 normalisations, well inside rtol 1e-4 and atol 1e-5 (outputs); the parameter
// gradients add up T = 37 tokens more (rtol 5e-4, atol 1e-5 of the largest entry: as tests/support/backend.hpp's
// device tolerances).
int outside(const float* got, const float* want, index_t size, double atol, double rtol, std::string* first = nullptr) {
  double scale = 0;
  for (index_t i = 0; i < size; ++i) scale = std::max(scale, std::abs(double(want[i])));
  int bad = 0;
  for (index_t i = 0; i < size; ++i) {
    const double g = got[i], w = want[i];
    if (!(std::isfinite(g) && std::abs(g - w) <= atol * scale + rtol * std::abs(w))) {
      if (first && bad < 5) *first += "\n  entry " + std::to_string(i) + ": got " + std::to_string(g) + ", want " + std::to_string(w);
      ++bad;
    }
  }
  return bad;
}

void expect_close(const float* got, const float* want, index_t size, double atol, double rtol, const std::string& what) {
  std::string first;
  const int bad = outside(got, want, size, atol, rtol, &first);
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << size << " entries outside the tolerance" << first;
}

// Outputs stored as bf16 (`bf16_outputs`): computed in float from the stored values, then rounded once to 8
// significant bits: at most 2^-8 relative; rtol 2^-7 (margin 2) and atol 1e-4 of the largest entry (docs/cuda.md).
void compare(const results& got, const results& want, bool bf16_outputs = false) {
  const double atol = bf16_outputs ? 1e-4 : 1e-5, rtol = bf16_outputs ? 1.0 / 128 : 1e-4;
  expect_close(got.X.data(), want.X.data(), want.X.size(), atol, rtol, "X");
  expect_close(got.C.data(), want.C.data(), want.C.size(), atol, rtol, "C");
  expect_close(got.Hout.data(), want.Hout.data(), want.Hout.size(), atol, rtol, "H_out");
  expect_close(got.dZ.data(), want.dZ.data(), want.dZ.size(), atol, rtol, "dZ");
  expect_close(got.dH.data(), want.dH.data(), want.dH.size(), atol, rtol, "dH");
  ASSERT_EQ(got.grads.size(), want.grads.size());
  double scale = 0;
  for (const auto& g : want.grads)
    for (float v : g) scale = std::max(scale, double(std::abs(v)));
  const char* names[5] = {"d b_pre", "d b_post", "d b_res", "d phi", "d gate"};
  for (std::size_t i = 0; i < want.grads.size(); ++i) {
    ASSERT_EQ(got.grads[i].size(), want.grads[i].size()) << names[i];
    // atol relative to the module's largest gradient entry (a single entry can cancel to near zero).
    std::vector<float> w = want.grads[i];
    w.push_back(float(scale));  // the scale of the comparison, compared with itself
    std::vector<float> g = got.grads[i];
    g.push_back(float(scale));
    expect_close(g.data(), w.data(), index_t(w.size()), 1e-5, 5e-4, names[i]);
  }
}

// The steps with storage S on the host against the host module, slot widths 5 and 33, 37 tokens, fresh inputs. bf16:
// the inputs rounded to bf16 for both sides, and the host's depth connection reading the C the steps stored.
template <class Case, class S>
void steps_match_host() {
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  for (int db : {5, 33}) {
    SCOPED_TRACE("db " + std::to_string(db));
    inputs<Case> in(db, 37, gen);
    if constexpr (std::is_same_v<S, vwn::cuda::bf16>) {
      in.round_to_bf16();
      const results got = emulated<Case, S>(in);
      compare(got, in.host(&got.C), true);
    } else {
      const results want = in.host();
      compare(emulated<Case, S>(in), want);
    }
  }
}

template <class Case>
class EmulatedManifold : public ::testing::Test {};

using emulated_cases =
    ::testing::Types<mhc_case<1, 4, false, vwn::mhc_connection>, mhc_case<1, 4, true, vwn::mhc_connection>,
                     mhc_case<2, 3, false, vwn::mhc_connection>, mhc_case<2, 3, true, vwn::mhc_connection>,
                     mhc_case<4, 8, true, vwn::mhc_connection>, mhc_case<1, 4, false, vwn::mhc_lite_connection>,
                     mhc_case<1, 4, true, vwn::mhc_lite_connection>, mhc_case<2, 3, true, vwn::mhc_lite_connection>,
                     mhc_case<1, 4, true, vwn::mhc_v4_connection>, mhc_case<2, 3, false, vwn::mhc_v4_connection>,
                     mhc_case<2, 3, true, vwn::mhc_v4_connection>>;
TYPED_TEST_SUITE(EmulatedManifold, emulated_cases);

// Every output and gradient of the device's steps, run on the host, equals the host module's.
TYPED_TEST(EmulatedManifold, StepsOnTheHostMatchTheHostModule) { steps_match_host<TypeParam, float>(); }

template <class Case>
class EmulatedManifoldBf16 : public ::testing::Test {};

using emulated_bf16_cases =
    ::testing::Types<mhc_case<1, 4, true, vwn::mhc_connection>, mhc_case<2, 3, false, vwn::mhc_connection>,
                     mhc_case<4, 8, true, vwn::mhc_connection>, mhc_case<2, 3, true, vwn::mhc_lite_connection>,
                     mhc_case<1, 4, true, vwn::mhc_v4_connection>>;
TYPED_TEST_SUITE(EmulatedManifoldBf16, emulated_bf16_cases);

// bf16 storage: the inputs rounded to bf16 for both sides; the host module's depth connection reads the carried state
// the steps stored (in bf16), as the device's does, so that every stored output is one rounding away from the host's
// float computation; the parameter gradients stay float.
TYPED_TEST(EmulatedManifoldBf16, StepsOnTheHostMatchTheHostModule) { steps_match_host<TypeParam, vwn::cuda::bf16>(); }

// The comparison can fail: one output entry off by 1e-3 (relative) is outside the tolerance.
TEST(EmulatedManifoldChecks, AnEntryOffBy1e3IsCaught) {
  std::mt19937_64 gen(fresh_seed());
  using Case = mhc_case<1, 4, true, vwn::mhc_connection>;
  inputs<Case> in(5, 7, gen);
  const results want = in.host();
  results got = emulated(in);
  const auto count = [&] { return outside(got.Hout.data(), want.Hout.data(), want.Hout.size(), 1e-5, 1e-4); };
  EXPECT_EQ(count(), 0);
  index_t row = 0, col = 0;  // the entry of largest magnitude: 1e-3 of it is 10 times the tolerance there
  want.Hout.cwiseAbs().maxCoeff(&row, &col);
  got.Hout(row, col) *= 1.001f;
  EXPECT_EQ(count(), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// On a GPU
// ---------------------------------------------------------------------------------------------------------------

template <class Case>
class CudaFloatMhc : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = vwn_test::no_device_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

using device_cases =
    ::testing::Types<mhc_case<1, 4, false, vwn::mhc_connection>, mhc_case<1, 4, true, vwn::mhc_connection>,
                     mhc_case<4, 8, true, vwn::mhc_connection>, mhc_case<2, 3, true, vwn::mhc_lite_connection>,
                     mhc_case<2, 3, true, vwn::mhc_v4_connection>>;
TYPED_TEST_SUITE(CudaFloatMhc, device_cases);

// The device class's outputs and gradients equal the host module's, its parameters uploaded from it.
TYPED_TEST(CudaFloatMhc, DeviceMatchesTheHostModule) {
  constexpr int M = TypeParam::M, N = TypeParam::N;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  namespace vc = vwn::cuda;
  const vc::device_t& policy = vc::device;
  for (int db : {5, 33}) {
    SCOPED_TRACE("db " + std::to_string(db));
    inputs<TypeParam> in(db, 37, gen);
    const results want = in.host();
    vc::basic_ghc<M, N, float, TypeParam::Dynamic, typename TypeParam::Connection> layer(in.D);
    layer.params.upload(policy, in.ref.params);
    const auto up = [&](const vwn::matrix<float>& m) {
      vc::device_matrix<float> x(m.rows(), m.cols());
      vc::upload(policy, m, x.view());
      return x;
    };
    const auto poisoned = [&](index_t rows, index_t cols) {
      vc::device_matrix<float> x(rows, cols);
      vc::poison(policy, x.view());
      return x;
    };
    auto H = up(in.H), Z = up(in.Z), dHout = up(in.dHout), dX = up(in.dX), dC = up(in.dC);
    auto X = poisoned(in.T, in.D), C = poisoned(in.T, in.Dw), Hout = poisoned(in.T, in.Dw), dZ = poisoned(in.T, in.D),
         dH = poisoned(in.T, in.Dw);
    typename decltype(layer)::workspace ws;
    layer.forward_width(policy, H, X, C, ws);
    layer.forward_depth(policy, Z, C, Hout, ws);
    layer.backward_depth(policy, dHout, Z, dZ, ws);
    layer.backward_width(policy, H, dX, dC, dH, ws);
    results got;
    vc::download<float>(policy, X.view(), got.X);
    vc::download<float>(policy, C.view(), got.C);
    vc::download<float>(policy, Hout.view(), got.Hout);
    vc::download<float>(policy, dZ.view(), got.dZ);
    vc::download<float>(policy, dH.view(), got.dH);
    auto host_grads = in.ref.grads;
    layer.grads.download(policy, host_grads);
    host_grads.visit([&](std::string_view, float* g, index_t size, bool) { got.grads.emplace_back(g, g + size); });
    compare(got, want);
  }
}

}  // namespace
