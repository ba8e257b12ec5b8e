#pragma once
/// \file version.hpp
/// The version of vwn. It must equal the `project(VERSION)` of the top-level CMakeLists.txt, which refuses to
/// configure otherwise (so `include/` compiles on its own, without CMake, and the two cannot drift apart).

/// Major version.
#define VWN_VERSION_MAJOR 0
/// Minor version.
#define VWN_VERSION_MINOR 2
/// Patch version.
#define VWN_VERSION_PATCH 0
/// "MAJOR.MINOR.PATCH".
#define VWN_VERSION_STRING "0.2.0"
