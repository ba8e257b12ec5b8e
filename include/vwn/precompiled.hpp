#pragma once
/// \file precompiled.hpp
/// Compiling vwn's templates once in a project of many translation units. vwn is header-only: every translation
/// unit that uses a primitive compiles it, which costs tens of seconds per shape with Eigen. A project that uses
/// the compiled shapes (<vwn/core/shapes.hpp>) from many files can instead
///   1. define `VWN_EXTERN_COMPILED_SHAPES` and `VWN_EXTERN_HOST_GEMM` for all of its translation units (the
///      primitive headers then declare every compiled shape's primitives, in float and double, and the host
///      GEMMs as explicit instantiations made elsewhere), and
///   2. write, in one source file each (or spread over several, to compile in parallel),
///      `VWN_INSTANTIATE_SHAPE(m, n, Scalar)` for every compiled shape and scalar it uses, and
///      `VWN_INSTANTIATE_HOST_GEMM(Scalar)` for every scalar.
/// The reference transformer under examples/ does this (examples/transformer/CMakeLists.txt). Without the macros
/// nothing changes: every translation unit instantiates what it uses.

#include "embedding.hpp"
#include "ghc.hpp"
#include "mtp.hpp"
#include "reduce.hpp"

/// Explicit instantiation of every primitive of shape `(m, n)` in `Scalar` (float or double): static and dynamic
/// GHC, both over-width embeddings, the reduce head and the MTP mixer. At global scope, once per shape and scalar.
#define VWN_INSTANTIATE_SHAPE(m, n, Scalar)                     \
  template class vwn::basic_ghc<m, n, Scalar, false>;           \
  template class vwn::basic_ghc<m, n, Scalar, true>;            \
  template class vwn::overwidth_embedding<m, n, Scalar>;        \
  template class vwn::lowrank_overwidth_embedding<m, n, Scalar>; \
  template class vwn::reduce_head<m, n, Scalar>;                \
  template class vwn::mtp_mixer<m, n, Scalar>;
