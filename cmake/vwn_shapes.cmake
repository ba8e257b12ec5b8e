# The compiled shapes of this build, as a list of m_n in VWN_COMPILED_SHAPES.
#
# The set is written once, on the VWN_ALL_SHAPES line of include/vwn/core/shapes.hpp; this file reads that line.
# VWN_SHAPES (a list such as "1_1;2_3;4_8") compiles only a subset in this project's tests, examples and
# benchmarks: it writes a header defining VWN_SELECTED_SHAPES(X) and points VWN_SHAPES_HEADER at it for every
# target of the project (never for the installed package, whose users see every shape).

file(STRINGS ${PROJECT_SOURCE_DIR}/include/vwn/core/shapes.hpp _vwn_shapes_line REGEX "^#define VWN_ALL_SHAPES\\(X\\)")
string(REGEX MATCHALL "X\\([0-9]+, *[0-9]+\\)" _vwn_shape_pairs "${_vwn_shapes_line}")
if(NOT _vwn_shape_pairs)
  message(FATAL_ERROR "vwn: cannot read the VWN_ALL_SHAPES line of include/vwn/core/shapes.hpp")
endif()
set(VWN_ALL_SHAPES "")
foreach(pair IN LISTS _vwn_shape_pairs)
  string(REGEX REPLACE "X\\(([0-9]+), *([0-9]+)\\)" "\\1_\\2" mn "${pair}")
  list(APPEND VWN_ALL_SHAPES "${mn}")
endforeach()

if(VWN_SHAPES)
  set(VWN_COMPILED_SHAPES "")
  set(_vwn_selected "")
  foreach(shape IN LISTS VWN_SHAPES)
    if(NOT shape IN_LIST VWN_ALL_SHAPES)
      message(FATAL_ERROR "vwn: VWN_SHAPES: expected shapes of VWN_ALL_SHAPES (${VWN_ALL_SHAPES}), got '${shape}'")
    endif()
    if(NOT shape IN_LIST VWN_COMPILED_SHAPES)
      list(APPEND VWN_COMPILED_SHAPES "${shape}")
    endif()
  endforeach()
  # In the order of VWN_ALL_SHAPES, as the header lists them.
  set(_vwn_ordered "")
  foreach(shape IN LISTS VWN_ALL_SHAPES)
    if(shape IN_LIST VWN_COMPILED_SHAPES)
      list(APPEND _vwn_ordered "${shape}")
      string(REPLACE "_" ", " mn "${shape}")
      string(APPEND _vwn_selected " X(${mn})")
    endif()
  endforeach()
  set(VWN_COMPILED_SHAPES ${_vwn_ordered})
  set(_vwn_shapes_header ${PROJECT_BINARY_DIR}/generated/vwn_selected_shapes.hpp)
  file(CONFIGURE OUTPUT ${_vwn_shapes_header} CONTENT
       "// Written by CMake (cmake/vwn_shapes.cmake) for -DVWN_SHAPES=\"${VWN_SHAPES}\".\n#pragma once\n#define VWN_SELECTED_SHAPES(X)${_vwn_selected}\n")
  add_compile_definitions(VWN_SHAPES_HEADER="${_vwn_shapes_header}")
else()
  set(VWN_COMPILED_SHAPES ${VWN_ALL_SHAPES})
endif()
list(LENGTH VWN_COMPILED_SHAPES _vwn_shape_count)
message(STATUS "vwn: ${_vwn_shape_count} compiled shapes: ${VWN_COMPILED_SHAPES}")
