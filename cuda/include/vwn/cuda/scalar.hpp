#pragma once
/// \file scalar.hpp
/// Storage types of the CUDA back end: activations are stored as `float` or `__nv_bfloat16` (`vwn::cuda::bf16`)
/// and always accumulated in `float`. Parameters and their gradients are `float` on the device.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include <vwn/core/host_device.hpp>

namespace vwn::cuda {

/// bfloat16 storage (8 significant bits), accumulated in float.
using bf16 = __nv_bfloat16;

/// Whether `S` is a storage type of the device back end (`float` or `bf16`).
template <class S>
inline constexpr bool is_storage = std::is_same_v<S, float> || std::is_same_v<S, bf16>;

/// Widens a stored value to float.
VWN_HOST_DEVICE float to_float(float x) { return x; }
/// Widens a stored value to float.
VWN_HOST_DEVICE float to_float(bf16 x) { return __bfloat162float(x); }

/// Rounds a float to storage type `S` (round to nearest even for bf16).
template <class S>
VWN_HOST_DEVICE S from_float(float x) {
  if constexpr (std::is_same_v<S, float>)
    return x;
  else
    return __float2bfloat16_rn(x);
}

namespace detail {

template <class S>
struct storage_info;
template <>
struct storage_info<float> {
  static constexpr cudaDataType_t blas_type = CUDA_R_32F;
  static std::string name() { return "float"; }
};
template <>
struct storage_info<bf16> {
  static constexpr cudaDataType_t blas_type = CUDA_R_16BF;
  static std::string name() { return "bf16"; }
};

}  // namespace detail
}  // namespace vwn::cuda
