#pragma once
/// \file mtp.cuh
/// The block-level MTP mixer on the device (paper section 3.4): `U[t, j] = W_mix [A[t, j]; B[t, j]]` with one
/// shared `W_mix` (`db x 2db`), as two cuBLAS GEMMs each over all `T n` slot rows (`U = A W1^T + B W2^T`),
/// never a per-slot loop. Same calls as the host `vwn::mtp_mixer`.

#include <string>

#include <vwn/mtp.hpp>

#include "detail/blas.cuh"
#include "memory.hpp"

namespace vwn::cuda {

/// Block-level MTP mixer of shape `(M, N)` on the device; `W_mix` and its gradient float, activations `S`.
template <int M, int N, class S = float>
class mtp_mixer : public widths<M, N> {
  static_assert(is_storage<S>, "vwn::cuda: storage type S must be float or vwn::cuda::bf16");

 public:
  using host_type = vwn::mtp_mixer<M, N, float>;
  device_matrix<float> W_mix;   ///< `db x 2db`
  device_matrix<float> dW_mix;  ///< accumulated gradient, `db x 2db`

  /// Mixer for backbone width `D`; initialised as the host one with the same seed.
  explicit mtp_mixer(index_t D, std::uint64_t seed = 3, const device_t& policy = device)
      : widths<M, N>(name() + "::mtp_mixer", D) {
    const host_type h(D, seed);
    W_mix.resize(db_, 2 * db_);
    dW_mix.resize(db_, 2 * db_);
    upload<float>(policy, h.params.W_mix, W_mix);
    zero_grad(policy);
    policy.synchronize();  // construction is synchronous (as vwn::cuda::basic_ghc)
  }
  static std::string name() { return "vwn::cuda::mtp_mixer<" + std::to_string(M) + "," + std::to_string(N) + ">"; }
  /// Clears the gradient (asynchronous).
  void zero_grad(const device_t& policy = device) {
    VWN_CUDA_CHECK(cudaMemsetAsync(dW_mix.data(), 0, std::size_t(dW_mix.size()) * sizeof(float), policy.stream()));
  }

  /// `U` from `A`, `B` (all `T x D'`, contiguous rows).
  void forward(const device_t& policy, device_matrix_cref<S> A, device_matrix_cref<S> B, device_matrix_ref<S> U) {
    const std::string where = name() + "::forward";
    const vwn::detail::mtp_mixer_checks check{where, wide_width()};
    const index_t T = check.inputs(A, B);
    check.wide(T, "U", U);
    const index_t rows = T * N;
    constexpr cudaDataType_t st = detail::storage_info<S>::blas_type;
    cublasHandle_t h = policy.blas();
    const S* W = w_.get(policy.stream(), W_mix.data(), W_mix.size());
    // bf16: accumulate both halves in float, round once.
    float* acc = nullptr;
    if constexpr (std::is_same_v<S, float>) {
      acc = U.data();
    } else {
      u_.resize(std::size_t(rows * db_));
      acc = u_.data();
    }
    detail::gemm(h, false, true, rows, db_, db_, 1.f, A.data(), st, db_, W, st, 2 * db_, 0.f, acc, CUDA_R_32F, db_);
    detail::gemm(h, false, true, rows, db_, db_, 1.f, B.data(), st, db_, W + db_, st, 2 * db_, 1.f, acc, CUDA_R_32F,
                 db_);
    if constexpr (!std::is_same_v<S, float>) detail::convert<S>(policy.stream(), acc, U.data(), rows * db_);
  }

  /// `dA`, `dB` (overwritten) from `dU`; accumulates the gradient of `W_mix`.
  void backward(const device_t& policy, device_matrix_cref<S> A, device_matrix_cref<S> B, device_matrix_cref<S> dU,
                device_matrix_ref<S> dA, device_matrix_ref<S> dB) {
    const std::string where = name() + "::backward";
    const vwn::detail::mtp_mixer_checks check{where, wide_width()};
    const index_t T = check.inputs(A, B);
    check.wide(T, "dU", dU);
    check.wide(T, "dA", dA);
    check.wide(T, "dB", dB);
    const index_t rows = T * N;
    constexpr cudaDataType_t st = detail::storage_info<S>::blas_type;
    cublasHandle_t h = policy.blas();
    const S* W = w_.get(policy.stream(), W_mix.data(), W_mix.size());
    detail::gemm(h, false, false, rows, db_, db_, 1.f, dU.data(), st, db_, W, st, 2 * db_, 0.f, dA.data(), st, db_);
    detail::gemm(h, false, false, rows, db_, db_, 1.f, dU.data(), st, db_, W + db_, st, 2 * db_, 0.f, dB.data(), st,
                 db_);
    detail::gemm(h, true, false, db_, db_, rows, 1.f, dU.data(), st, db_, A.data(), st, db_, 1.f, dW_mix.data(),
                 CUDA_R_32F, 2 * db_);
    detail::gemm(h, true, false, db_, db_, rows, 1.f, dU.data(), st, db_, B.data(), st, db_, 1.f, dW_mix.data() + db_,
                 CUDA_R_32F, 2 * db_);
  }

 private:

  detail::gemm_weight<S> w_;
  device_buffer<float> u_;
  using widths<M, N>::db_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

}  // namespace vwn::cuda
