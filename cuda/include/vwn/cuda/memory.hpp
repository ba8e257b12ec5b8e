#pragma once
/// \file memory.hpp
/// Device memory: an owning buffer (`device_buffer<T>`), row-major matrix views that mirror the host
/// `matrix_ref` / `matrix_cref` (`device_matrix_ref<S>`, `device_matrix_cref<S>`: pointer, rows, cols, row
/// stride), an owning `device_matrix<S>`, and copies between host Eigen matrices and the device with
/// conversion to and from the storage type.

#include <cuda_runtime.h>

#include <cstddef>
#include <type_traits>
#include <utility>
#include <vector>

#include <vwn/core/checks.hpp>
#include <vwn/core/config.hpp>

#include "error.hpp"
#include "policy.hpp"
#include "scalar.hpp"

namespace vwn::cuda {

/// Owning, move-only device allocation of `size()` elements of `T` (uninitialised). `resize` keeps the
/// allocation when it is large enough and otherwise replaces it (contents are not preserved).
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  /// `n` uninitialised elements.
  explicit device_buffer(std::size_t n) { resize(n); }
  ~device_buffer() { release(); }
  device_buffer(device_buffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), cap_(std::exchange(o.cap_, 0)) {}
  device_buffer& operator=(device_buffer&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(n_, o.n_);
    std::swap(cap_, o.cap_);
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;

  /// Makes room for `n` elements; reallocates (without copying) only when `n` exceeds the capacity.
  void resize(std::size_t n) {
    if (n > cap_) {
      release();
      if (n) VWN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
      cap_ = n;
    }
    n_ = n;
  }
  /// Device pointer (null when empty).
  T* data() { return p_; }
  /// Device pointer (null when empty).
  const T* data() const { return p_; }
  /// Number of elements.
  std::size_t size() const { return n_; }
  /// Sets every byte to `byte` on `policy`'s stream.
  void fill_bytes(const device_t& policy, int byte) {
    if (n_) VWN_CUDA_CHECK(cudaMemsetAsync(p_, byte, n_ * sizeof(T), policy.stream()));
  }

 private:
  void release() noexcept {
    if (p_) static_cast<void>(cudaFree(p_));  // a destructor never throws
    p_ = nullptr;
    n_ = cap_ = 0;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0, cap_ = 0;
};

/// Non-owning view of a row-major device matrix: `rows() x cols()` elements of `T`, row `r` starting at
/// `data() + r * outerStride()`. `T` may be const. Mirrors the host `matrix_ref` / `matrix_cref`.
template <class T>
class device_view {
 public:
  device_view() = default;
  /// View of `rows x cols` elements at `data` with row stride `stride` (elements; default `cols`).
  device_view(T* data, index_t rows, index_t cols, index_t stride = -1)
      : data_(data), rows_(rows), cols_(cols), stride_(stride < 0 ? cols : stride) {}
  /// A view of non-const elements converts to a view of const elements.
  template <class U, class = std::enable_if_t<std::is_same_v<T, const U>>>
  device_view(const device_view<U>& o) : device_view(o.data(), o.rows(), o.cols(), o.outerStride()) {}

  T* data() const { return data_; }
  index_t rows() const { return rows_; }
  index_t cols() const { return cols_; }
  /// Row stride in elements.
  index_t outerStride() const { return stride_; }
  index_t size() const { return rows_ * cols_; }
  /// Rows `r0 .. r0 + n - 1`.
  device_view middle_rows(index_t r0, index_t n) const { return {data_ + r0 * stride_, n, cols_, stride_}; }
  /// Columns `c0 .. c0 + n - 1` (same row stride).
  device_view middle_cols(index_t c0, index_t n) const { return {data_ + c0, rows_, n, stride_}; }

 private:
  T* data_ = nullptr;
  index_t rows_ = 0, cols_ = 0, stride_ = 0;
};

/// Writable device view (like `vwn::matrix_ref<S>`).
template <class S>
using device_matrix_ref = device_view<S>;
/// Read-only device view (like `vwn::matrix_cref<S>`).
template <class S>
using device_matrix_cref = device_view<const S>;

/// Owning row-major device matrix with contiguous rows; converts to both view kinds.
template <class S>
class device_matrix {
 public:
  device_matrix() = default;
  /// `rows x cols` uninitialised elements.
  device_matrix(index_t rows, index_t cols) { resize(rows, cols); }
  /// Reshapes (reallocating only to grow; contents are not preserved).
  void resize(index_t rows, index_t cols) {
    buf_.resize(std::size_t(rows * cols));
    rows_ = rows, cols_ = cols;
  }
  S* data() { return buf_.data(); }
  const S* data() const { return buf_.data(); }
  index_t rows() const { return rows_; }
  index_t cols() const { return cols_; }
  index_t outerStride() const { return cols_; }
  index_t size() const { return rows_ * cols_; }
  device_matrix_ref<S> view() { return {data(), rows_, cols_}; }
  device_matrix_cref<S> view() const { return {data(), rows_, cols_}; }
  operator device_matrix_ref<S>() { return view(); }
  operator device_matrix_cref<S>() const { return view(); }

 private:
  device_buffer<S> buf_;
  index_t rows_ = 0, cols_ = 0;
};

/// Sets every element of `v` to NaN (all bits set: a NaN in float and in bf16), so that an element a kernel
/// does not write is caught by the tests. Asynchronous on `policy`'s stream.
template <class S>
void poison(const device_t& policy, device_matrix_ref<S> v) {
  if (v.size() == 0) return;
  VWN_CUDA_CHECK(cudaMemset2DAsync(v.data(), std::size_t(v.outerStride()) * sizeof(S), 0xFF,
                                   std::size_t(v.cols()) * sizeof(S), std::size_t(v.rows()), policy.stream()));
}

/// Copies the host matrix `src` (any Eigen dense expression of float or double) into the device view `dst`
/// of the same shape, rounding to `S`. Synchronous: returns when the copy is complete.
template <class S, class Host>
void upload(const device_t& policy, const Host& src, device_matrix_ref<S> dst) {
  if (src.rows() != dst.rows() || src.cols() != dst.cols())
    vwn::detail::fail("vwn::cuda::upload", "shape", vwn::detail::shape_str(dst.rows(), dst.cols()),
                      vwn::detail::shape_str(index_t(src.rows()), index_t(src.cols())));
  std::vector<S> staging(static_cast<std::size_t>(dst.size()));
  for (index_t r = 0; r < dst.rows(); ++r)
    for (index_t c = 0; c < dst.cols(); ++c)
      staging[std::size_t(r * dst.cols() + c)] = from_float<S>(float(src(r, c)));
  VWN_CUDA_CHECK(cudaMemcpy2DAsync(dst.data(), std::size_t(dst.outerStride()) * sizeof(S), staging.data(),
                                   std::size_t(dst.cols()) * sizeof(S), std::size_t(dst.cols()) * sizeof(S),
                                   std::size_t(dst.rows()), cudaMemcpyHostToDevice, policy.stream()));
  policy.synchronize();
}

/// Copies the device view `src` into the host matrix `dst` (resized; float or double), widening from `S`.
/// Synchronous.
template <class S, class Scalar>
void download(const device_t& policy, device_matrix_cref<S> src, vwn::matrix<Scalar>& dst) {
  std::vector<S> staging(static_cast<std::size_t>(src.size()));
  if (src.size())
    VWN_CUDA_CHECK(cudaMemcpy2DAsync(staging.data(), std::size_t(src.cols()) * sizeof(S), src.data(),
                                     std::size_t(src.outerStride()) * sizeof(S), std::size_t(src.cols()) * sizeof(S),
                                     std::size_t(src.rows()), cudaMemcpyDeviceToHost, policy.stream()));
  policy.synchronize();
  dst.resize(src.rows(), src.cols());
  for (index_t i = 0; i < src.size(); ++i) dst.data()[i] = Scalar(to_float(staging[std::size_t(i)]));
}

/// Copies `count` host values (float or double) into device floats at `dst`. Synchronous.
template <class Scalar>
void upload_floats(const device_t& policy, const Scalar* src, index_t count, float* dst) {
  std::vector<float> staging(src, src + count);
  if (count)
    VWN_CUDA_CHECK(cudaMemcpyAsync(dst, staging.data(), std::size_t(count) * sizeof(float), cudaMemcpyHostToDevice,
                                   policy.stream()));
  policy.synchronize();
}

/// Copies `count` device floats at `src` into host values (float or double). Synchronous.
template <class Scalar>
void download_floats(const device_t& policy, const float* src, index_t count, Scalar* dst) {
  std::vector<float> staging(static_cast<std::size_t>(count));
  if (count)
    VWN_CUDA_CHECK(cudaMemcpyAsync(staging.data(), src, std::size_t(count) * sizeof(float), cudaMemcpyDeviceToHost,
                                   policy.stream()));
  policy.synchronize();
  for (index_t i = 0; i < count; ++i) dst[i] = Scalar(staging[std::size_t(i)]);
}

}  // namespace vwn::cuda
