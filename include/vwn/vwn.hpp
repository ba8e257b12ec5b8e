#pragma once
/// \file vwn.hpp
/// Umbrella header of vwn: Virtual Width Networks primitives, host (Eigen) back end.

#include "config.hpp"
#include "random.hpp"
#include "shape.hpp"
#include "ghc.hpp"
#include "embedding.hpp"
#include "reduce.hpp"
#include "mtp.hpp"
