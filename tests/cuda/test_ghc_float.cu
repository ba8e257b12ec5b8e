// GHC and DGHC on the device, float storage, against the host back end in double.
#include "ghc_cases.hpp"

namespace {
VWN_CUDA_GHC_TESTS(CudaGhcFloat, float)
}  // namespace
