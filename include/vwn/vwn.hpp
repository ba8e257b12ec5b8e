#pragma once
/// \file vwn.hpp
/// Umbrella header of vwn: Virtual Width Networks primitives and the host (Eigen) back end, the
/// building blocks and training utilities of the reference transformer, and safetensors I/O.

#include "config.hpp"
#include "random.hpp"
#include "shape.hpp"
#include "ghc.hpp"
#include "embedding.hpp"
#include "reduce.hpp"
#include "mtp.hpp"
#include "nn.hpp"
#include "optim.hpp"
#include "data.hpp"
#include "model.hpp"
#include "safetensors.hpp"
