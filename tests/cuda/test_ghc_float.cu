// GHC and DGHC on the device, float storage: the instantiation of the test bodies every back end shares
// (tests/primitives/ghc_body.hpp) for vwn_test::device_backend<float>.
#include "backend.cuh"

#include <primitives/ghc_body.hpp>

namespace {
VWN_GHC_TESTS(CudaFloatGhc, vwn_test::device_backend<float>)
VWN_GHC_LONG_TESTS(CudaFloatGhcLong, vwn_test::device_backend<float>)
// The tiled forward width kernel, which the library takes where the staged one's slab does not fit in shared memory.
using tiled_backend = vwn_test::device_backend<float, vwn::cuda::width_kernel::tiled>;
VWN_GHC_TESTS(CudaFloatGhcTiled, tiled_backend)
VWN_GHC_LONG_TESTS(CudaFloatGhcTiledLong, tiled_backend)
}  // namespace
