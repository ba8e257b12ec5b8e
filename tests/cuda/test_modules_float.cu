// The over-width embeddings, the reduce head and the MTP mixer on the device, float storage: the instantiation of the
// test bodies every back end shares (tests/primitives/modules_body.hpp) for vwn_test::device_backend<float>.
#include "backend.cuh"

#include <primitives/modules_body.hpp>

namespace {
VWN_MODULE_TESTS(CudaFloatModules, vwn_test::device_backend<float>)
VWN_MODULE_LONG_TESTS(CudaFloatModulesLong, vwn_test::device_backend<float>)
}  // namespace
