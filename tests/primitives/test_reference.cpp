// Cross-check against an independent PyTorch implementation of the spec (tests/reference/vwn_reference.py,
// gradients from torch.autograd), in the style of llm.c's test_gpt2: the script dumps random parameters,
// inputs, outputs and gradients in float64 to tests/data/*.safetensors; here every output and gradient is
// compared in double and in float.
//
// Tolerances (atol + rtol |ref|):
//  - double: 1e-10 + 1e-9 |ref|. Both sides compute in float64 with different operation orders; sums have
//    at most a few hundred terms of O(1), so disagreements are ~1e-13. Any wrong term is O(1e-1) or larger.
//  - float: 2e-4 + 2e-4 |ref|. Inputs are rounded to float (relative 6e-8); the longest reductions
//    (parameter gradients summed over T n = 320 slot rows of db products for (8,64)) accumulate ~1e-5
//    relative error on O(10) values; tanh and rsqrt add a few ulps. 2e-4 leaves a margin of ~10x.

#include <filesystem>

#include <io/safetensors.hpp>

#include <support/common.hpp>

namespace {

using namespace vwn_test;
using vwn::index_t;

const std::filesystem::path data_dir = VWN_TEST_DATA_DIR;

template <class S>
struct tolerance;
template <>
struct tolerance<double> {
  static constexpr double atol = 1e-10, rtol = 1e-9;
};
template <>
struct tolerance<float> {
  static constexpr double atol = 2e-4, rtol = 2e-4;
};

template <int M, int N, class S>
struct reference_case {
  static constexpr int m = M, n = N;
  using scalar = S;
};

// Every compiled shape in double, then in float (tests/data has the reference files of every compiled shape).
template <std::size_t... I>
::testing::Types<reference_case<vwn::compiled_shapes[I % vwn::compiled_shapes.size()].m,
                                vwn::compiled_shapes[I % vwn::compiled_shapes.size()].n,
                                std::conditional_t<(I < vwn::compiled_shapes.size()), double, float>>...>
    reference_case_list(std::index_sequence<I...>);
using reference_cases = decltype(reference_case_list(std::make_index_sequence<2 * vwn::compiled_shapes.size()>{}));

struct case_names {
  template <class C>
  static std::string GetName(int) {
    return "m" + std::to_string(C::m) + "_n" + std::to_string(C::n) +
           (std::is_same_v<typename C::scalar, double> ? "_double" : "_float");
  }
};

template <class C>
class Reference : public ::testing::Test {};
TYPED_TEST_SUITE(Reference, reference_cases, case_names);

vwn::safetensors::file load(const std::string& stem, int m, int n) {
  const auto path = data_dir / (stem + "_m" + std::to_string(m) + "_n" + std::to_string(n) + ".safetensors");
  return vwn::safetensors::file::read(path);
}

template <class S>
struct named {
  const vwn::safetensors::file& f;
  std::string prefix;
  vwn::matrix<S> operator()(const std::string& name) const { return f.template matrix<S>(prefix + name); }
};

#define EXPECT_REF(got, name) \
  EXPECT_TRUE(close(got, ref.operator()(name), tolerance<S>::atol, tolerance<S>::rtol)) << "tensor " << (name)

template <class Layer>
void check_ghc(const vwn::safetensors::file& f, const std::string& prefix) {
  using S = typename Layer::scalar;
  const named<S> ref{f, prefix};
  const vwn::matrix<S> H = ref("H"), Z = ref("Z"), gX = ref("gX"), gC = ref("gC"), gHout = ref("gHout");
  const index_t T = H.rows(), db = std::stoi(f.metadata.at("db"));
  Layer layer(Layer::m * db);
  auto& p = layer.params;
  p.alpha = ref("alpha");
  p.beta = ref("beta");
  if constexpr (Layer::is_dynamic) {
    p.W_alpha = ref("W_alpha");
    p.W_beta = ref("W_beta");
    p.S_alpha = ref("S_alpha");
    p.S_beta = ref("S_beta");
    p.g = ref("g").transpose();
  }
  vwn::matrix<S> X(T, layer.width()), C(T, layer.wide_width()), Hout(T, layer.wide_width());
  vwn::matrix<S> dZ(T, layer.width()), dH(T, layer.wide_width());
  poison(X), poison(C), poison(Hout), poison(dZ), poison(dH);
  typename Layer::workspace ws;
  layer.forward_width(vwn::host, H, X, C, ws);
  layer.forward_depth(vwn::host, Z, C, Hout, ws);
  layer.backward_depth(vwn::host, gHout, Z, dZ, ws);
  const vwn::matrix<S> dC = gHout + gC;
  layer.backward_width(vwn::host, H, gX, dC, dH, ws);
  EXPECT_REF(X, "X");
  EXPECT_REF(C, "C");
  EXPECT_REF(Hout, "Hout");
  EXPECT_REF(dH, "dH");
  EXPECT_REF(dZ, "dZ");
  EXPECT_REF(layer.grads.alpha, "dalpha");
  EXPECT_REF(layer.grads.beta, "dbeta");
  if constexpr (Layer::is_dynamic) {
    EXPECT_REF(layer.grads.W_alpha, "dW_alpha");
    EXPECT_REF(layer.grads.W_beta, "dW_beta");
    EXPECT_REF(layer.grads.S_alpha, "dS_alpha");
    EXPECT_REF(layer.grads.S_beta, "dS_beta");
    EXPECT_REF(layer.grads.g.transpose(), "dg");
  }
}

TYPED_TEST(Reference, StaticGhc) {
  const auto f = load("ghc", TypeParam::m, TypeParam::n);
  check_ghc<vwn::ghc<TypeParam::m, TypeParam::n, typename TypeParam::scalar>>(f, "static.");
}

TYPED_TEST(Reference, DynamicGhc) {
  const auto f = load("ghc", TypeParam::m, TypeParam::n);
  check_ghc<vwn::dghc<TypeParam::m, TypeParam::n, typename TypeParam::scalar>>(f, "dynamic.");
}

TYPED_TEST(Reference, Embeddings) {
  using S = typename TypeParam::scalar;
  constexpr int M = TypeParam::m, N = TypeParam::n;
  const auto f = load("embedding", M, N);
  const auto tok64 = f.values<std::int64_t>("tokens");
  const std::vector<std::int32_t> tokens(tok64.begin(), tok64.end());
  const index_t T = index_t(tokens.size());
  {
    const named<S> ref{f, "direct."};
    const vwn::matrix<S> E = ref("E");
    vwn::overwidth_embedding<M, N, S> emb(E.rows(), E.cols() * M / N);
    emb.params.E = E;
    vwn::matrix<S> H(T, emb.wide_width());
    poison(H);
    emb.forward(vwn::host, tokens, H);
    emb.backward(vwn::host, tokens, ref("gH"));
    vwn::matrix<S> dE = vwn::matrix<S>::Zero(E.rows(), E.cols());
    emb.grads.E.add_to(dE);
    EXPECT_REF(H, "H");
    EXPECT_REF(dE, "dE");
  }
  {
    const named<S> ref{f, "lowrank."};
    const vwn::matrix<S> E_base = ref("E_base");
    vwn::lowrank_overwidth_embedding<M, N, S> emb(E_base.rows(), E_base.cols());
    emb.params.E_base = E_base;
    emb.params.W_expand = ref("W_expand");
    vwn::matrix<S> H(T, emb.wide_width());
    poison(H);
    emb.forward(vwn::host, tokens, H);
    emb.backward(vwn::host, tokens, ref("gH"));
    vwn::matrix<S> dE = vwn::matrix<S>::Zero(E_base.rows(), E_base.cols());
    emb.grads.E_base.add_to(dE);
    EXPECT_REF(H, "H");
    EXPECT_REF(dE, "dE_base");
    EXPECT_REF(emb.grads.W_expand, "dW_expand");
  }
}

TYPED_TEST(Reference, ReduceHead) {
  using S = typename TypeParam::scalar;
  constexpr int M = TypeParam::m, N = TypeParam::n;
  using head = vwn::reduce_head<M, N, S>;
  if constexpr (!head::has_reduce) {
    GTEST_SKIP() << "n == m: the head has nothing to reduce (covered by ModuleTest.ReduceHeadGradient)";
  } else {
    const auto f = load("reduce", M, N);
    EXPECT_EQ(f.metadata.at("groupnorm"), head::has_groupnorm ? "1" : "0");
    const named<S> ref{f, ""};
    const vwn::matrix<S> H = ref("H");
    head h(H.cols() * M / N);
    h.params.W_reduce = ref("W_reduce");
    if constexpr (head::has_groupnorm) {
      h.params.gn_weight = ref("gn_weight").transpose();
      h.params.gn_bias = ref("gn_bias").transpose();
    }
    vwn::matrix<S> out(H.rows(), h.width()), dH(H.rows(), H.cols());
    poison(out), poison(dH);
    typename head::workspace ws;
    h.forward(vwn::host, H, out, ws);
    h.backward(vwn::host, H, ref("gh"), dH, ws);
    EXPECT_REF(out, "h");
    EXPECT_REF(dH, "dH");
    EXPECT_REF(h.grads.W_reduce, "dW_reduce");
    if constexpr (head::has_groupnorm) {
      EXPECT_REF(h.grads.gn_weight.transpose(), "dgn_weight");
      EXPECT_REF(h.grads.gn_bias.transpose(), "dgn_bias");
    }
  }
}

TYPED_TEST(Reference, MtpMixer) {
  using S = typename TypeParam::scalar;
  constexpr int M = TypeParam::m, N = TypeParam::n;
  const auto f = load("mtp", M, N);
  const named<S> ref{f, ""};
  const vwn::matrix<S> A = ref("A"), B = ref("B");
  vwn::mtp_mixer<M, N, S> mix(A.cols() * M / N);
  mix.params.W_mix = ref("W_mix");
  vwn::matrix<S> U(A.rows(), A.cols()), dA(A.rows(), A.cols()), dB(A.rows(), A.cols());
  poison(U), poison(dA), poison(dB);
  mix.forward(vwn::host, A, B, U);
  mix.backward(vwn::host, A, B, ref("gU"), dA, dB);
  EXPECT_REF(U, "U");
  EXPECT_REF(dA, "dA");
  EXPECT_REF(dB, "dB");
  EXPECT_REF(mix.grads.W_mix, "dW_mix");
}

}  // namespace
