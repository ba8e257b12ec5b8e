#pragma once
// Row-major GEMMs through cuBLAS (float accumulation), and the small element-wise kernels the GEMM-based
// modules share: float -> storage conversion of a weight, block sums.

#include <cublas_v2.h>

#include <string_view>

#include "../memory.hpp"
#include "kernels.cuh"

namespace vwn::cuda::detail {

/// The cuBLAS math mode of every vwn GEMM: the default math (no TF32) with reduced-precision reductions disallowed,
/// so that a GEMM with a bf16 output never sums split-K partials in bf16: the sums are float throughout and the
/// result is rounded once, as the host simulation of the bf16 device (and its tolerances) assume.
inline constexpr cublasMath_t gemm_math_mode =
    cublasMath_t(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);

/// Puts a cuBLAS handle in `gemm_math_mode` for the scope's lifetime and gives it back its previous mode after
/// (the handle may be the caller's, `device.with(handle)`). Nothing is changed when the mode is already right.
class gemm_math_scope {
 public:
  explicit gemm_math_scope(cublasHandle_t h) : h_(h) {
    VWN_CUDA_CHECK(cublasGetMathMode(h_, &previous_));
    if (previous_ != gemm_math_mode) {
      VWN_CUDA_CHECK(cublasSetMathMode(h_, gemm_math_mode));
      restore_ = true;
    }
  }
  ~gemm_math_scope() {
    if (restore_) static_cast<void>(cublasSetMathMode(h_, previous_));  // a destructor never throws
  }
  gemm_math_scope(const gemm_math_scope&) = delete;
  gemm_math_scope& operator=(const gemm_math_scope&) = delete;

 private:
  cublasHandle_t h_;
  cublasMath_t previous_ = CUBLAS_DEFAULT_MATH;
  bool restore_ = false;
};

/// Row-major `C (m x n) = alpha op(A) op(B) + beta C` with `op(A)` of `m x k`; leading dimensions are row
/// strides. A row-major X is the column-major X^T, so this is cuBLAS's `C^T = op(B)^T op(A)^T`.
/// Accumulates in float (CUBLAS_COMPUTE_32F, no TF32, no reduced-precision split-K: `gemm_math_mode`). cuBLAS takes sizes and leading dimensions as `int`: one
/// that does not fit throws `std::invalid_argument` naming it (e.g. a batch of more than 2^31 slot rows).
inline void gemm(cublasHandle_t h, bool transA, bool transB, index_t m, index_t n, index_t k, float alpha,
                 const void* A, cudaDataType_t Atype, index_t lda, const void* B, cudaDataType_t Btype, index_t ldb,
                 float beta, void* C, cudaDataType_t Ctype, index_t ldc) {
  if (m == 0 || n == 0) return;
  constexpr std::string_view where = "vwn::cuda::gemm";
  using vwn::detail::checked_int;
  const int im = checked_int(where, "rows m", m), in = checked_int(where, "columns n", n);
  const int ik = checked_int(where, "inner size k", k), ia = checked_int(where, "leading dimension of A", lda);
  const int ib = checked_int(where, "leading dimension of B", ldb);
  const int ic = checked_int(where, "leading dimension of C", ldc);
  const gemm_math_scope math(h);
  VWN_CUDA_CHECK(cublasGemmEx(h, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, in, im, ik,
                              &alpha, B, Btype, ib, A, Atype, ia, &beta, C, Ctype, ic, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

template <class To, class From>
__global__ void convert_kernel(const From* __restrict__ src, To* __restrict__ dst, index_t count) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) dst[i] = from_float<To>(to_float(src[i]));
}

/// `dst[i] = src[i]` converted (float or bf16 either side), on `stream`.
template <class To, class From>
void convert(cudaStream_t stream, const From* src, To* dst, index_t count) {
  if (count == 0) return;
  convert_kernel<To, From><<<unsigned(ceil_div(count, 256)), 256, 0, stream>>>(src, dst, count);
  VWN_CUDA_CHECK_LAUNCH();
}

/// A float weight as the GEMM operand of storage `S`: the weight itself for float, a bf16 copy (refreshed
/// by `get`) for bf16.
template <class S>
class gemm_weight {
 public:
  const S* get(cudaStream_t stream, const float* w, index_t count) {
    if constexpr (std::is_same_v<S, float>) {
      static_cast<void>(stream), static_cast<void>(count);
      return w;
    } else {
      copy_.resize(std::size_t(count));
      convert<S>(stream, w, copy_.data(), count);
      return copy_.data();
    }
  }

 private:
  device_buffer<S> copy_;
};

/// Sum over the block of one value per thread, in a fixed order; every thread gets the result. `scratch`
/// holds `block_threads / 32` floats. Synchronises.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < block_threads / 32; ++w) s += scratch[w];
  return s;
}

}  // namespace vwn::cuda::detail
