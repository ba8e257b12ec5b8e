// The over-width embeddings, the reduce head and the MTP mixer on the device, bf16 storage: the instantiation of the
// test bodies every back end shares (tests/primitives/modules_body.hpp) for vwn_test::device_backend<vwn::cuda::bf16>.
#include "backend.cuh"

#include <primitives/modules_body.hpp>

namespace {
VWN_MODULE_TESTS(CudaBf16Modules, vwn_test::device_backend<vwn::cuda::bf16>)
VWN_MODULE_LONG_TESTS(CudaBf16ModulesLong, vwn_test::device_backend<vwn::cuda::bf16>)
}  // namespace
