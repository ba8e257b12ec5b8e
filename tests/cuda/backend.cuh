#pragma once
// The device back end as seen by the primitive test bodies (tests/primitives/*_body.hpp), with the members of the
// host back end (tests/support/backend.hpp): module types, moving double matrices in (rounded to the storage S)
// and out, poisoned outputs, the policy, the reason to skip where no GPU is present, and the tolerances.

#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include <vwn/cuda.hpp>

#include <support/backend.hpp>

namespace vwn_test {

// Why no device test can run here, or "" when a device is present.
inline std::string no_device_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    return std::string("no CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(e) + ", " + cudaGetErrorString(e) +
           "): device test skipped";
  }
  if (n == 0) return "no CUDA device (cudaGetDeviceCount returned 0): device test skipped";
  return "";
}

// A device GHC whose width connection (forward and backward) always runs `Kernel` (vwn::cuda::width_kernel).
template <int M, int N, class S, bool Dynamic, vwn::cuda::width_kernel Kernel>
class forced_width_ghc : public vwn::cuda::basic_ghc<M, N, S, Dynamic> {
  using base = vwn::cuda::basic_ghc<M, N, S, Dynamic>;

 public:
  using base::base;
  using typename base::workspace;
  void forward_width(const vwn::cuda::device_t& policy, vwn::cuda::device_matrix_cref<S> H,
                     vwn::cuda::device_matrix_ref<S> X, vwn::cuda::device_matrix_ref<S> C, workspace& ws) const {
    base::forward_width(policy, H, X, C, ws, Kernel);
  }
  void backward_width(const vwn::cuda::device_t& policy, vwn::cuda::device_matrix_cref<S> H,
                      vwn::cuda::device_matrix_cref<S> dX, vwn::cuda::device_matrix_cref<S> dC,
                      vwn::cuda::device_matrix_ref<S> dH, workspace& ws) {
    base::backward_width(policy, H, dX, dC, dH, ws, Kernel);
  }
};

// The device back end with activations stored as S (float or bf16); parameters and gradients are float. `Kernel`
// is the GHC's forward width kernel (automatic: staged where it fits, as the library chooses).
template <class S, vwn::cuda::width_kernel Kernel = vwn::cuda::width_kernel::automatic>
struct device_backend {
  using storage = S;
  template <int M, int N, bool Dynamic>
  using ghc = std::conditional_t<Kernel == vwn::cuda::width_kernel::automatic, vwn::cuda::basic_ghc<M, N, S, Dynamic>,
                                 forced_width_ghc<M, N, S, Dynamic, Kernel>>;
  template <int M, int N>
  using overwidth_embedding = vwn::cuda::overwidth_embedding<M, N, S>;
  template <int M, int N>
  using lowrank_overwidth_embedding = vwn::cuda::lowrank_overwidth_embedding<M, N, S>;
  template <int M, int N>
  using reduce_head = vwn::cuda::reduce_head<M, N, S>;
  template <int M, int N>
  using mtp_mixer = vwn::cuda::mtp_mixer<M, N, S>;
  using tensor = vwn::cuda::device_matrix<S>;

  static std::string name() {
    return "device_" + vwn::cuda::detail::storage_info<S>::name() +
           (Kernel == vwn::cuda::width_kernel::tiled ? "_tiled" : Kernel == vwn::cuda::width_kernel::staged ? "_staged" : "");
  }
  static constexpr vwn::cuda::device_t policy() { return vwn::cuda::device; }
  static std::string skip_reason() { return no_device_reason(); }
  static void synchronize() { vwn::cuda::device.synchronize(); }

  static double round(double x) { return double(vwn::cuda::to_float(vwn::cuda::from_float<S>(float(x)))); }
  static tensor upload(const vwn::matrix<double>& h) {
    tensor d(h.rows(), h.cols());
    vwn::cuda::upload<S>(vwn::cuda::device, h, d);
    return d;
  }
  static vwn::matrix<double> download(const tensor& d) {
    vwn::matrix<double> h;
    vwn::cuda::download<S>(vwn::cuda::device, d, h);
    return h;
  }
  static tensor poisoned(index_t rows, index_t cols) {
    tensor d(rows, cols);
    vwn::cuda::poison<S>(vwn::cuda::device, d);
    return d;
  }

  // The parameters of a host module in double (converted to float).
  template <class Module, class Host>
  static void set_parameters(Module& m, Host& host) {
    const auto p = vwn::cuda::device;
    if constexpr (requires { m.dE; }) {
      vwn::cuda::upload<float>(p, host.params.E, m.E);
    } else if constexpr (requires { m.dE_base; }) {
      vwn::cuda::upload<float>(p, host.params.E_base, m.E_base);
      vwn::cuda::upload<float>(p, host.params.W_expand, m.W_expand);
    } else if constexpr (requires { m.dW_mix; }) {
      vwn::cuda::upload<float>(p, host.params.W_mix, m.W_mix);
    } else if constexpr (requires { m.params.upload(p, host.params); }) {  // GHC
      m.params.upload(p, host.params);
    } else {  // reduce head: tensor by tensor, in visit order
      std::vector<std::vector<double>> values;
      host.params.visit([&](std::string_view, double* data, index_t size, bool) { values.emplace_back(data, data + size); });
      std::size_t i = 0;
      m.params.visit([&](std::string_view, float* d, index_t size, bool) {
        vwn::cuda::upload_floats(p, values.at(i++).data(), size, d);
      });
    }
  }

  // Every parameter gradient as a dense `1 x size` row, by name.
  template <class Module>
  static named_tensors gradients(Module& m) {
    const auto p = vwn::cuda::device;
    named_tensors out;
    auto dense = [&](const char* name, const vwn::cuda::device_matrix<float>& d) {
      vwn::matrix<double> h;
      vwn::cuda::download<float>(p, d, h);
      out.emplace_back(name, flat(h));
    };
    if constexpr (requires { m.dE; }) {
      dense("E", m.dE);
    } else if constexpr (requires { m.dE_base; }) {
      dense("E_base", m.dE_base);
      dense("W_expand", m.dW_expand);
    } else if constexpr (requires { m.dW_mix; }) {
      dense("W_mix", m.dW_mix);
    } else {  // GHC and reduce head: device tensors in visit order
      m.grads.visit([&](std::string_view name, float* d, index_t size, bool) {
        vwn::matrix<double> row(1, size);
        vwn::cuda::download_floats(p, d, size, row.data());
        out.emplace_back(std::string(name), row);
      });
    }
    return out;
  }

  // The GroupNorm output a reduce head with GroupNorm stored in its workspace by the last forward (`T x D'`).
  template <class Workspace>
  static vwn::matrix<double> groupnorm_output(const Workspace& ws, index_t T, index_t cols) {
    vwn::matrix<double> h;
    vwn::cuda::download<S>(vwn::cuda::device, vwn::cuda::device_matrix_cref<S>(ws.normed.data(), T, cols), h);
    return h;
  }

  // Outputs stored as S: float as the host float back end (support/backend.hpp), bf16 as bf16_output_tolerance.
  static constexpr tolerance output_tolerance =
      std::is_same_v<S, float> ? host_backend<float>::output_tolerance : bf16_output_tolerance;
  // Parameter gradients are float whatever the storage (the inputs are the same rounded values on both sides).
  static constexpr tolerance gradient_tolerance = host_backend<float>::gradient_tolerance;
};

}  // namespace vwn_test
