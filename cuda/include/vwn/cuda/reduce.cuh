#pragma once
/// \file reduce.cuh
/// The head's reduce on the device (paper eq. 4): `h = W_reduce GroupNorm(H_L)`, the same cases and calls as
/// the host `vwn::reduce_head` (GroupNorm only for integer `r = n/m > 1`, a plain reduce for fractional `r`,
/// the identity for `n == m`). The GEMMs go through cuBLAS; GroupNorm is one block per (token, group).

#include <string>

#include <vwn/reduce.hpp>

#include "detail/blas.cuh"
#include "memory.hpp"

namespace vwn::cuda {

namespace detail {

// GroupNorm forward, block (token t, group k) over D values (math::group_forward).
template <class S>
__global__ void __launch_bounds__(block_threads)
    groupnorm_forward_kernel(const S* __restrict__ H, index_t ldH, const float* __restrict__ w,
                             const float* __restrict__ b, S* __restrict__ y, index_t ldY, float* __restrict__ mean,
                             float* __restrict__ rstd, int D, int groups) {
  __shared__ float scratch[block_threads / 32];
  const index_t t = blockIdx.x;
  const int k = int(blockIdx.y), tid = int(threadIdx.x);
  const S* x = H + t * ldH + index_t(k) * D;
  float s = 0.f;
  for (int c = tid; c < D; c += block_threads) s += to_float(x[c]);
  const float mu = vwn::math::mean_of(block_sum(s, scratch), float(D));
  float v = 0.f;
  for (int c = tid; c < D; c += block_threads) {
    const float e = to_float(x[c]) - mu;
    v = fmaf(e, e, v);
  }
  const float r = vwn::math::inverse_rms(block_sum(v, scratch), float(D));
  for (int c = tid; c < D; c += block_threads) {
    const int i = k * D + c;
    float out;
    vwn::math::group_forward(to_float(x[c]), mu, r, w[i], b[i], out);
    y[t * ldY + i] = from_float<S>(out);
  }
  if (tid == 0) mean[t * groups + k] = mu, rstd[t * groups + k] = r;
}

// GroupNorm backward, block (t, k) (math::group_unit, math::group_backward), with dxh = dy w.
template <class S>
__global__ void __launch_bounds__(block_threads)
    groupnorm_backward_kernel(const S* __restrict__ H, index_t ldH, const float* __restrict__ dy,
                              const float* __restrict__ w, const float* __restrict__ mean,
                              const float* __restrict__ rstd, S* __restrict__ dH, index_t ldDH, int D, int groups) {
  __shared__ float scratch[block_threads / 32];
  const index_t t = blockIdx.x;
  const int k = int(blockIdx.y), tid = int(threadIdx.x);
  const S* x = H + t * ldH + index_t(k) * D;
  const float* g = dy + t * index_t(groups) * D + index_t(k) * D;
  const float mu = mean[t * groups + k], r = rstd[t * groups + k];
  float s1 = 0.f, s2 = 0.f;
  for (int c = tid; c < D; c += block_threads) {
    const float dxh = g[c] * w[k * D + c];
    float xh;
    vwn::math::group_unit(to_float(x[c]), mu, r, xh);
    s1 += dxh;
    s2 = fmaf(dxh, xh, s2);
  }
  const float m1 = vwn::math::mean_of(block_sum(s1, scratch), float(D));
  const float m2 = vwn::math::mean_of(block_sum(s2, scratch), float(D));
  for (int c = tid; c < D; c += block_threads) {
    float xh, dx;
    vwn::math::group_unit(to_float(x[c]), mu, r, xh);
    vwn::math::group_backward(g[c] * w[k * D + c], xh, r, m1, m2, dx);
    dH[t * ldDH + index_t(k) * D + c] = from_float<S>(dx);
  }
}

// GroupNorm affine gradients, first pass: per group of tokens and column i, sum dy xh and sum dy.
template <class S>
__global__ void __launch_bounds__(column_threads)
    groupnorm_affine_grad_kernel(const S* __restrict__ H, index_t ldH, const float* __restrict__ dy,
                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                 float* __restrict__ partial, int D, int groups, index_t T, int token_groups) {
  const int i = int(blockIdx.x) * column_threads + int(threadIdx.x), grp = int(blockIdx.y);
  const int width = D * groups;
  if (i >= width) return;
  const int k = i / D;
  const index_t t0 = T * grp / token_groups, t1 = T * (grp + 1) / token_groups;
  float dw = 0.f, db = 0.f;
  for (index_t t = t0; t < t1; ++t) {
    const float g = dy[t * width + i];
    float xh;
    vwn::math::group_unit(to_float(H[t * ldH + i]), mean[t * groups + k], rstd[t * groups + k], xh);
    dw = fmaf(g, xh, dw);
    db += g;
  }
  partial[(std::size_t(grp) * 2) * std::size_t(width) + std::size_t(i)] = dw;
  partial[(std::size_t(grp) * 2 + 1) * std::size_t(width) + std::size_t(i)] = db;
}

// Second pass: adds the groups, in order, into the gradients of gn_weight and gn_bias.
template <class F>
__global__ void groupnorm_affine_grad_finish(const F* __restrict__ partial, int token_groups, int width,
                                             F* __restrict__ dw, F* __restrict__ db) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= width) return;
  F a = 0, b = 0;
  for (int grp = 0; grp < token_groups; ++grp) {
    a += partial[(std::size_t(grp) * 2) * std::size_t(width) + std::size_t(i)];
    b += partial[(std::size_t(grp) * 2 + 1) * std::size_t(width) + std::size_t(i)];
  }
  dw[i] += a;
  db[i] += b;
}

}  // namespace detail

/// GroupNorm + reduce `D' -> D` on the device; parameters and gradients float, activations `S`.
template <int M, int N, class S = float>
class reduce_head : public widths<M, N> {
  static_assert(is_storage<S>, "vwn::cuda: storage type S must be float or vwn::cuda::bf16");
  using host_type = vwn::reduce_head<M, N, float>;

 public:
  static constexpr bool has_reduce = host_type::has_reduce;
  static constexpr bool has_groupnorm = host_type::has_groupnorm;
  static constexpr int groups = host_type::groups;

  /// Parameters or gradients (empty where the configuration has none), float, host layout.
  struct parameters {
    device_buffer<float> gn_weight, gn_bias;  ///< `D'` each (GroupNorm only)
    device_buffer<float> W_reduce;            ///< `D x D'` (unless n == m)
    /// Visits `f(name, device_data, size, weight_decay)` for each tensor of `vwn::reduce_head_tensors`, in order.
    template <class F>
    void visit(F&& f) {
      for (const tensor_spec& t : reduce_head_tensors<M, N>(D)) {
        float* data = t.name == "gn_weight" ? gn_weight.data() : t.name == "gn_bias" ? gn_bias.data() : W_reduce.data();
        f(t.name, data, t.size(), t.decay);
      }
    }
    index_t D = 0;  ///< backbone width
  };
  /// Saved state and scratch.
  struct workspace {
    index_t tokens = 0;
    device_buffer<S> normed;            ///< `T x D'` GroupNorm output
    device_buffer<float> mean, rstd;    ///< `T x r`
    device_buffer<float> dnormed;       ///< `T x D'`
    device_buffer<float> partial;       ///< affine-gradient partials
  };

  parameters params;  ///< the parameters, initialised as the host head with the same seed
  parameters grads;   ///< accumulated gradients

  explicit reduce_head(index_t D, std::uint64_t seed = 2, const device_t& policy = device)
      : widths<M, N>(name() + "::reduce_head", D) {
    const host_type h(D, seed);
    for (parameters* p : {&params, &grads}) {
      p->D = D;
      p->gn_weight.resize(std::size_t(h.params.gn_weight.size()));
      p->gn_bias.resize(std::size_t(h.params.gn_bias.size()));
      p->W_reduce.resize(std::size_t(h.params.W_reduce.size()));
    }
    upload_floats(policy, h.params.gn_weight.data(), h.params.gn_weight.size(), params.gn_weight.data());
    upload_floats(policy, h.params.gn_bias.data(), h.params.gn_bias.size(), params.gn_bias.data());
    upload_floats(policy, h.params.W_reduce.data(), h.params.W_reduce.size(), params.W_reduce.data());
    zero_grad(policy);
    policy.synchronize();  // construction is synchronous (as vwn::cuda::basic_ghc)
  }
  static std::string name() { return "vwn::cuda::reduce_head<" + std::to_string(M) + "," + std::to_string(N) + ">"; }
  /// Clears the gradients (asynchronous).
  void zero_grad(const device_t& policy = device) {
    grads.gn_weight.fill_bytes(policy, 0);
    grads.gn_bias.fill_bytes(policy, 0);
    grads.W_reduce.fill_bytes(policy, 0);
  }

  /// `h` (`T x D`) from `H` (`T x D'`).
  void forward(const device_t& policy, device_matrix_cref<S> H, device_matrix_ref<S> h, workspace& ws) {
    const std::string where = name() + "::forward";
    const index_t T = vwn::detail::reduce_head_checks{where, D_, wide_width()}.forward(H, h);
    ws.tokens = 0;  // the saved state is replaced below: until everything is queued, the workspace holds none
    constexpr cudaDataType_t st = detail::storage_info<S>::blas_type;
    if constexpr (has_groupnorm) {  // every allocation before the saved state names this call
      ws.normed.resize(std::size_t(T * wide_width()));
      ws.mean.resize(std::size_t(T * groups));
      ws.rstd.resize(std::size_t(T * groups));
    }
    if constexpr (!has_reduce) {
      VWN_CUDA_CHECK(cudaMemcpy2DAsync(h.data(), std::size_t(h.outerStride()) * sizeof(S), H.data(),
                                       std::size_t(H.outerStride()) * sizeof(S), std::size_t(D_) * sizeof(S),
                                       std::size_t(T), cudaMemcpyDeviceToDevice, policy.stream()));
    } else {
      const S* in = H.data();
      index_t ld = H.outerStride();
      if constexpr (has_groupnorm) {
        const dim3 grid(unsigned(vwn::detail::checked_int(where, "token count T", T)), groups);
        detail::groupnorm_forward_kernel<S><<<grid, detail::block_threads, 0, policy.stream()>>>(
            H.data(), H.outerStride(), params.gn_weight.data(), params.gn_bias.data(), ws.normed.data(), wide_width(),
            ws.mean.data(), ws.rstd.data(), int(D_), groups);
        VWN_CUDA_CHECK_LAUNCH();
        in = ws.normed.data();
        ld = wide_width();
      }
      detail::gemm(policy.blas(), false, true, T, D_, wide_width(), 1.f, in, st, ld,
                   w_.get(policy.stream(), params.W_reduce.data(), D_ * wide_width()), st, wide_width(), 0.f,
                   h.data(), st, h.outerStride());
    }
    ws.tokens = T;
  }

  /// `dH` (`T x D'`, overwritten) from `dh` (`T x D`); accumulates the parameter gradients.
  void backward(const device_t& policy, device_matrix_cref<S> H, device_matrix_cref<S> dh, device_matrix_ref<S> dH,
                workspace& ws) {
    const std::string where = name() + "::backward";
    vwn::detail::reduce_head_checks{where, D_, wide_width()}.backward(ws.tokens, H, dh, dH);
    const index_t T = ws.tokens;
    constexpr cudaDataType_t st = detail::storage_info<S>::blas_type;
    if constexpr (!has_reduce) {
      VWN_CUDA_CHECK(cudaMemcpy2DAsync(dH.data(), std::size_t(dH.outerStride()) * sizeof(S), dh.data(),
                                       std::size_t(dh.outerStride()) * sizeof(S), std::size_t(D_) * sizeof(S),
                                       std::size_t(T), cudaMemcpyDeviceToDevice, policy.stream()));
    } else {
      cublasHandle_t blas = policy.blas();
      const S* W = w_.get(policy.stream(), params.W_reduce.data(), D_ * wide_width());
      const S* in = has_groupnorm ? ws.normed.data() : H.data();
      const index_t ld = has_groupnorm ? wide_width() : H.outerStride();
      // d W_reduce += dh^T (GroupNorm output, or H).
      detail::gemm(blas, true, false, D_, wide_width(), T, 1.f, dh.data(), st, dh.outerStride(), in, st, ld, 1.f,
                   grads.W_reduce.data(), CUDA_R_32F, wide_width());
      if constexpr (!has_groupnorm) {
        detail::gemm(blas, false, false, T, wide_width(), D_, 1.f, dh.data(), st, dh.outerStride(), W, st,
                     wide_width(), 0.f, dH.data(), st, dH.outerStride());
      } else {
        ws.dnormed.resize(std::size_t(T * wide_width()));
        detail::gemm(blas, false, false, T, wide_width(), D_, 1.f, dh.data(), st, dh.outerStride(), W, st,
                     wide_width(), 0.f, ws.dnormed.data(), CUDA_R_32F, wide_width());
        const dim3 grid(unsigned(vwn::detail::checked_int(where, "token count T", T)), groups);
        detail::groupnorm_backward_kernel<S><<<grid, detail::block_threads, 0, policy.stream()>>>(
            H.data(), H.outerStride(), ws.dnormed.data(), params.gn_weight.data(), ws.mean.data(), ws.rstd.data(),
            dH.data(), dH.outerStride(), int(D_), groups);
        VWN_CUDA_CHECK_LAUNCH();
        const unsigned cols = unsigned(detail::ceil_div(wide_width(), detail::column_threads));
        const unsigned tg = detail::token_groups(T, cols);
        ws.partial.resize(std::size_t(tg) * 2 * std::size_t(wide_width()));
        detail::groupnorm_affine_grad_kernel<S><<<dim3(cols, tg), detail::column_threads, 0, policy.stream()>>>(
            H.data(), H.outerStride(), ws.dnormed.data(), ws.mean.data(), ws.rstd.data(), ws.partial.data(), int(D_),
            groups, T, int(tg));
        VWN_CUDA_CHECK_LAUNCH();
        detail::groupnorm_affine_grad_finish<float><<<cols, detail::column_threads, 0, policy.stream()>>>(
            ws.partial.data(), int(tg), int(wide_width()), grads.gn_weight.data(), grads.gn_bias.data());
        VWN_CUDA_CHECK_LAUNCH();
      }
    }
  }

 private:
  detail::gemm_weight<S> w_;
  using widths<M, N>::D_;

 public:
  using widths<M, N>::width;
  using widths<M, N>::block_width;
  using widths<M, N>::wide_width;
};

}  // namespace vwn::cuda
