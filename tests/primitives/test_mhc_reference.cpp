// Cross-check of the manifold-constrained connection families (mHC, mHC-lite, DeepSeek-V4's) against an independent
// PyTorch implementation written from the papers' notation (tests/reference/mhc_reference.py, gradients from
// torch.autograd). The script dumps random parameters, inputs, outputs and gradients in float64 to
// tests/data/mhc_<conn>_m<m>_n<n>.safetensors; here `vwn::basic_ghc<M, N, double, Dynamic, Connection>` is run on
// them exactly as tests/primitives/ghc_problem.hpp runs a sub-layer (loss L = sum(X gX) + sum(C gC) +
// sum(H_out gHout)) and every output and gradient is compared.
//
// Tolerance (double only): atol 1e-10 + rtol 1e-9 |ref|. Both sides compute in float64 with different operation
// orders. The longest chains are Sinkhorn's 39 normalisations (each a division by an O(1) line sum, forward and
// backward; the C++ backward also rebuilds every iterate from its output as x = y (s + eps), one rounding each), the
// dynamic projection (a dot product of n db <= 48 terms per logit) and the parameter gradients (sums over T = 5
// tokens of db-length products). Each step adds ~1e-16 relative error, so the disagreement is ~1e-14 on O(1)-O(10)
// values; measured worst 2.4e-14 absolute, 4.3e-13 relative (on a value of ~1e-2), so the tolerance leaves about
// four orders of margin for other compilers, FMA contraction and BLAS. A wrong term changes values far more: the
// random carry logits are spread (N(0, 3^2)) so that 20 Sinkhorn iterations have not converged, and reference files
// made with one mHC iteration fewer, without mhc-v4's 1e-6 added after the softmax, or with mHC-lite's carry
// transposed each fail every test of their family.

#include <filesystem>
#include <string>

#include <io/safetensors.hpp>

#include <support/common.hpp>

namespace {

using namespace vwn_test;
using vwn::index_t;

const std::filesystem::path mhc_data_dir = VWN_TEST_DATA_DIR;

constexpr double mhc_atol = 1e-10, mhc_rtol = 1e-9;

vwn::safetensors::file load_mhc(const std::string& conn, int m, int n) {
  const auto path =
      mhc_data_dir / ("mhc_" + conn + "_m" + std::to_string(m) + "_n" + std::to_string(n) + ".safetensors");
  return vwn::safetensors::file::read(path);
}

#define EXPECT_MHC_REF(got, name)                                                          \
  EXPECT_TRUE(close(got, f.template matrix<double>(prefix + (name)), mhc_atol, mhc_rtol)) \
      << "tensor " << prefix << (name)

// Runs one sub-layer of family `Connection` on the reference inputs of `stem` under `prefix` ("static." or
// "dynamic.") and compares every output and gradient.
template <int M, int N, bool Dynamic, class Connection>
void check_mhc(const std::string& stem) {
  using Layer = vwn::basic_ghc<M, N, double, Dynamic, Connection>;
  const std::string prefix = Dynamic ? "dynamic." : "static.";
  const auto f = load_mhc(stem, M, N);
  ASSERT_EQ(f.metadata.at("connection"), std::string(Connection::name));
  ASSERT_EQ(f.metadata.at("m"), std::to_string(M));
  ASSERT_EQ(f.metadata.at("n"), std::to_string(N));
  const auto ref = [&](const std::string& name) { return f.template matrix<double>(prefix + name); };
  const vwn::matrix<double> H = ref("H"), Z = ref("Z"), gX = ref("gX"), gC = ref("gC"), gHout = ref("gHout");
  const index_t T = H.rows(), db = std::stoi(f.metadata.at("db"));
  ASSERT_EQ(T, std::stoi(f.metadata.at("T")));

  Layer layer(M * db);
  if (!Connection::rule.permutations) {
    ASSERT_EQ(layer.rule().iterations, std::stoi(f.metadata.at("iterations")));
  }
  auto& p = layer.params;
  ASSERT_EQ(ref("bias").size(), Layer::logits);
  p.bias = ref("bias").transpose();
  if constexpr (Dynamic) {
    p.phi = ref("phi");
    p.gate = ref("gate").transpose();
  }
  layer.zero_grad();

  vwn::matrix<double> X(T, layer.width()), C(T, layer.wide_width()), Hout(T, layer.wide_width());
  vwn::matrix<double> dZ(T, layer.width()), dH(T, layer.wide_width());
  poison(X), poison(C), poison(Hout), poison(dZ), poison(dH);
  typename Layer::workspace ws;
  layer.forward_width(vwn::host, H, X, C, ws);
  layer.forward_depth(vwn::host, Z, C, Hout, ws);
  layer.backward_depth(vwn::host, gHout, Z, dZ, ws);
  const vwn::matrix<double> dC = gHout + gC;
  layer.backward_width(vwn::host, H, gX, dC, dH, ws);

  EXPECT_MHC_REF(X, "X");
  EXPECT_MHC_REF(C, "C");
  EXPECT_MHC_REF(Hout, "Hout");
  EXPECT_MHC_REF(dH, "dH");
  EXPECT_MHC_REF(dZ, "dZ");
  EXPECT_MHC_REF(layer.grads.bias.transpose(), "dbias");
  if constexpr (Dynamic) {
    EXPECT_MHC_REF(layer.grads.phi, "dphi");
    EXPECT_MHC_REF(layer.grads.gate.transpose(), "dgate");
  }
}

#undef EXPECT_MHC_REF

// One test per (family, shape, static/dynamic), e.g. MhcReference.MhcLite_m2_n3_Dynamic.
#define VWN_MHC_REFERENCE_TEST(Name, stem, Connection, M, N)                                              \
  TEST(MhcReference, Name##_m##M##_n##N##_Static) { check_mhc<M, N, false, vwn::Connection>(stem); }  \
  TEST(MhcReference, Name##_m##M##_n##N##_Dynamic) { check_mhc<M, N, true, vwn::Connection>(stem); }

VWN_MHC_REFERENCE_TEST(Mhc, "mhc", mhc_connection, 1, 4)
VWN_MHC_REFERENCE_TEST(Mhc, "mhc", mhc_connection, 2, 3)
VWN_MHC_REFERENCE_TEST(Mhc, "mhc", mhc_connection, 4, 8)
VWN_MHC_REFERENCE_TEST(MhcLite, "mhc_lite", mhc_lite_connection, 1, 4)
VWN_MHC_REFERENCE_TEST(MhcLite, "mhc_lite", mhc_lite_connection, 2, 3)
VWN_MHC_REFERENCE_TEST(MhcV4, "mhc_v4", mhc_v4_connection, 1, 4)
VWN_MHC_REFERENCE_TEST(MhcV4, "mhc_v4", mhc_v4_connection, 2, 3)
VWN_MHC_REFERENCE_TEST(MhcV4, "mhc_v4", mhc_v4_connection, 4, 8)

#undef VWN_MHC_REFERENCE_TEST

}  // namespace
