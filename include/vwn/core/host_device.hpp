#pragma once
/// \file host_device.hpp
/// The one macro for functions that run on both back ends, and its two companions. This header includes no
/// CUDA header: under nvcc the CUDA keywords are built in, and any other compiler sees plain C++.
///
/// - `VWN_HOST_DEVICE`: `__host__ __device__ __forceinline__` under nvcc, `inline` otherwise. Every function of
///   the shared math layer (`<vwn/math/...>`) carries it, so the host loops and the CUDA kernels call the same
///   code.
/// - `VWN_GENERIC`: put before a `VWN_HOST_DEVICE` template that the host instantiates with Eigen operands
///   (host-only functions under nvcc). It tells nvcc to check the execution space of each instantiation where it
///   is used rather than for every one (`#pragma nv_exec_check_disable`); empty for other compilers.
/// - `VWN_UNROLL`: asks nvcc to unroll the next loop (bounds known at compile time); empty for other compilers,
///   which unroll fixed-bound loops on their own where it pays.

#if defined(__CUDACC__)
#define VWN_HOST_DEVICE __host__ __device__ __forceinline__
#define VWN_GENERIC _Pragma("nv_exec_check_disable")
#else
#define VWN_HOST_DEVICE inline
#define VWN_GENERIC
#endif

#if defined(__CUDA_ARCH__)  // nvcc's device pass only: the host compiler would warn about an unknown pragma
#define VWN_UNROLL _Pragma("unroll")
#else
#define VWN_UNROLL
#endif
