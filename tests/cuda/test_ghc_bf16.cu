// GHC and DGHC on the device, bf16 storage with float accumulation, against the host back end in double
// on the same bf16-rounded inputs.
#include "ghc_cases.hpp"

namespace {
VWN_CUDA_GHC_TESTS(CudaGhcBf16, vwn::cuda::bf16)
}  // namespace
