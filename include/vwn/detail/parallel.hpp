#pragma once
// Coarse-grained parallel loops and products for the host code of the reference transformer (nn.hpp,
// model.hpp, optim.hpp) and of the primitives' products (reduce.hpp, mtp.hpp, embedding.hpp).
//
// Every loop here is split into a fixed set of tasks that does not depend on the thread count, each task
// writes only its own outputs, and the tasks are handed out dynamically: results are the same for any number
// of threads, and on a shared machine a thread that the OS deschedules holds up only the task it is in (a
// static split would make the whole team wait for it at the end of every loop).
//
// Matrix products are split into row panels of the result, each an independent single-threaded Eigen
// product. Eigen's own GEMM threading synchronises its threads by busy-waiting several times per product;
// on a loaded machine that costs far more than it gains (a training step measured 10x slower with two
// threads than with one while two other processes kept both cores busy). `eigen_serial` turns it off for
// the duration of a model's forward or backward.

#include <algorithm>
#include <cstddef>

#include "../config.hpp"

namespace vwn::detail {

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

/// `dst = lhs * rhs` (or `dst += lhs * rhs` with `Accumulate`), computed as row panels of `dst` in parallel.
/// `dst` must not alias `lhs` or `rhs`. The panels depend only on the shape, so the result does not depend
/// on the thread count.
template <bool Accumulate = false, class Dst, class Lhs, class Rhs>
void product(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
  const index_t rows = dst.rows();
  for_ranges(rows, product_panels(rows), [&](index_t r0, index_t r1) {
    auto d = dst.middleRows(r0, r1 - r0);
    if constexpr (Accumulate)
      d.noalias() += lhs.middleRows(r0, r1 - r0) * rhs;
    else
      d.noalias() = lhs.middleRows(r0, r1 - r0) * rhs;
  });
}

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
