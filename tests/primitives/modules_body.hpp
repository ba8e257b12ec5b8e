#pragma once
// The test bodies of the over-width embeddings, the reduce head and the MTP mixer, written once for every back end
// (host float, device float and bf16): forward and backward against the host back end in double on the same
// inputs. The host's own double path is checked against finite differences (test_modules.cpp) and PyTorch
// (test_reference.cpp).

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "ghc_body.hpp"

namespace vwn_test {

// Slot width not a power of two (15 for (8,64), whose D' is already 960); odd token count with repeated tokens (so
// a table gradient sums runs of rows).
template <class Case>
constexpr index_t module_block_width = Case::N >= 64 ? 15 : 45;
inline constexpr index_t module_tokens = 37;

inline std::vector<std::int32_t> random_tokens(index_t T, index_t V, std::mt19937_64& gen) {
  std::uniform_int_distribution<std::int32_t> u(0, std::int32_t(V - 1));
  std::vector<std::int32_t> t(std::size_t(T), 0);
  for (auto& x : t) x = u(gen);
  t[1] = t[0];  // at least one repeated token
  return t;
}

template <class Backend, class Case>
void direct_embedding_matches_reference(index_t T = module_tokens, index_t db = module_block_width<Case>) {
  constexpr int M = Case::M, N = Case::N;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * db, V = 11;
  vwn::overwidth_embedding<M, N, double> host(V, D, 5);
  host.params.E = randn<double>(V, host.wide_width(), gen);
  round_parameters_to_float(host.params);
  typename Backend::template overwidth_embedding<M, N> emb(V, D, 5);
  Backend::set_parameters(emb, host);
  const auto p = Backend::policy();
  const auto tok = random_tokens(T, V, gen);
  vwn::matrix<double> H0(T, host.wide_width());
  host.forward(vwn::host, tok, H0);
  for (index_t i = 0; i < H0.size(); ++i) H0.data()[i] = Backend::round(H0.data()[i]);
  auto g = Backend::poisoned(T, host.wide_width());
  emb.forward(p, tok, g);
  Backend::synchronize();
  // A gather is exact (one rounding to the storage, the same on both sides).
  EXPECT_TRUE(close(Backend::download(g), H0, 0, 0)) << "H0";

  const vwn::matrix<double> dH0 = random_input<Backend>(T, host.wide_width(), gen);
  host.backward(vwn::host, tok, dH0);
  emb.backward(p, tok, Backend::upload(dH0));
  Backend::synchronize();
  const named_tensors got = Backend::gradients(emb), ref = host_backend<double>::gradients(host);
  // Sums of at most T values per entry (37, or the long sequence); rows of absent tokens must stay exactly zero.
  expect_gradients(got, ref, Backend::gradient_tolerance);
  EXPECT_TRUE(((got.at(0).second.array() == 0) == (ref.at(0).second.array() == 0)).all())
      << "rows of absent tokens must stay zero";
  std::vector<std::int32_t> bad = tok;
  bad[3] = std::int32_t(V);
  EXPECT_THROW(emb.forward(p, bad, g), std::out_of_range);
}

template <class Backend, class Case>
void lowrank_embedding_matches_reference(index_t T = module_tokens, index_t db = module_block_width<Case>) {
  constexpr int M = Case::M, N = Case::N;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * db, V = 13;
  vwn::lowrank_overwidth_embedding<M, N, double> host(V, D, 7);
  host.params.E_base = randn<double>(V, D, gen);
  round_parameters_to_float(host.params);
  // The back end multiplies the table and the expansion as stored: give the reference the same operands.
  for (auto* m : {&host.params.E_base, &host.params.W_expand})
    for (index_t i = 0; i < m->size(); ++i) m->data()[i] = Backend::round(m->data()[i]);
  typename Backend::template lowrank_overwidth_embedding<M, N> emb(V, D, 7);
  Backend::set_parameters(emb, host);
  const auto p = Backend::policy();
  const auto tok = random_tokens(T, V, gen);
  vwn::matrix<double> H0(T, host.wide_width());
  host.forward(vwn::host, tok, H0);
  auto g = Backend::poisoned(T, host.wide_width());
  emb.forward(p, tok, g);
  Backend::synchronize();
  EXPECT_TRUE(near(Backend::download(g), H0, Backend::output_tolerance)) << "H0";

  const vwn::matrix<double> dH0 = random_input<Backend>(T, host.wide_width(), gen);
  host.backward(vwn::host, tok, dH0);
  emb.backward(p, tok, Backend::upload(dH0));
  Backend::synchronize();
  expect_gradients(Backend::gradients(emb), host_backend<double>::gradients(host), Backend::gradient_tolerance);
}

template <class Backend, class Case>
void reduce_head_matches_reference(index_t T = module_tokens, index_t db = module_block_width<Case>) {
  constexpr int M = Case::M, N = Case::N;
  using host_head = vwn::reduce_head<M, N, double>;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * db;
  host_head host(D, 9);
  if constexpr (host_head::has_groupnorm) {
    // Move the affine parameters off 1 and 0 so that their use is checked.
    host.params.gn_weight.array() += randn<double>(host.wide_width(), 1, gen, 0.3).array();
    host.params.gn_bias = randn<double>(host.wide_width(), 1, gen, 0.3);
  }
  round_parameters_to_float(host.params);
  // The back end's GEMM multiplies W_reduce as stored.
  for (index_t i = 0; i < host.params.W_reduce.size(); ++i)
    host.params.W_reduce.data()[i] = Backend::round(host.params.W_reduce.data()[i]);
  typename Backend::template reduce_head<M, N> head(D, 9);
  Backend::set_parameters(head, host);
  const vwn::matrix<double> H = random_input<Backend>(T, host.wide_width(), gen), dh = random_input<Backend>(T, D, gen);
  // The back end's forward first: the reference multiplies the GroupNorm output the back end stored.
  const auto p = Backend::policy();
  typename Backend::template reduce_head<M, N>::workspace ws;
  const auto bH = Backend::upload(H), bdh = Backend::upload(dh);
  auto gh = Backend::poisoned(T, D), gdH = Backend::poisoned(T, host.wide_width());
  head.forward(p, bH, gh, ws);
  Backend::synchronize();

  typename host_head::workspace hws;
  vwn::matrix<double> h(T, D), dH(T, host.wide_width());
  host.forward(vwn::host, H, h, hws);
  if constexpr (host_head::has_groupnorm) {
    // The back end stores the GroupNorm output as S and multiplies that (h, and d W_reduce in the backward, which
    // reads hws.normed): the reference uses those values (rounding its own would differ by a unit in the last place
    // wherever float and double fall either side of a rounding boundary). The stored output itself is compared with
    // the reference's.
    const vwn::matrix<double> normed = Backend::groupnorm_output(ws, T, host.wide_width());
    EXPECT_TRUE(near(normed, hws.normed, Backend::output_tolerance)) << "GroupNorm output";
    hws.normed = normed;
    h.noalias() = hws.normed * host.params.W_reduce.transpose();
  }
  host.backward(vwn::host, H, dh, dH, hws);
  head.backward(p, bH, bdh, gdH, ws);
  Backend::synchronize();
  EXPECT_TRUE(near(Backend::download(gh), h, Backend::output_tolerance)) << "h";
  EXPECT_TRUE(near(Backend::download(gdH), dH, Backend::output_tolerance)) << "dH";
  expect_gradients(Backend::gradients(head), host_backend<double>::gradients(host), Backend::gradient_tolerance);
}

template <class Backend, class Case>
void mtp_mixer_matches_reference(index_t T = module_tokens, index_t db = module_block_width<Case>) {
  constexpr int M = Case::M, N = Case::N;
  const auto seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 gen(seed);
  const index_t D = M * db;
  vwn::mtp_mixer<M, N, double> host(D, 4);
  round_parameters_to_float(host.params);
  for (index_t i = 0; i < host.params.W_mix.size(); ++i)  // the GEMM's operand as stored
    host.params.W_mix.data()[i] = Backend::round(host.params.W_mix.data()[i]);
  typename Backend::template mtp_mixer<M, N> mix(D, 4);
  Backend::set_parameters(mix, host);
  const index_t Dw = host.wide_width();
  const vwn::matrix<double> A = random_input<Backend>(T, Dw, gen), B = random_input<Backend>(T, Dw, gen),
                            dU = random_input<Backend>(T, Dw, gen);
  vwn::matrix<double> U(T, Dw), dA(T, Dw), dB(T, Dw);
  host.forward(vwn::host, A, B, U);
  host.backward(vwn::host, A, B, dU, dA, dB);
  const auto p = Backend::policy();
  const auto bA = Backend::upload(A), bB = Backend::upload(B), bdU = Backend::upload(dU);
  auto gU = Backend::poisoned(T, Dw), gdA = Backend::poisoned(T, Dw), gdB = Backend::poisoned(T, Dw);
  mix.forward(p, bA, bB, gU);
  mix.backward(p, bA, bB, bdU, gdA, gdB);
  Backend::synchronize();
  EXPECT_TRUE(near(Backend::download(gU), U, Backend::output_tolerance)) << "U";
  EXPECT_TRUE(near(Backend::download(gdA), dA, Backend::output_tolerance)) << "dA";
  EXPECT_TRUE(near(Backend::download(gdB), dB, Backend::output_tolerance)) << "dB";
  expect_gradients(Backend::gradients(mix), host_backend<double>::gradients(host), Backend::gradient_tolerance);
}

}  // namespace vwn_test

// The module test suites of one back end.
#define VWN_MODULE_TESTS(Suite, Backend)                                                                          \
  template <class C>                                                                                              \
  class Suite : public vwn_test::backend_test<Backend> {};                                                        \
  TYPED_TEST_SUITE(Suite, vwn_test::shape_cases, vwn_test::case_names);                                           \
  TYPED_TEST(Suite, DirectEmbeddingMatchesHost) { vwn_test::direct_embedding_matches_reference<Backend, TypeParam>(); } \
  TYPED_TEST(Suite, LowRankEmbeddingMatchesHost) { vwn_test::lowrank_embedding_matches_reference<Backend, TypeParam>(); } \
  TYPED_TEST(Suite, ReduceHeadMatchesHost) { vwn_test::reduce_head_matches_reference<Backend, TypeParam>(); }     \
  TYPED_TEST(Suite, MtpMixerMatchesHost) { vwn_test::mtp_mixer_matches_reference<Backend, TypeParam>(); }

// The long-sequence module suite (see VWN_GHC_LONG_TESTS): the sorted scatter over long runs of each token, the
// reduce head's token groups, the GEMMs over many rows.
#define VWN_MODULE_LONG_TESTS(Suite, Backend)                                                                     \
  template <class C>                                                                                              \
  class Suite : public vwn_test::backend_test<Backend> {};                                                        \
  TYPED_TEST_SUITE(Suite, vwn_test::shape_cases, vwn_test::case_names);                                           \
  TYPED_TEST(Suite, MatchHost) {                                                                                  \
    vwn_test::direct_embedding_matches_reference<Backend, TypeParam>(vwn_test::long_sequence_tokens, 15);             \
    vwn_test::lowrank_embedding_matches_reference<Backend, TypeParam>(vwn_test::long_sequence_tokens, 15);            \
    vwn_test::reduce_head_matches_reference<Backend, TypeParam>(vwn_test::long_sequence_tokens, 15);                  \
    vwn_test::mtp_mixer_matches_reference<Backend, TypeParam>(vwn_test::long_sequence_tokens, 15);                    \
  }
