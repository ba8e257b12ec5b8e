// Over-width embeddings, the reduce head and the MTP mixer on the device, against the host back end in double.
#include "cuda_test_common.hpp"

namespace {

using namespace vwn_cuda_test;

template <int M_, int N_, class S_>
struct module_case {
  static constexpr int M = M_, N = N_;
  using S = S_;
};

struct module_case_names {
  template <class C>
  static std::string GetName(int) {
    return "m" + std::to_string(C::M) + "_n" + std::to_string(C::N) + "_" +
           vwn::cuda::detail::storage_info<typename C::S>::name();
  }
};

using module_cases =
    ::testing::Types<module_case<1, 1, float>, module_case<1, 4, float>, module_case<2, 3, float>,
                     module_case<4, 8, float>, module_case<8, 64, float>, module_case<1, 1, bf16>,
                     module_case<1, 4, bf16>, module_case<2, 3, bf16>, module_case<4, 8, bf16>,
                     module_case<8, 64, bf16>>;

template <class C>
class CudaModules : public DeviceTest {};
TYPED_TEST_SUITE(CudaModules, module_cases, module_case_names);

// Block width not a power of two; odd token count with repeated tokens (so the scatter sums runs).
template <class C>
constexpr index_t block_width = C::N >= 64 ? 15 : 45;
constexpr index_t tokens = 37;

std::vector<std::int32_t> random_tokens(index_t T, index_t V, std::mt19937_64& gen) {
  std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(V - 1));
  std::vector<std::int32_t> t(std::size_t(T), 0);
  for (auto& x : t) x = u(gen);
  return t;
}

TYPED_TEST(CudaModules, DirectEmbeddingMatchesHost) {
  using S = typename TypeParam::S;
  constexpr int M = TypeParam::M, N = TypeParam::N;
  const auto seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * block_width<TypeParam>, V = 11;
  vwn::overwidth_embedding<M, N, double> host(V, D, 5);
  round_parameters_to_float(host.params);
  vwn::cuda::overwidth_embedding<M, N, S> dev(V, D, 5);  // same seed: the same table, rounded to float
  const auto tok = random_tokens(tokens, V, gen);
  vwn::matrix<double> H0(tokens, host.wide_width());
  host.forward(vwn::host, tok, H0);
  round_all<S>(H0);
  auto g = poisoned<S>(tokens, host.wide_width());
  dev.forward(vwn::cuda::device, tok, g);
  // A gather is exact (one rounding to S, the same on both sides).
  EXPECT_TRUE(vwn_test::close(to_host(g), H0, 0, 0)) << "H0";

  const vwn::matrix<double> dH0 = random_input<S>(tokens, host.wide_width(), gen);
  host.backward(vwn::host, tok, dH0);
  vwn::matrix<double> dE = vwn::matrix<double>::Zero(V, host.wide_width());
  host.grads.E.add_to(dE);
  const auto ddH0 = to_device<S>(dH0);
  for (const auto mode : {vwn::cuda::scatter::deterministic, vwn::cuda::scatter::atomic}) {
    dev.zero_grad();
    dev.backward(vwn::cuda::device, tok, ddH0, mode);
    vwn::matrix<double> got;
    vwn::cuda::download<float>(vwn::cuda::device, dev.dE, got);
    // Sums of at most T = 37 float values per entry; untouched rows must stay exactly zero.
    EXPECT_TRUE(near(got, dE, gradient_tolerance)) << "dE, scatter mode " << int(mode);
    EXPECT_TRUE(((got.array() == 0) == (dE.array() == 0)).all()) << "rows of absent tokens must stay zero";
  }
  std::vector<std::int32_t> bad = tok;
  bad[3] = std::int32_t(V);
  EXPECT_THROW(dev.forward(vwn::cuda::device, bad, g), std::out_of_range);
}

TYPED_TEST(CudaModules, LowRankEmbeddingMatchesHost) {
  using S = typename TypeParam::S;
  constexpr int M = TypeParam::M, N = TypeParam::N;
  const auto seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * block_width<TypeParam>, V = 13;
  vwn::lowrank_overwidth_embedding<M, N, double> host(V, D, 7);
  round_parameters_to_float(host.params);
  vwn::cuda::lowrank_overwidth_embedding<M, N, S> dev(V, D, 7);
  if constexpr (!std::is_same_v<S, float>) {
    // The device multiplies the bf16-rounded table and expansion: give the host the same operands.
    round_all<S>(host.params.E_base);
    round_all<S>(host.params.W_expand);
  }
  const auto tok = random_tokens(tokens, V, gen);
  vwn::matrix<double> H0(tokens, host.wide_width());
  host.forward(vwn::host, tok, H0);
  auto g = poisoned<S>(tokens, host.wide_width());
  dev.forward(vwn::cuda::device, tok, g);
  EXPECT_TRUE(near(to_host(g), H0, output_tolerance<S>())) << "H0";

  const vwn::matrix<double> dH0 = random_input<S>(tokens, host.wide_width(), gen);
  host.backward(vwn::host, tok, dH0);
  vwn::matrix<double> dE = vwn::matrix<double>::Zero(V, D);
  host.grads.E_base.add_to(dE);
  dev.backward(vwn::cuda::device, tok, to_device<S>(dH0));
  vwn::matrix<double> got_dE, got_dW;
  vwn::cuda::download<float>(vwn::cuda::device, dev.dE_base, got_dE);
  vwn::cuda::download<float>(vwn::cuda::device, dev.dW_expand, got_dW);
  EXPECT_TRUE(near(got_dW, host.grads.W_expand, gradient_tolerance)) << "d W_expand";
  EXPECT_TRUE(near(got_dE, dE, gradient_tolerance)) << "d E_base";
}

TYPED_TEST(CudaModules, ReduceHeadMatchesHost) {
  using S = typename TypeParam::S;
  constexpr int M = TypeParam::M, N = TypeParam::N;
  const auto seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * block_width<TypeParam>;
  vwn::reduce_head<M, N, double> host(D, 9);
  vwn::cuda::reduce_head<M, N, S> dev(D, 9);
  if constexpr (vwn::reduce_head<M, N, double>::has_groupnorm) {
    // Move the affine parameters off 1 and 0 so that their use is checked.
    host.params.gn_weight.array() += vwn_test::randn<double>(host.wide_width(), 1, gen, 0.3).array();
    host.params.gn_bias = vwn_test::randn<double>(host.wide_width(), 1, gen, 0.3);
  }
  round_parameters_to_float(host.params);
  if constexpr (!std::is_same_v<S, float>) round_all<S>(host.params.W_reduce);  // the GEMM's bf16 operand
  vwn::cuda::upload_floats(vwn::cuda::device, host.params.gn_weight.data(), host.params.gn_weight.size(),
                           dev.params.gn_weight.data());
  vwn::cuda::upload_floats(vwn::cuda::device, host.params.gn_bias.data(), host.params.gn_bias.size(),
                           dev.params.gn_bias.data());
  vwn::cuda::upload_floats(vwn::cuda::device, host.params.W_reduce.data(), host.params.W_reduce.size(),
                           dev.params.W_reduce.data());
  const vwn::matrix<double> H = random_input<S>(tokens, host.wide_width(), gen), dh = random_input<S>(tokens, D, gen);
  typename vwn::reduce_head<M, N, double>::workspace hws;
  vwn::matrix<double> h(tokens, D), dH(tokens, host.wide_width());
  host.forward(vwn::host, H, h, hws);
  host.backward(vwn::host, H, dh, dH, hws);
  typename vwn::cuda::reduce_head<M, N, S>::workspace ws;
  const auto dH_in = to_device<S>(H), ddh = to_device<S>(dh);
  auto gh = poisoned<S>(tokens, D), gdH = poisoned<S>(tokens, host.wide_width());
  dev.forward(vwn::cuda::device, dH_in, gh, ws);
  dev.backward(vwn::cuda::device, dH_in, ddh, gdH, ws);
  // bf16 with GroupNorm: the GEMM's input is the bf16-rounded normalised value (the host keeps it in double),
  // one more rounding of 2^-9 on each of D' terms: covered by the output tolerance's 2^-7.
  EXPECT_TRUE(near(to_host(gh), h, output_tolerance<S>())) << "h";
  EXPECT_TRUE(near(to_host(gdH), dH, output_tolerance<S>())) << "dH";
  dev.grads.visit([&](std::string_view name, float* d, index_t size, bool) {
    vwn::matrix<double> got(1, size), ref(1, size);
    vwn::cuda::download_floats(vwn::cuda::device, d, size, got.data());
    const double* r = name == "gn_weight" ? host.grads.gn_weight.data()
                      : name == "gn_bias" ? host.grads.gn_bias.data()
                                          : host.grads.W_reduce.data();
    for (index_t i = 0; i < size; ++i) ref(0, i) = r[i];
    // bf16: d W_reduce multiplies the bf16-rounded GroupNorm output (see above), so it gets the output tolerance.
    const tolerance tol = std::is_same_v<S, float> ? gradient_tolerance : output_tolerance<S>();
    EXPECT_TRUE(near(got, ref, tol)) << name;
  });
}

TYPED_TEST(CudaModules, MtpMixerMatchesHost) {
  using S = typename TypeParam::S;
  constexpr int M = TypeParam::M, N = TypeParam::N;
  const auto seed = vwn_test::fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * block_width<TypeParam>;
  vwn::mtp_mixer<M, N, double> host(D, 4);
  round_parameters_to_float(host.params);
  if constexpr (!std::is_same_v<S, float>) round_all<S>(host.params.W_mix);  // the GEMM's bf16 operand
  vwn::cuda::mtp_mixer<M, N, S> dev(D, 4);
  vwn::cuda::upload<float>(vwn::cuda::device, host.params.W_mix, dev.W_mix);
  const index_t Dw = host.wide_width();
  const vwn::matrix<double> A = random_input<S>(tokens, Dw, gen), B = random_input<S>(tokens, Dw, gen),
                            dU = random_input<S>(tokens, Dw, gen);
  vwn::matrix<double> U(tokens, Dw), dA(tokens, Dw), dB(tokens, Dw);
  host.forward(vwn::host, A, B, U);
  host.backward(vwn::host, A, B, dU, dA, dB);
  const auto gA = to_device<S>(A), gB = to_device<S>(B), gdU = to_device<S>(dU);
  auto gU = poisoned<S>(tokens, Dw), gdA = poisoned<S>(tokens, Dw), gdB = poisoned<S>(tokens, Dw);
  dev.forward(vwn::cuda::device, gA, gB, gU);
  dev.backward(vwn::cuda::device, gA, gB, gdU, gdA, gdB);
  EXPECT_TRUE(near(to_host(gU), U, output_tolerance<S>())) << "U";
  EXPECT_TRUE(near(to_host(gdA), dA, output_tolerance<S>())) << "dA";
  EXPECT_TRUE(near(to_host(gdB), dB, output_tolerance<S>())) << "dB";
  vwn::matrix<double> got;
  vwn::cuda::download<float>(vwn::cuda::device, dev.dW_mix, got);
  EXPECT_TRUE(near(got, host.grads.W_mix, gradient_tolerance)) << "d W_mix";
}

}  // namespace
