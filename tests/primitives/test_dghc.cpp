// Dynamic GHC on the host: every gradient (H, Z and all seven parameters, including the path through the
// coefficients back into H) against central finite differences in double.

#include "ghc_problem.hpp"

namespace {

using namespace vwn_test;

template <class C>
class DghcTest : public ::testing::Test {};
TYPED_TEST_SUITE(DghcTest, shape_cases, case_names);

TYPED_TEST(DghcTest, GradientsMatchFiniteDifferences) {
  gradient_check<vwn::dghc<TypeParam::M, TypeParam::N, double>>();
}

}  // namespace
