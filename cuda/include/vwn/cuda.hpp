#pragma once
/// \file cuda.hpp
/// The CUDA back end of vwn: device policy, memory, and every primitive on the device. Include from a .cu
/// file compiled by nvcc (link `vwn::cuda`). `<vwn/cuda/policy.hpp>` and `<vwn/cuda/memory.hpp>` alone also
/// work in plain C++ files.

#include "cuda/error.hpp"
#include "cuda/embedding.cuh"
#include "cuda/ghc.cuh"
#include "cuda/memory.hpp"
#include "cuda/mhc.cuh"
#include "cuda/mtp.cuh"
#include "cuda/policy.hpp"
#include "cuda/reduce.cuh"
#include "cuda/scalar.hpp"
