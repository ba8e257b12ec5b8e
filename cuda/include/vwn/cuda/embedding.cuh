#pragma once
/// \file embedding.cuh
/// Over-width embeddings on the device (paper section 3.2), the same calls as the host
/// `vwn::overwidth_embedding` and `vwn::lowrank_overwidth_embedding`. Tokens are given on the host
/// (checked there, then copied); parameters and gradients are float on the device. Unlike the host's sparse
/// row gradient, the device table gradient is dense (`V x width`): the backward scatter-adds into it, either
/// deterministically (sort by token with CUB, then one ordered sum per distinct token: the host's order) or
/// with float atomics (faster, order not fixed).

#include <cub/device/device_radix_sort.cuh>

#include <cstdint>
#include <span>
#include <string>

#include <vwn/embedding.hpp>

#include "detail/blas.cuh"
#include "memory.hpp"

namespace vwn::cuda {

/// How a backward scatter-adds rows into a table gradient.
enum class scatter {
  deterministic,  ///< sort by token, sum each token's rows in token order (bit-identical run to run)
  atomic          ///< one float atomic add per element (order, and so rounding, not fixed)
};

namespace detail {

template <class S>
__global__ void gather_rows_kernel(const float* __restrict__ table, index_t width, const std::int32_t* __restrict__ tokens,
                                   S* __restrict__ out, index_t ld) {
  const index_t t = blockIdx.x;
  const float* row = table + index_t(tokens[t]) * width;
  for (index_t c = index_t(blockIdx.y) * blockDim.x + threadIdx.x; c < width; c += index_t(gridDim.y) * blockDim.x)
    out[t * ld + c] = from_float<S>(row[c]);
}

template <class I>
__global__ void iota_kernel(I* v, index_t n) {
  const index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) v[i] = I(i);
}

// For each run of equal sorted keys (the block at its first position does the run), adds the rows of its
// positions, in position order, into dtable[key].
template <class G>
__global__ void segmented_row_sum_kernel(const std::int32_t* __restrict__ keys, const std::int32_t* __restrict__ pos,
                                         index_t T, const G* __restrict__ g, index_t ldg, float* __restrict__ dtable,
                                         index_t width) {
  const index_t i = blockIdx.x;
  const std::int32_t key = keys[i];
  if (i > 0 && keys[i - 1] == key) return;  // not the start of a run
  for (index_t c = index_t(blockIdx.y) * blockDim.x + threadIdx.x; c < width; c += index_t(gridDim.y) * blockDim.x) {
    float s = 0.f;
    for (index_t j = i; j < T && keys[j] == key; ++j) s += to_float(g[index_t(pos[j]) * ldg + c]);
    dtable[index_t(key) * width + c] += s;
  }
}

template <class G>
__global__ void atomic_row_add_kernel(const std::int32_t* __restrict__ tokens, const G* __restrict__ g, index_t ldg,
                                      float* __restrict__ dtable, index_t width) {
  const index_t t = blockIdx.x;
  for (index_t c = index_t(blockIdx.y) * blockDim.x + threadIdx.x; c < width; c += index_t(gridDim.y) * blockDim.x)
    atomicAdd(dtable + index_t(tokens[t]) * width + c, to_float(g[t * ldg + c]));
}

// One block row per token on x (up to 2^31 - 1 tokens), at most 64 column blocks on y (y is limited to 65535).
inline dim3 row_grid(index_t width, index_t rows) {
  const index_t y = ceil_div(width, 256);
  return dim3(unsigned(rows), unsigned(y < 64 ? y : 64));
}

/// Token ids on the device, plus the scratch of the deterministic scatter.
struct token_scratch {
  device_buffer<std::int32_t> tokens, sorted_tokens, positions, sorted_positions;
  device_buffer<unsigned char> sort_temp;

  /// Checks `tokens` against the vocabulary (std::out_of_range, as the host) and copies them to the device.
  void upload(const device_t& policy, std::string_view where, std::span<const std::int32_t> host, index_t vocab) {
    vwn::detail::check_tokens(where, host, vocab);
    static_cast<void>(vwn::detail::checked_int(where, "token count", index_t(host.size())));  // CUB's sort: int
    tokens.resize(host.size());
    VWN_CUDA_CHECK(cudaMemcpyAsync(tokens.data(), host.data(), host.size_bytes(), cudaMemcpyHostToDevice,
                                   policy.stream()));
    policy.synchronize();  // the caller's span may go away after the return
  }

  /// dtable[tokens[t]] += g[t] for every t (g: T rows of `width`, row stride ldg).
  template <class G>
  void scatter_add(const device_t& policy, scatter mode, const G* g, index_t ldg, float* dtable, index_t width,
                   index_t vocab) {
    const index_t T = index_t(tokens.size());
    const dim3 grid = row_grid(width, T);
    if (mode == scatter::atomic) {
      atomic_row_add_kernel<G><<<grid, 256, 0, policy.stream()>>>(tokens.data(), g, ldg, dtable, width);
      VWN_CUDA_CHECK_LAUNCH();
      return;
    }
    positions.resize(std::size_t(T));
    sorted_tokens.resize(std::size_t(T));
    sorted_positions.resize(std::size_t(T));
    iota_kernel<std::int32_t><<<unsigned(ceil_div(T, 256)), 256, 0, policy.stream()>>>(positions.data(), T);
    VWN_CUDA_CHECK_LAUNCH();
    int end_bit = 1;
    while (end_bit < 31 && (index_t(1) << end_bit) < vocab) ++end_bit;
    std::size_t bytes = 0;
    VWN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, tokens.data(), sorted_tokens.data(),
                                                   positions.data(), sorted_positions.data(), int(T), 0, end_bit,
                                                   policy.stream()));
    sort_temp.resize(bytes);
    VWN_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_temp.data(), bytes, tokens.data(), sorted_tokens.data(),
                                                   positions.data(), sorted_positions.data(), int(T), 0, end_bit,
                                                   policy.stream()));
    segmented_row_sum_kernel<G><<<grid, 256, 0, policy.stream()>>>(sorted_tokens.data(), sorted_positions.data(), T,
                                                                   g, ldg, dtable, width);
    VWN_CUDA_CHECK_LAUNCH();
  }
};

}  // namespace detail

/// Direct over-width embedding on the device: table `E` (`V x D'`, float), `H0[t] = E[token[t]]` stored as `S`.
template <int M, int N, class S = float>
class overwidth_embedding : public widths<M, N> {
  static_assert(is_storage<S>, "vwn::cuda: storage type S must be float or vwn::cuda::bf16");

 public:
  using host_type = vwn::overwidth_embedding<M, N, float>;
  device_matrix<float> E;   ///< the table, `V x D'`
  device_matrix<float> dE;  ///< its accumulated gradient, dense `V x D'`

  /// Embedding for vocabulary `V`, backbone width `D`; initialised as the host one with the same seed.
  overwidth_embedding(index_t V, index_t D, std::uint64_t seed = 1, const device_t& policy = device)
      : widths<M, N>(name() + "::overwidth_embedding", D), V_(V) {
    const host_type h(V, D, seed);
    E.resize(V, wide_width());
    dE.resize(V, wide_width());
    upload<float>(policy, h.params.E, E);
    zero_grad(policy);
    policy.synchronize();  // construction is synchronous (as vwn::cuda::basic_ghc)
  }
  static std::string name() { return "vwn::cuda::overwidth_embedding<" + std::to_string(M) + "," + std::to_string(N) + ">"; }
  index_t vocabulary() const { return V_; }
  /// Clears the gradient (asynchronous).
  void zero_grad(const device_t& policy = device) {
    VWN_CUDA_CHECK(cudaMemsetAsync(dE.data(), 0, std::size_t(dE.size()) * sizeof(float), policy.stream()));
  }

  /// `H0` (`T x D'`) from host `tokens`.
  void forward(const device_t& policy, std::span<const std::int32_t> tokens, device_matrix_ref<S> H0) {
    const std::string where = name() + "::forward";
    vwn::detail::expect_shape(where, "H0", H0, index_t(tokens.size()), wide_width());
    scratch_.upload(policy, where, tokens, V_);
    detail::gather_rows_kernel<S><<<detail::row_grid(wide_width(), index_t(tokens.size())), 256, 0, policy.stream()>>>(
        E.data(), wide_width(), scratch_.tokens.data(), H0.data(), H0.outerStride());
    VWN_CUDA_CHECK_LAUNCH();
  }

  /// Adds the gradient of `E` from `dH0` (`T x D'`) into `dE`.
  void backward(const device_t& policy, std::span<const std::int32_t> tokens, device_matrix_cref<S> dH0,
                scatter mode = scatter::deterministic) {
    const std::string where = name() + "::backward";
    vwn::detail::expect_shape(where, "dH0", dH0, index_t(tokens.size()), wide_width());
    scratch_.upload(policy, where, tokens, V_);
    scratch_.scatter_add(policy, mode, dH0.data(), dH0.outerStride(), dE.data(), wide_width(), V_);
  }

 private:
  index_t V_;
  detail::token_scratch scratch_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

/// Low-rank over-width embedding on the device (eq. 3): `H0[t] = W_expand E_base[token[t]]`, the expansion
/// one cuBLAS GEMM over the batch.
template <int M, int N, class S = float>
class lowrank_overwidth_embedding : public widths<M, N> {
  static_assert(is_storage<S>, "vwn::cuda: storage type S must be float or vwn::cuda::bf16");

 public:
  using host_type = vwn::lowrank_overwidth_embedding<M, N, float>;
  device_matrix<float> E_base;     ///< `V x D`
  device_matrix<float> W_expand;   ///< `D' x D`
  device_matrix<float> dE_base;    ///< dense gradient, `V x D`
  device_matrix<float> dW_expand;  ///< `D' x D`

  /// Embedding for vocabulary `V`, backbone width `D`; initialised as the host one with the same seed.
  lowrank_overwidth_embedding(index_t V, index_t D, std::uint64_t seed = 1, const device_t& policy = device)
      : widths<M, N>(name() + "::lowrank_overwidth_embedding", D), V_(V) {
    const host_type h(V, D, seed);
    E_base.resize(V, D), dE_base.resize(V, D);
    W_expand.resize(wide_width(), D), dW_expand.resize(wide_width(), D);
    upload<float>(policy, h.params.E_base, E_base);
    upload<float>(policy, h.params.W_expand, W_expand);
    zero_grad(policy);
    policy.synchronize();  // construction is synchronous (as vwn::cuda::basic_ghc)
  }
  static std::string name() {
    return "vwn::cuda::lowrank_overwidth_embedding<" + std::to_string(M) + "," + std::to_string(N) + ">";
  }
  index_t vocabulary() const { return V_; }
  /// Clears the gradients (asynchronous).
  void zero_grad(const device_t& policy = device) {
    VWN_CUDA_CHECK(cudaMemsetAsync(dE_base.data(), 0, std::size_t(dE_base.size()) * sizeof(float), policy.stream()));
    VWN_CUDA_CHECK(cudaMemsetAsync(dW_expand.data(), 0, std::size_t(dW_expand.size()) * sizeof(float), policy.stream()));
  }

  /// `H0` (`T x D'`) from host `tokens`: gather `E_base` rows (`T x D`), then one GEMM with `W_expand^T`.
  void forward(const device_t& policy, std::span<const std::int32_t> tokens, device_matrix_ref<S> H0) {
    const std::string where = name() + "::forward";
    const index_t T = index_t(tokens.size());
    vwn::detail::expect_shape(where, "H0", H0, T, wide_width());
    scratch_.upload(policy, where, tokens, V_);
    gather(policy, T);
    constexpr cudaDataType_t st = detail::storage_info<S>::blas_type;
    detail::gemm(policy.blas(), false, true, T, wide_width(), D_, 1.f, e_.data(), st, D_,
                 w_.get(policy.stream(), W_expand.data(), W_expand.size()), st, D_, 0.f, H0.data(), st,
                 H0.outerStride());
  }

  /// Adds `dW_expand += dH0^T E_base[tokens]` and scatters `dH0 W_expand` into `dE_base`.
  void backward(const device_t& policy, std::span<const std::int32_t> tokens, device_matrix_cref<S> dH0,
                scatter mode = scatter::deterministic) {
    const std::string where = name() + "::backward";
    const index_t T = index_t(tokens.size());
    vwn::detail::expect_shape(where, "dH0", dH0, T, wide_width());
    scratch_.upload(policy, where, tokens, V_);
    gather(policy, T);
    constexpr cudaDataType_t st = detail::storage_info<S>::blas_type;
    cublasHandle_t h = policy.blas();
    detail::gemm(h, true, false, wide_width(), D_, T, 1.f, dH0.data(), st, dH0.outerStride(), e_.data(), st, D_, 1.f,
                 dW_expand.data(), CUDA_R_32F, D_);
    de_.resize(std::size_t(T * D_));
    detail::gemm(h, false, false, T, D_, wide_width(), 1.f, dH0.data(), st, dH0.outerStride(),
                 w_.get(policy.stream(), W_expand.data(), W_expand.size()), st, D_, 0.f, de_.data(), CUDA_R_32F, D_);
    scratch_.scatter_add(policy, mode, de_.data(), D_, dE_base.data(), D_, V_);
  }

 private:
  void gather(const device_t& policy, index_t T) {
    e_.resize(std::size_t(T * D_));
    detail::gather_rows_kernel<S><<<detail::row_grid(D_, T), 256, 0, policy.stream()>>>(E_base.data(), D_,
                                                                                          scratch_.tokens.data(),
                                                                                          e_.data(), D_);
    VWN_CUDA_CHECK_LAUNCH();
  }

  index_t V_;
  detail::token_scratch scratch_;
  device_buffer<S> e_;        // T x D gathered rows
  device_buffer<float> de_;   // T x D gradient of the gathered rows
  detail::gemm_weight<S> w_;  // W_expand as a GEMM operand
  using widths<M, N>::D_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

}  // namespace vwn::cuda
