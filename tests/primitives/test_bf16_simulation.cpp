// The test bodies every back end shares (ghc_body.hpp, modules_body.hpp) on a host simulation of the device's bf16
// storage (support/bf16_simulation.hpp): the host float modules with every activation the device stores as bf16
// rounded as the device rounds it. They run on any machine, so the references and the bf16 tolerances of the device
// tests are checked where no GPU is: a reference computed from values the device does not hold fails here.

#include <support/bf16_simulation.hpp>

#include "modules_body.hpp"

namespace {

using namespace vwn_test;

VWN_GHC_TESTS(HostBf16SimulationGhc, vwn_test::bf16_simulation_backend)
VWN_MODULE_TESTS(HostBf16SimulationModules, vwn_test::bf16_simulation_backend)
VWN_GHC_LONG_TESTS(HostBf16SimulationGhcLong, vwn_test::bf16_simulation_backend)
VWN_MODULE_LONG_TESTS(HostBf16SimulationModulesLong, vwn_test::bf16_simulation_backend)

// The rounding is the device's: round to nearest, ties to even, 8 significant bits.
TEST(HostBf16Simulation, RoundsToNearestEvenWithEightSignificantBits) {
  EXPECT_EQ(bf16_round(1.0f), 1.0f);
  EXPECT_EQ(bf16_round(1.0f + 1.0f / 256), 1.0f);                // a tie: to the even neighbour 1
  EXPECT_EQ(bf16_round(1.0f + 3.0f / 256), 1.0f + 4.0f / 256);   // a tie: to the even neighbour 1 + 2^-6
  EXPECT_EQ(bf16_round(1.0f + 1.0f / 256 + 1.0f / 4096), 1.0f + 1.0f / 128);  // above the tie: up
  EXPECT_EQ(bf16_round(-3.0f), -3.0f);
  EXPECT_TRUE(std::isnan(bf16_round(std::nanf(""))));
  // The largest relative error is 2^-8, at the bottom of a binade.
  EXPECT_EQ(bf16_round(1.0f + 1.0f / 256 - 1.0f / 65536), 1.0f);
}

}  // namespace
