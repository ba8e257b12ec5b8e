// The depth-connectivity map (train/connectivity.hpp): hand-computed cases and the plain residual pattern at
// initialisation.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <train/connectivity.hpp>

#include <support/common.hpp>

namespace {

using vwn::index_t;

// [a | b] of a (1,1) sub-layer: a = [A, C] (read-out, carry), b = [B].
Eigen::MatrixXd scalar_ab(double A, double C, double B) {
  Eigen::MatrixXd ab = Eigen::MatrixXd::Zero(1, 3);
  ab(0, 0) = A, ab(0, 1) = C, ab(0, 2) = B;
  return ab;
}

TEST(Connectivity, ScalarCaseEqualsAHandComputation) {
  // Three (1,1) sub-layers with read-outs A = 2, 0.5, 3, carries C = 0.5, 2, 1 and writes B = 1, 3, 0.25:
  //   X_0 = 2 H_0;  X_1 = 0.5 (0.5 H_0 + 1 Z_0);  X_2 = 3 (2 (0.5 H_0 + Z_0) + 3 Z_1).
  const auto map = vwn::train::token_connectivity(1, 1, {scalar_ab(2, 0.5, 1), scalar_ab(0.5, 2, 3), scalar_ab(3, 1, 0.25)});
  ASSERT_EQ(map.rows(), 3);
  ASSERT_EQ(map.cols(), 4);
  EXPECT_DOUBLE_EQ(map(0, 0), 2);     // embedding -> 0
  EXPECT_DOUBLE_EQ(map(1, 0), 0.25);  // embedding -> 1: 0.5 * 0.5
  EXPECT_DOUBLE_EQ(map(1, 1), 0.5);   // Z_0 -> 1: 0.5 * 1
  EXPECT_DOUBLE_EQ(map(2, 0), 3);     // embedding -> 2: 3 * 2 * 0.5
  EXPECT_DOUBLE_EQ(map(2, 1), 6);     // Z_0 -> 2: 3 * 2 * 1
  EXPECT_DOUBLE_EQ(map(2, 2), 9);     // Z_1 -> 2: 3 * 3
  for (index_t l = 0; l < 3; ++l)
    for (index_t s = l + 1; s < 4; ++s) EXPECT_TRUE(std::isnan(map(l, s))) << "no path from " << s << " to " << l;
  // A negative coefficient counts by its size.
  EXPECT_DOUBLE_EQ(vwn::train::token_connectivity(1, 1, {scalar_ab(-2, 1, 1)})(0, 0), 2);
}

TEST(Connectivity, MatrixCaseEqualsAHandComputation) {
  // (1,2): H has two slots. Sub-layer 0 reads slot 1 only (A = [0; 1]), carries the slots swapped (C = [[0,1],[1,0]])
  // and writes Z_0 into slot 0 with weight 2 (b = [2; 0]). Sub-layer 1 reads 3 x slot 0 + 4 x slot 1.
  // X_1 = 3 H_1[0] + 4 H_1[1] = 3 (2 Z_0 + H_0[1]) + 4 H_0[0]: from Z_0 |6| = 6; from the embedding ||[4, 3]|| = 5.
  std::vector<Eigen::MatrixXd> ab(2, Eigen::MatrixXd::Zero(2, 4));
  ab[0](0, 2) = 1, ab[0](0, 3) = 2, ab[0](1, 0) = 1, ab[0](1, 1) = 1;  // rows: [0 0 1 2], [1 1 0 0]
  ab[1](0, 0) = 3, ab[1](0, 1) = 1, ab[1](1, 0) = 4, ab[1](1, 2) = 1;  // rows: [3 1 0 0], [4 0 1 0]
  const auto map = vwn::train::token_connectivity(1, 2, ab);
  EXPECT_DOUBLE_EQ(map(0, 0), 1);  // X_0 = H_0[1]: ||[0, 1]|| = 1
  EXPECT_DOUBLE_EQ(map(1, 0), 5);
  EXPECT_DOUBLE_EQ(map(1, 1), 6);
}

TEST(Connectivity, AmaxGainsEqualAHandComputation) {
  // (1,2) with carries C_0 = [[1, 2], [0, -1]] and C_1 = [[0.5, 0], [0.5, 1]] (rows: from slot j; H_res = C^T):
  //   H_res,0 = [[1, 0], [2, -1]]: row sums |.| 1, 3; column sums 3, 1.
  //   H_res,1 = [[0.5, 0.5], [0, 1]]: rows 1, 1; columns 0.5, 1.5.
  //   P_1 = H_res,1 H_res,0 = [[1.5, -0.5], [2, -1]]: rows 2, 3; columns 3.5, 1.5.
  std::vector<Eigen::MatrixXd> ab(2, Eigen::MatrixXd::Zero(2, 4));
  ab[0](0, 1) = 1, ab[0](0, 2) = 2, ab[0](1, 2) = -1;
  ab[1](0, 1) = 0.5, ab[1](1, 1) = 0.5, ab[1](1, 2) = 1;
  const Eigen::MatrixXd g = vwn::train::token_gains(1, 2, ab);
  ASSERT_EQ(g.rows(), 2);
  ASSERT_EQ(g.cols(), 4);
  EXPECT_DOUBLE_EQ(g(0, 0), 3);
  EXPECT_DOUBLE_EQ(g(0, 1), 3);
  EXPECT_DOUBLE_EQ(g(0, 2), 3);
  EXPECT_DOUBLE_EQ(g(0, 3), 3);
  EXPECT_DOUBLE_EQ(g(1, 0), 1);
  EXPECT_DOUBLE_EQ(g(1, 1), 1.5);
  EXPECT_DOUBLE_EQ(g(1, 2), 3);
  EXPECT_DOUBLE_EQ(g(1, 3), 3.5);
}

TEST(Connectivity, RefusesCoefficientsOfAnotherShape) {
  const std::string msg = vwn_test::error_of([] { vwn::train::token_connectivity(2, 3, {Eigen::MatrixXd::Zero(3, 6)}); });
  EXPECT_NE(msg.find("sub-layer 0: expected coefficients of 3 x 7, got 3 x 6"), std::string::npos) << msg;
}

vwn::model::config tiny(vwn::model::shape_choice shape) {
  vwn::model::config c;
  c.shape = shape;
  c.vocab = 256;
  c.width = 8 * shape.m;
  c.layers = 3;
  c.heads = 2;
  c.ffn_width = 16;
  c.context = 6;
  c.mtp = true;
  return c;
}

// At the paper's initialisation every shape is a plain residual stream on the backbone blocks: strength 1 from the
// embedding and from every earlier sub-layer, for static and dynamic GHC (whose projections start at 0).
TEST(Connectivity, InitialisationIsThePlainResidualPattern) {
  for (const vwn::model::shape_choice& shape : {vwn::model::shape_choice{1, 1, false}, {2, 3, false}, {2, 3, true}, {4, 8, true}}) {
    if (!vwn::is_compiled_shape(shape.m, shape.n)) continue;
    auto model = vwn::model::make_transformer(shape, tiny(shape));
    const auto map = vwn::train::model_connectivity(*model, "the quick brown fox jumps over the lazy dog", 20);
    ASSERT_EQ(map.sublayers(), 6) << shape.label();
    EXPECT_EQ(map.tokens, shape.dynamic ? 20 : 1) << shape.label();
    for (index_t l = 0; l < 6; ++l) {
      for (index_t s = 0; s <= l; ++s) EXPECT_NEAR(map.strength(l, s), 1.0, 1e-12) << shape.label() << " " << l << " " << s;
      EXPECT_NEAR(map.embedding_share(l), 1.0 / double(l + 1), 1e-12) << shape.label();
    }
  }
}

TEST(Connectivity, CsvHoldsEveryPathAndTheShares) {
  auto model = vwn::model::make_transformer({1, 1, false}, tiny({1, 1, false}));
  const auto map = vwn::train::model_connectivity(*model, "", 1);
  std::random_device rd;
  const auto dir = std::filesystem::temp_directory_path() / ("vwn_connectivity_" + std::to_string(rd()) + std::to_string(rd()));
  std::filesystem::create_directories(dir);
  vwn::train::write_connectivity_csv(dir / "map.csv", map);
  std::ifstream in(dir / "map.csv");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "layer,layer_name,source,source_name,strength");
  int rows = 0, shares = 0, gains = 0;
  while (std::getline(in, line))
    (line.find("embedding_share") != std::string::npos ? shares : line.find("gain_") != std::string::npos ? gains : rows)++;
  EXPECT_EQ(rows, 6 * 7 / 2);  // sub-layer l has l + 1 sources
  EXPECT_EQ(shares, 6);
  EXPECT_EQ(gains, 4 * 6);  // single and composite, forward and backward, per sub-layer
  EXPECT_FALSE(std::filesystem::exists(dir / "map.csv.partial"));
  std::filesystem::remove_all(dir);
}

}  // namespace
