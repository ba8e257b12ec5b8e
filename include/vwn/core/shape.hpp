#pragma once
/// \file shape.hpp
/// The compile-time shape (m, n) of a width connection, its run-time widths, and the cost counts of
/// the paper's section 3.5.

#include <string>

#include "checks.hpp"

namespace vwn {

/// Compile-time shape of a width connection: `M` = fraction rate (the backbone vector is cut into `M`
/// segments), `N` = number of over-width slots. Requires `N >= M >= 1`.
template <int M, int N>
struct width_shape {
  static_assert(M >= 1 && N >= M,
                "vwn: a width connection needs n >= m >= 1 (m = fraction rate, n = over-width slots; "
                "e.g. vwn::dghc<2, 3>, vwn::ghc<1, 4>, vwn::ghc<8, 64>)");
  /// Fraction rate.
  static constexpr int m = M;
  /// Number of over-width slots.
  static constexpr int n = N;
  /// Rows of the width mixing `a^T @ H`: `m` backbone segments plus `n` carried slots.
  static constexpr int mix_rows = M + N;
  /// Columns of the per-token coefficient block `[a | b]`: `(m+n) + m`.
  static constexpr int coef_cols = 2 * M + N;
  /// Whether the over-width width `D' = (n/m) D` is a whole multiple of `D` (GroupNorm in the reduce head).
  static constexpr bool integer_ratio = (N % M) == 0;
  /// Expansion ratio `r = n/m`.
  static constexpr double ratio = static_cast<double>(N) / M;

  /// Human-readable name, e.g. "(2,3)".
  static std::string name() { return "(" + std::to_string(M) + "," + std::to_string(N) + ")"; }

  /// Block width `db = D/m`; throws std::invalid_argument when `D` is not a positive multiple of `m`.
  static index_t block_width(std::string_view where, index_t D) {
    if (D <= 0 || D % M != 0)
      detail::fail(where, "backbone width D", "a positive multiple of m = " + std::to_string(M),
                   "D = " + std::to_string(D));
    return D / M;
  }
};

/// Run-time widths of a module of shape `(M, N)`: backbone `D`, block `db = D/m`, over-width `D' = n db`.
/// The base of every vwn module; the constructor checks `D`.
template <int M, int N>
class widths : public width_shape<M, N> {
 public:
  /// Backbone width `D`.
  index_t width() const { return D_; }
  /// Block (slot) width `db = D / m`.
  index_t block_width() const { return db_; }
  /// Over-width `D' = n db`.
  index_t wide_width() const { return N * db_; }

 protected:
  /// Checks that `D` is a positive multiple of `M` (std::invalid_argument naming `where` otherwise).
  widths(std::string_view where, index_t D) : D_(D), db_(width_shape<M, N>::block_width(where, D)) {}
  index_t D_;   ///< backbone width
  index_t db_;  ///< block width
};

/// Per-token cost of one GHC sub-layer at backbone width `D` (paper, section 3.5), plus the bytes each
/// host/device pass moves, used by the benchmarks to compare measured time with these counts.
struct ghc_cost {
  double norm_flops;         ///< `4 (n/m) D` (per-slot RMSNorm, dynamic only)
  double coefficient_flops;  ///< `2 (2m+n) n / m * D` (dynamic coefficient projection)
  double width_flops;        ///< `2 (m+n) n / m * D`
  double depth_flops;        ///< `2 n D`
  double width_bytes;        ///< forward width connection: read H (n db), write X (m db) and C (n db)
  double depth_bytes;        ///< forward depth connection: read Z (m db) and C (n db), write H_out (n db)
  double width_backward_bytes;  ///< read H, dX, dC, write dH
  double depth_backward_bytes;  ///< read dH_out, Z, write dZ
  double saved_bytes;           ///< dynamic: the float state the width forward saves, 1/rms and P: `4 n (2m+n+1)`
  double coefficient_bytes;     ///< dynamic: P as a depth kernel reads it (float): `4 n (2m+n)`
  /// dynamic width backward: reads P and 1/rms, writes dQ and reads it back: `4 n (2 (2m+n) + 1)`
  double backward_state_bytes;

  /// Forward FLOPs of a static GHC (width + depth).
  double static_forward_flops() const { return width_flops + depth_flops; }
  /// Forward FLOPs of a dynamic GHC (norm + coefficients + width + depth).
  double dynamic_forward_flops() const { return norm_flops + coefficient_flops + width_flops + depth_flops; }
};

/// Cost counts of a `(M, N)` GHC at backbone width `D` with `scalar_bytes`-byte storage.
template <int M, int N>
ghc_cost cost(index_t D, double scalar_bytes = 4) {
  (void)width_shape<M, N>::block_width("vwn::cost", D);
  const double d = static_cast<double>(D), n = N, m = M, db = d / m;
  ghc_cost c{};
  c.norm_flops = 4.0 * (n / m) * d;
  c.coefficient_flops = 2.0 * (2 * m + n) * n / m * d;
  c.width_flops = 2.0 * (m + n) * n / m * d;
  c.depth_flops = 2.0 * n * d;
  c.width_bytes = scalar_bytes * db * (n + m + n);
  c.depth_bytes = scalar_bytes * db * (m + n + n);
  c.width_backward_bytes = scalar_bytes * db * (n + m + n + n);
  c.depth_backward_bytes = scalar_bytes * db * (n + m + m);
  c.saved_bytes = 4.0 * n * (2 * m + n + 1);
  c.coefficient_bytes = 4.0 * n * (2 * m + n);
  c.backward_state_bytes = 4.0 * n * (2 * (2 * m + n) + 1);
  return c;
}

}  // namespace vwn
