#pragma once
/// \file vwn.hpp
/// Umbrella header of vwn: the Virtual Width Networks primitives on the host (Eigen) back end, with the types,
/// checks, shapes and shared math they are built from. The CUDA back end has its own umbrella,
/// <vwn/cuda.hpp>; the reference transformer and its programs are the example under examples/.

#include "core/checks.hpp"
#include "core/config.hpp"
#include "core/connection.hpp"
#include "core/host_device.hpp"
#include "core/random.hpp"
#include "core/shape.hpp"
#include "core/shapes.hpp"
#include "core/tensors.hpp"
#include <vwn/core/version.hpp>
#include "math/contract.hpp"
#include "math/ghc.hpp"
#include "math/mhc.hpp"
#include "math/norm.hpp"
#include "embedding.hpp"
#include "ghc.hpp"
#include "mhc.hpp"
#include "mtp.hpp"
#include "precompiled.hpp"
#include "reduce.hpp"
