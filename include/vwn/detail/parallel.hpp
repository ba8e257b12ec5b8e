#pragma once
// Coarse-grained parallel loops and products of the host back end (ghc.hpp, embedding.hpp, reduce.hpp,
// mtp.hpp), also used by the reference transformer's host code (examples/transformer/).
//
// Every loop here is split into a fixed set of tasks that does not depend on the thread count, each task
// writes only its own outputs, and the tasks are handed out dynamically: results are the same for any number
// of threads, and on a shared machine a thread that the OS deschedules holds up only the task it is in (a
// static split would make the whole team wait for it at the end of every loop).
//
// Matrix products are split into row panels of the result, each an independent single-threaded product
// (Eigen's, or a BLAS's that a program installs with `set_host_gemm_kernel`). Eigen's own GEMM threading
// synchronises its threads by busy-waiting several times per product; on a loaded machine that costs far more
// than it gains (a training step measured 10x slower with two threads than with one while two other processes
// kept both cores busy). `eigen_serial` turns it off for the duration of a model's forward or backward.

#include <algorithm>
#include <cstddef>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../core/config.hpp"

namespace vwn::detail {

/// Fixed number of work chunks over tokens. Each chunk reduces its own partial parameter gradients,
/// and the partials are added in chunk order, so results do not depend on the thread count.
inline constexpr index_t reduction_chunks = 32;

/// Below this many items a loop runs on the calling thread: waking a team for a handful of tokens costs
/// more than it saves, and much more when the cores are shared.
inline constexpr index_t parallel_threshold = 64;

/// Calls `f(chunk, begin, end)` for `chunks` contiguous ranges covering [0, count), in parallel under OpenMP
/// when `count >= parallel_threshold`, the chunks handed out one at a time (a thread the OS deschedules holds
/// up one chunk, not a fixed half of them). The chunking does not depend on the thread count.
template <class F>
void for_chunks(index_t count, index_t chunks, F&& f) {
  chunks = std::max<index_t>(1, std::min(chunks, count));
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (count >= parallel_threshold && !omp_in_parallel())
#endif
  for (index_t c = 0; c < chunks; ++c) f(c, count * c / chunks, count * (c + 1) / chunks);
}

/// Number of chunks `for_chunks(count, reduction_chunks, ...)` uses.
inline index_t chunk_count(index_t count) { return std::max<index_t>(1, std::min(reduction_chunks, count)); }

/// Pointer to row `r` of a row-major matrix or view.
template <class M>
auto row_ptr(M& m, index_t r) {
  return m.data() + r * m.outerStride();
}

/// Calls `f(task)` for every task in [0, count), in parallel under OpenMP (dynamic schedule) when `parallel`,
/// `count >= 2` and not already inside a parallel region; otherwise in order on the calling thread.
template <class F>
void for_tasks(index_t count, F&& f, bool parallel = true) {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (parallel && count > 1 && !omp_in_parallel())
#endif
  for (index_t i = 0; i < count; ++i) f(i);
  (void)parallel;
}

/// Calls `f(begin, end)` for `tasks` contiguous ranges covering [0, count) (fewer when `count < tasks`),
/// as parallel tasks; on the calling thread below `parallel_threshold` items (a handful of token rows is
/// not worth waking the team).
template <class F>
void for_ranges(index_t count, index_t tasks, F&& f) {
  tasks = std::max<index_t>(1, std::min(tasks, count));
  for_tasks(tasks, [&](index_t i) { f(count * i / tasks, count * (i + 1) / tasks); }, count >= parallel_threshold);
}

/// Rows per panel of a parallel product (at least; the row count is split evenly). Every panel packs the
/// whole other operand again, so panels much thinner than this cost more in packing than they gain.
inline constexpr index_t product_panel_rows = 256;
/// Most panels of one parallel product.
inline constexpr index_t product_max_panels = 16;
/// Row ranges of an element-wise pass over a batch.
inline constexpr index_t elementwise_tasks = 16;

/// Number of row panels of a product with `rows` result rows: `rows / product_panel_rows`, rounded down to
/// an even count (so that two threads get equal shares), and 2 for 128 to 511 rows; 1 below 128 rows.
inline index_t product_panels(index_t rows) {
  if (rows < product_panel_rows / 2) return 1;
  const index_t p = std::clamp<index_t>(rows / product_panel_rows, 2, product_max_panels);
  return p - p % 2;
}

/// A single-threaded matrix product on raw row-major storage, the hook through which a program hands vwn's host
/// products to a BLAS (see `set_host_gemm_kernel`): `c = op(a) op(b)` when `accumulate` is false, `c += op(a) op(b)`
/// when true, with `op(a)` `m x k` (`a` stored `k x m` when `transpose_a`), `op(b)` `k x n`, `c` `m x n`, and the `ld`s
/// the distances between consecutive rows. vwn calls it from several threads at once (one call per row panel), so it
/// must be safe to call concurrently and must not start threads of its own inside a parallel region.
template <class Scalar>
using host_gemm_kernel = void (*)(bool transpose_a, bool transpose_b, index_t m, index_t n, index_t k,
                                  const Scalar* a, index_t lda, const Scalar* b, index_t ldb, bool accumulate,
                                  Scalar* c, index_t ldc);

/// The kernel the host products use, or null for Eigen's own product (the default).
template <class Scalar>
inline host_gemm_kernel<Scalar> host_gemm = nullptr;

/// Hands the host products of `Scalar` to `kernel` (null: back to Eigen's product) and returns the previous kernel.
/// Set it before the model runs, not while a product is in flight. The row panels of `gemm` do not change, so a
/// kernel that is deterministic for a given shape keeps the results independent of the thread count.
template <class Scalar>
host_gemm_kernel<Scalar> set_host_gemm_kernel(host_gemm_kernel<Scalar> kernel) {
  const host_gemm_kernel<Scalar> previous = host_gemm<Scalar>;
  host_gemm<Scalar> = kernel;
  return previous;
}

/// `dst = op(lhs) * op(rhs)` (or `dst += ...` with `Accumulate`) on the calling thread: the installed
/// `host_gemm_kernel` where there is one, Eigen's product otherwise. `lhs` and `rhs` are the stored (untransposed)
/// row-major operands; `dst` must not alias them.
template <class Scalar, bool Accumulate, bool TransposeLhs, bool TransposeRhs>
void serial_gemm(matrix_ref<Scalar> dst, matrix_cref<Scalar> lhs, matrix_cref<Scalar> rhs) {
  const index_t m = dst.rows(), n = dst.cols(), k = TransposeLhs ? lhs.rows() : lhs.cols();
  if (const host_gemm_kernel<Scalar> kernel = host_gemm<Scalar>; kernel != nullptr && m > 0 && n > 0 && k > 0) {
    kernel(TransposeLhs, TransposeRhs, m, n, k, lhs.data(), lhs.outerStride(), rhs.data(), rhs.outerStride(),
           Accumulate, dst.data(), dst.outerStride());
    return;
  }
  const auto run = [&](const auto& l, const auto& r) {
    if constexpr (Accumulate)
      dst.noalias() += l * r;
    else
      dst.noalias() = l * r;
  };
  if constexpr (TransposeLhs && TransposeRhs)
    run(lhs.transpose(), rhs.transpose());
  else if constexpr (TransposeLhs)
    run(lhs.transpose(), rhs);
  else if constexpr (TransposeRhs)
    run(lhs, rhs.transpose());
  else
    run(lhs, rhs);
}

/// `dst = op(lhs) * op(rhs)` (or `dst += ...` with `Accumulate`), `op` the transpose where `TransposeLhs` /
/// `TransposeRhs`, computed as row panels of `dst` in parallel, each a `serial_gemm`: every product of a batch by a
/// weight in vwn's host code. `dst` must not alias `lhs` or `rhs`. The panels depend only on the shape, so the result
/// does not depend on the thread count. One function per scalar type and transposition, whatever the calling
/// module's shape: a project may compile these once (see `VWN_EXTERN_HOST_GEMM`).
template <class Scalar, bool Accumulate, bool TransposeLhs, bool TransposeRhs>
void gemm(matrix_ref<Scalar> dst, matrix_cref<Scalar> lhs, matrix_cref<Scalar> rhs) {
  const index_t rows = dst.rows();
  for_ranges(rows, product_panels(rows), [&](index_t r0, index_t r1) {
    // Rows r0..r1 of op(lhs): rows of lhs, or columns of the stored transpose.
    const matrix_cref<Scalar> l = TransposeLhs ? matrix_cref<Scalar>(lhs.middleCols(r0, r1 - r0))
                                               : matrix_cref<Scalar>(lhs.middleRows(r0, r1 - r0));
    serial_gemm<Scalar, Accumulate, TransposeLhs, TransposeRhs>(dst.middleRows(r0, r1 - r0), l, rhs);
  });
}

template <class E>
struct is_transpose : std::false_type {};
template <class E>
struct is_transpose<Eigen::Transpose<E>> : std::true_type {};

template <class E>
const auto& untransposed(const E& e) {
  if constexpr (is_transpose<E>::value)
    return e.nestedExpression();
  else
    return e;
}

/// `dst = lhs * rhs` (or `dst += lhs * rhs` with `Accumulate`) through `gemm`: `lhs` and `rhs` are row-major
/// matrices, blocks or maps, or their `.transpose()`.
template <bool Accumulate = false, class Dst, class Lhs, class Rhs>
void product(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  using Scalar = typename std::remove_reference_t<Dst>::Scalar;
  gemm<Scalar, Accumulate, is_transpose<Lhs>::value, is_transpose<Rhs>::value>(dst, untransposed(lhs),
                                                                                untransposed(rhs));
}

/// `dst = lhs * rhs` (or `dst += lhs * rhs` with `Accumulate`) on the calling thread through `serial_gemm`, for
/// products inside a task that already runs in parallel: operands as for `product`.
template <bool Accumulate = false, class Dst, class Lhs, class Rhs>
void serial_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  using Scalar = typename std::remove_reference_t<Dst>::Scalar;
  serial_gemm<Scalar, Accumulate, is_transpose<Lhs>::value, is_transpose<Rhs>::value>(dst, untransposed(lhs),
                                                                                       untransposed(rhs));
}

/// The `gemm` variants vwn's host code uses: `X(Scalar, Accumulate, TransposeLhs, TransposeRhs)`.
#define VWN_HOST_GEMM_VARIANTS(X, Scalar) \
  X(Scalar, false, false, false)          \
  X(Scalar, false, false, true)           \
  X(Scalar, true, false, true)            \
  X(Scalar, true, true, false)

#define VWN_HOST_GEMM_SIGNATURE(S, A, TL, TR) \
  void gemm<S, A, TL, TR>(matrix_ref<S>, matrix_cref<S>, matrix_cref<S>);
#define VWN_HOST_GEMM_EXTERN(S, A, TL, TR) extern template VWN_HOST_GEMM_SIGNATURE(S, A, TL, TR)
#define VWN_HOST_GEMM_DEFINE(S, A, TL, TR) template VWN_HOST_GEMM_SIGNATURE(S, A, TL, TR)

/// Explicit instantiation of every `gemm` variant for `Scalar`: write `VWN_INSTANTIATE_HOST_GEMM(float)` at global
/// scope in one source file of a project that defines `VWN_EXTERN_HOST_GEMM` in all of its translation units.
#define VWN_INSTANTIATE_HOST_GEMM(Scalar) \
  namespace vwn::detail {                 \
  VWN_HOST_GEMM_VARIANTS(VWN_HOST_GEMM_DEFINE, Scalar)  \
  }

// With VWN_EXTERN_HOST_GEMM defined, the products are compiled once, in the file that instantiates them, instead
// of in every translation unit that uses a primitive: the blocked Eigen GEMM kernels behind them cost several
// seconds of compile time per translation unit, the same code whatever the module and its (m, n).
#ifdef VWN_EXTERN_HOST_GEMM
VWN_HOST_GEMM_VARIANTS(VWN_HOST_GEMM_EXTERN, float)
VWN_HOST_GEMM_VARIANTS(VWN_HOST_GEMM_EXTERN, double)
#endif

/// Sets Eigen's own thread count to 1 while it lives (every product of the model is either split by
/// `product` or runs inside a parallel loop), and restores the previous setting.
class eigen_serial {
 public:
  eigen_serial() : previous_(Eigen::nbThreads()) {
#ifdef _OPENMP
    // nbThreads() reports omp_get_max_threads() unless a count was set; 0 restores that default.
    if (previous_ == omp_get_max_threads()) previous_ = 0;
#endif
    Eigen::setNbThreads(1);
  }
  ~eigen_serial() { Eigen::setNbThreads(previous_); }
  eigen_serial(const eigen_serial&) = delete;
  eigen_serial& operator=(const eigen_serial&) = delete;

 private:
  int previous_;
};

}  // namespace vwn::detail
