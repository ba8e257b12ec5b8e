// GHC and DGHC on the device, bf16 storage: the instantiation of the test bodies every back end shares
// (tests/primitives/ghc_body.hpp) for vwn_test::device_backend<vwn::cuda::bf16>.
#include "backend.cuh"

#include <primitives/ghc_body.hpp>

namespace {
VWN_GHC_TESTS(CudaBf16Ghc, vwn_test::device_backend<vwn::cuda::bf16>)
VWN_GHC_LONG_TESTS(CudaBf16GhcLong, vwn_test::device_backend<vwn::cuda::bf16>)
// The tiled forward width kernel, which the library takes where the staged one's slab does not fit in shared memory.
using tiled_backend = vwn_test::device_backend<vwn::cuda::bf16, vwn::cuda::width_kernel::tiled>;
VWN_GHC_TESTS(CudaBf16GhcTiled, tiled_backend)
VWN_GHC_LONG_TESTS(CudaBf16GhcTiledLong, tiled_backend)
}  // namespace
