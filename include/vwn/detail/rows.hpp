#pragma once
// Host values for the shared math (<vwn/math/...>): a token's slots (or segments) as Eigen array rows, so one
// call of a math function is a handful of vectorised row operations.

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

#include "../core/config.hpp"

namespace vwn::detail {

/// A row of values of its own (scratch).
template <class S>
using row_array = Eigen::Array<S, 1, Eigen::Dynamic>;

/// One row of `width` values at `p` (const when `S` is const) as an Eigen array.
template <class S>
using row_map = Eigen::Map<std::conditional_t<std::is_const_v<S>, const Eigen::Array<std::remove_const_t<S>, 1, Eigen::Dynamic>,
                                              Eigen::Array<S, 1, Eigen::Dynamic>>>;

/// Accessor `i -> row i` over rows of `width` values stored back to back from `p` (a token's slots or segments).
template <class S>
struct rows {
  S* p;
  index_t width;
  row_map<S> operator()(int i) const { return row_map<S>(p + index_t(i) * width, width); }
};

/// Accessor `(j, k) -> c(j, k)` over an Eigen matrix of coefficients.
template <class C>
struct entries {
  const C& c;
  auto operator()(int j, int k) const { return c(j, k); }
};

/// Outputs of at least this many bytes are written by the per-token loops of the width connections with streaming
/// (non-temporal) stores: a tensor this large does not stay in the cache until its next use anyway, and a streaming
/// store saves the read of every line before it is written (a third of the traffic of a write). Smaller outputs
/// go through the cache, where the next operation finds them.
inline constexpr std::size_t stream_threshold_bytes = std::size_t(16) << 20;

/// Whether a `rows x cols` output of `Scalar` is written with `stream_store`.
template <class Scalar>
bool streams(index_t rows, index_t cols) {
  return std::size_t(rows) * std::size_t(cols) * sizeof(Scalar) >= stream_threshold_bytes;
}

/// Copies `count` values from `src` to `dst` (no overlap), with streaming stores where `stream` is true and the
/// machine has them; a plain copy otherwise. The values are the same either way. After streaming stores, call
/// `stream_fence()` before another thread reads `dst`.
template <class Scalar>
void stream_store(Scalar* dst, const Scalar* src, index_t count, bool stream) {
#if defined(__AVX512F__) || defined(__AVX__)
  if (stream) {
#if defined(__AVX512F__)
    constexpr std::uintptr_t align = 64;
#else
    constexpr std::uintptr_t align = 32;
#endif
    constexpr index_t lanes = index_t(align / sizeof(Scalar));
    index_t head = index_t(((align - reinterpret_cast<std::uintptr_t>(dst) % align) % align) / sizeof(Scalar));
    if (reinterpret_cast<std::uintptr_t>(dst) % sizeof(Scalar) != 0 || head > count) head = count;
    std::memcpy(dst, src, std::size_t(head) * sizeof(Scalar));
    index_t i = head;
    for (; i + lanes <= count; i += lanes) {
      if constexpr (std::is_same_v<Scalar, float>) {
#if defined(__AVX512F__)
        _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#else
        _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#endif
      } else {
#if defined(__AVX512F__)
        _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
#else
        _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
#endif
      }
    }
    std::memcpy(dst + i, src + i, std::size_t(count - i) * sizeof(Scalar));
    return;
  }
#endif
  (void)stream;
  std::memcpy(dst, src, std::size_t(count) * sizeof(Scalar));
}

/// Orders the streaming stores of the calling thread before what follows (the end of a parallel loop).
inline void stream_fence() {
#if defined(__AVX512F__) || defined(__AVX__)
  _mm_sfence();
#endif
}

}  // namespace vwn::detail
