#pragma once
/// \file tensors.hpp
/// Description of one parameter tensor of a primitive: its name, shape and whether weight decay applies. Each
/// primitive lists its tensors once (`ghc_tensors`, `reduce_head_tensors`, ...); the host and the device
/// parameter classes both visit, allocate and name their tensors from that list.

#include <string_view>

#include "config.hpp"

namespace vwn {

/// One parameter tensor: `rows x cols` row-major values (`cols == 1` for a vector).
struct tensor_spec {
  std::string_view name;  ///< e.g. "W_alpha"; the checkpoint and optimiser name within the module
  index_t rows = 0;       ///< rows (the length of a vector)
  index_t cols = 1;       ///< columns (1 for a vector)
  bool decay = false;     ///< whether decoupled weight decay applies
  /// Number of values.
  constexpr index_t size() const { return rows * cols; }
};

}  // namespace vwn
