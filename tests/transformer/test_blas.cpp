// The host products on a BLAS (examples/transformer/blas.hpp): every variant of vwn's host GEMM through the kernel
// hook against a double-precision product of the same float inputs, results independent of the thread count, and
// the loader's errors. Skipped where the project was configured without a BLAS (CMake option VWN_BLAS).
#include <transformer/blas.hpp>
#include <vwn/vwn.hpp>

#include <gtest/gtest.h>

#include <support/common.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using vwn::index_t;
using mat = vwn::matrix<float>;
using dmat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Installs the configured BLAS for one test (skips where there is none) and restores Eigen's product after it.
class HostBlas : public ::testing::Test {
 protected:
  void SetUp() override {
    if (vwn::model::configured_blas_path().empty()) GTEST_SKIP() << "configured without a BLAS (VWN_BLAS)";
    info_ = vwn::model::use_blas(vwn::model::configured_blas_path());
    ASSERT_TRUE(info_.active);
  }
  void TearDown() override { vwn::model::use_eigen_products(); }
  vwn::model::blas_info info_;
};

mat random_matrix(index_t rows, index_t cols, std::mt19937& gen) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  mat m(rows, cols);
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = d(gen);
  return m;
}

// op(a) op(b) in double from the float inputs, and the sum of |products| per entry (the scale of its rounding).
void reference(const mat& a, const mat& b, bool ta, bool tb, dmat& exact, dmat& scale) {
  const dmat A = ta ? dmat(a.cast<double>().transpose()) : dmat(a.cast<double>());
  const dmat B = tb ? dmat(b.cast<double>().transpose()) : dmat(b.cast<double>());
  exact = A * B;
  scale = A.cwiseAbs() * B.cwiseAbs();
}

// Runs one variant of vwn::detail::gemm (the row panels of the model's products) on `dst`.
template <bool Acc, bool TA, bool TB>
void gemm(mat& dst, const mat& a, const mat& b) {
  vwn::detail::gemm<float, Acc, TA, TB>(dst, a, b);
}

template <bool Acc, bool TA, bool TB>
void check_variant(index_t m, index_t n, index_t k, std::mt19937& gen) {
  SCOPED_TRACE(::testing::Message() << "m=" << m << " n=" << n << " k=" << k << " accumulate=" << Acc
                                    << " transpose_lhs=" << TA << " transpose_rhs=" << TB);
  const mat a = TA ? random_matrix(k, m, gen) : random_matrix(m, k, gen);
  const mat b = TB ? random_matrix(n, k, gen) : random_matrix(k, n, gen);
  const mat start = random_matrix(m, n, gen);
  mat dst(m, n);
  if (Acc)
    dst = start;
  else
    dst.setConstant(std::numeric_limits<float>::quiet_NaN());  // must be overwritten, not read
  gemm<Acc, TA, TB>(dst, a, b);
  dmat exact, scale;
  reference(a, b, TA, TB, exact, scale);
  if (Acc) {
    exact += start.cast<double>();
    scale += start.cast<double>().cwiseAbs();
  }
  // A float sum of k products (and the accumulated start value) in any order is within (k + 1) u sum|terms| of the
  // exact sum, u = 2^-24 (the standard bound gamma_{k+1}); the double reference adds nothing visible at that scale.
  const double u = std::ldexp(1.0, -24);
  double worst = 0;
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      const double err = std::abs(double(dst(i, j)) - exact(i, j)), bound = double(k + 1) * u * scale(i, j);
      ASSERT_TRUE(std::isfinite(dst(i, j))) << "entry (" << i << ", " << j << ")";
      ASSERT_LE(err, bound) << "entry (" << i << ", " << j << ")";
      worst = std::max(worst, err / bound);
    }
  EXPECT_GT(worst, 0.0);  // a real product was compared (not, say, a copy of the reference)
}

TEST_F(HostBlas, EveryProductVariantAgreesWithADoubleProduct) {
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 gen(seed);
  // One panel (< 128 rows), two panels, several panels with a remainder; odd sizes everywhere.
  for (index_t m : {index_t(1), index_t(37), index_t(300), index_t(1031)}) {
    const index_t n = 1 + index_t(gen() % 97), k = 1 + index_t(gen() % 211);
    check_variant<false, false, false>(m, n, k, gen);
    check_variant<false, false, true>(m, n, k, gen);
    check_variant<true, false, true>(m, n, k, gen);
    check_variant<true, true, false>(m, n, k, gen);
  }
}

TEST_F(HostBlas, ViewsWithRowStridesAndInsideATask) {
  // Operands and result as blocks of larger matrices (row strides other than the width), as the model's slot views
  // and the FFN's row panels are, through serial_product; the untouched columns stay as they were.
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 gen(seed);
  const mat big_a = random_matrix(200, 90, gen), big_b = random_matrix(70, 90, gen);
  mat big_c = random_matrix(200, 80, gen);
  const mat before = big_c;
  auto c = big_c.block(10, 5, 150, 60);
  vwn::detail::serial_product(c, big_a.block(10, 3, 150, 40), big_b.block(2, 3, 60, 40).transpose());
  const dmat want = big_a.block(10, 3, 150, 40).cast<double>() * big_b.block(2, 3, 60, 40).cast<double>().transpose();
  const dmat scale = big_a.block(10, 3, 150, 40).cast<double>().cwiseAbs() *
                     big_b.block(2, 3, 60, 40).cast<double>().cwiseAbs().transpose();
  const double u = std::ldexp(1.0, -24);
  for (index_t i = 0; i < 150; ++i)
    for (index_t j = 0; j < 60; ++j) ASSERT_LE(std::abs(double(c(i, j)) - want(i, j)), 41 * u * scale(i, j));
  big_c.block(10, 5, 150, 60) = before.block(10, 5, 150, 60);
  EXPECT_TRUE(big_c == before) << "the product wrote outside its block";
}

TEST_F(HostBlas, SameBitsForAnyThreadCount) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP";
#else
  // Many panels, and a single-panel product, which OpenBLAS would split with its own threads outside a parallel
  // region (and then round differently: the loader keeps it on one thread): the same bits with 1 and 2 threads.
  const std::uint64_t seed = vwn_test::fresh_seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 gen(seed);
  const int saved = omp_get_max_threads();
  for (index_t m : {index_t(100), index_t(1024)}) {
    const mat a = random_matrix(m, 512, gen), b = random_matrix(384, 512, gen);
    mat one(m, 384), two(m, 384);
    omp_set_num_threads(1);
    gemm<false, false, true>(one, a, b);
    omp_set_num_threads(2);
    gemm<false, false, true>(two, a, b);
    EXPECT_EQ(std::memcmp(one.data(), two.data(), sizeof(float) * std::size_t(one.size())), 0) << "m = " << m;
  }
  omp_set_num_threads(saved);
#endif
}

TEST(HostBlasLoader, RefusesWhatIsNotACblasLibrary) {
  const vwn::model::blas_info before = vwn::model::current_blas();
  const std::string missing = "/nonexistent/libnotablas.so";
  const std::string e1 = vwn_test::error_of<std::runtime_error>([&] { vwn::model::use_blas(missing); });
  EXPECT_NE(e1.find("expected a loadable CBLAS shared library"), std::string::npos) << e1;
  EXPECT_NE(e1.find(missing), std::string::npos) << e1;
  // A real shared library without cblas_sgemm: the C math library.
  const std::string e2 = vwn_test::error_of<std::runtime_error>([&] { vwn::model::use_blas("libm.so.6"); });
  EXPECT_NE(e2.find("expected cblas_sgemm and cblas_dgemm"), std::string::npos) << e2;
  EXPECT_EQ(vwn::model::current_blas().name, before.name);  // nothing changed
  EXPECT_EQ(vwn::detail::host_gemm<float>, nullptr);
}

}  // namespace
