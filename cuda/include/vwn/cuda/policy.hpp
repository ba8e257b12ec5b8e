#pragma once
/// \file policy.hpp
/// The device execution policy (Thrust style: `vwn::cuda::device`, `vwn::cuda::device.on(stream)`), and RAII
/// owners of CUDA streams, events and cuBLAS handles.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <utility>
#include <vector>

#include "error.hpp"

namespace vwn::cuda {

namespace detail {

// Move-only owner of a CUDA or cuBLAS handle, released by `Destroy` (errors ignored: a destructor never throws).
template <class Handle, auto Destroy>
class unique_handle {
 public:
  unique_handle() = default;
  ~unique_handle() {
    if (h_) static_cast<void>(Destroy(h_));
  }
  unique_handle(unique_handle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  unique_handle& operator=(unique_handle&& o) noexcept {
    std::swap(h_, o.h_);
    return *this;
  }
  unique_handle(const unique_handle&) = delete;
  unique_handle& operator=(const unique_handle&) = delete;
  /// The raw handle.
  Handle get() const { return h_; }

 protected:
  Handle h_ = nullptr;
};

}  // namespace detail

/// Owning cuBLAS handle, created on the current device.
class blas_handle : public detail::unique_handle<cublasHandle_t, cublasDestroy> {
 public:
  blas_handle() { VWN_CUDA_CHECK(cublasCreate(&h_)); }
};

/// Owning non-blocking CUDA stream.
class stream : public detail::unique_handle<cudaStream_t, cudaStreamDestroy> {
 public:
  stream() { VWN_CUDA_CHECK(cudaStreamCreateWithFlags(&h_, cudaStreamNonBlocking)); }
  /// Waits for all work queued on the stream.
  void synchronize() const { VWN_CUDA_CHECK(cudaStreamSynchronize(h_)); }
};

/// Owning CUDA event (timing enabled).
class event : public detail::unique_handle<cudaEvent_t, cudaEventDestroy> {
 public:
  event() { VWN_CUDA_CHECK(cudaEventCreate(&h_)); }
  /// Records the event on `s`.
  void record(cudaStream_t s) { VWN_CUDA_CHECK(cudaEventRecord(h_, s)); }
  /// Milliseconds from `start` to this event (waits for this event).
  float elapsed_since(const event& start) const {
    VWN_CUDA_CHECK(cudaEventSynchronize(h_));
    float ms = 0;
    VWN_CUDA_CHECK(cudaEventElapsedTime(&ms, start.h_, h_));
    return ms;
  }
};

/// Number of CUDA devices; 0 when there is none or the driver is missing (never throws).
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    static_cast<void>(cudaGetLastError());  // clear it, so that later calls do not report it
    return 0;
  }
  return n;
}

namespace detail {

// The calling thread's cuBLAS handle for the current device, created on first use.
inline cublasHandle_t default_blas_handle() {
  int dev = 0;
  VWN_CUDA_CHECK(cudaGetDevice(&dev));
  thread_local std::vector<std::unique_ptr<blas_handle>> handles;
  if (std::size_t(dev) >= handles.size()) handles.resize(std::size_t(dev) + 1);
  if (!handles[std::size_t(dev)]) handles[std::size_t(dev)] = std::make_unique<blas_handle>();
  return handles[std::size_t(dev)]->get();
}

}  // namespace detail

/// Device execution policy: a CUDA stream (default: the legacy default stream) and a cuBLAS handle (default:
/// one per thread and device, created on first use). Pass it first to every device primitive, as `vwn::host`
/// is passed to the host ones. All work is queued on `stream()`; nothing synchronises unless documented.
class device_t {
 public:
  constexpr device_t() = default;
  /// The same policy on stream `s`.
  constexpr device_t on(cudaStream_t s) const {
    device_t d = *this;
    d.stream_ = s;
    return d;
  }
  /// The same policy with the caller's cuBLAS handle `h` (the library sets its stream before each use).
  constexpr device_t with(cublasHandle_t h) const {
    device_t d = *this;
    d.blas_ = h;
    return d;
  }
  /// The stream all work is queued on.
  constexpr cudaStream_t stream() const { return stream_; }
  /// The cuBLAS handle, bound to `stream()`.
  cublasHandle_t blas() const {
    cublasHandle_t h = blas_ ? blas_ : detail::default_blas_handle();
    VWN_CUDA_CHECK(cublasSetStream(h, stream_));
    return h;
  }
  /// Waits for the work queued on the stream.
  void synchronize() const { VWN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
};

/// The device policy on the default stream: `vwn::cuda::device`, or `vwn::cuda::device.on(stream)`.
inline constexpr device_t device{};

}  // namespace vwn::cuda
