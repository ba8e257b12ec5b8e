# Builds and runs the consumer program (main.cpp) in one of the ways a project takes vwn:
#   WAY=find_package      the consumer CMake project against an installed vwn (VWN_PREFIX)
#   WAY=add_subdirectory  the consumer CMake project with vwn's source tree added (VWN_SOURCE_DIR)
#   WAY=fetchcontent      the consumer CMake project fetching vwn's source tree (VWN_SOURCE_DIR) with FetchContent
#   WAY=pkg-config        `CXX -std=c++20 $(pkg-config --cflags vwn) main.cpp` against an installed vwn (VWN_PREFIX,
#                         its vwn.pc; PKG_CONFIG names the program)
#   WAY=plain             `CXX -std=c++20 -I<VWN_SOURCE_DIR>/include -I<EIGEN_INCLUDE_DIR> main.cpp`
# Usage: cmake -DWAY=... -DCONSUMER_SOURCE_DIR=... -DCONSUMER_BINARY_DIR=... -DCONSUMER_CXX_COMPILER=...
#              [-DVWN_PREFIX=...] [-DVWN_SOURCE_DIR=...] [-DEIGEN_INCLUDE_DIR=...] [-DPKG_CONFIG=...]
#              [-DCONSUMER_GENERATOR=...] [-DCONSUMER_BUILD_TYPE=...] [-DEIGEN3_DIR=...] -P run_consumer.cmake
# The CMake ways pass VWN_CUDA=OFF to the added source tree, so that it does not look for a CUDA compiler.
cmake_minimum_required(VERSION 3.24)

set(required WAY CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR CONSUMER_CXX_COMPILER)
if(WAY STREQUAL "find_package" OR WAY STREQUAL "pkg-config")
  list(APPEND required VWN_PREFIX)
elseif(WAY STREQUAL "add_subdirectory" OR WAY STREQUAL "fetchcontent")
  list(APPEND required VWN_SOURCE_DIR)
elseif(WAY STREQUAL "plain")
  list(APPEND required VWN_SOURCE_DIR EIGEN_INCLUDE_DIR)
else()
  message(FATAL_ERROR "run_consumer.cmake: WAY: expected find_package, add_subdirectory, fetchcontent, pkg-config or "
                      "plain, got '${WAY}'")
endif()
if(WAY STREQUAL "pkg-config")
  list(APPEND required PKG_CONFIG)
endif()
foreach(var IN LISTS required)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is required for WAY=${WAY}")
  endif()
endforeach()
if(NOT DEFINED CONSUMER_BUILD_TYPE OR "${CONSUMER_BUILD_TYPE}" STREQUAL "")
  set(CONSUMER_BUILD_TYPE Release)
endif()

file(REMOVE_RECURSE "${CONSUMER_BINARY_DIR}")
file(MAKE_DIRECTORY "${CONSUMER_BINARY_DIR}")

function(run_step what)
  string(REPLACE ";" " " line "${ARGN}")
  message(STATUS "${what}: ${line}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "run_consumer.cmake: ${what} failed (${rc})")
  endif()
endfunction()

set(exe "")
if(WAY STREQUAL "pkg-config" OR WAY STREQUAL "plain")
  if(WAY STREQUAL "pkg-config")
    # An installed vwn.pc: arch-independent, so under share/ (lib/ where a distribution puts it there).
    set(ENV{PKG_CONFIG_PATH} "${VWN_PREFIX}/share/pkgconfig:${VWN_PREFIX}/lib/pkgconfig")
    execute_process(COMMAND "${PKG_CONFIG}" --cflags vwn OUTPUT_VARIABLE cflags RESULT_VARIABLE rc
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    if(NOT rc EQUAL 0)
      message(FATAL_ERROR "run_consumer.cmake: pkg-config --cflags vwn failed (${rc}) with PKG_CONFIG_PATH=$ENV{PKG_CONFIG_PATH}")
    endif()
    execute_process(COMMAND "${PKG_CONFIG}" --modversion vwn OUTPUT_VARIABLE version OUTPUT_STRIP_TRAILING_WHITESPACE)
    message(STATUS "pkg-config: vwn ${version}, --cflags: ${cflags}")
    separate_arguments(flags UNIX_COMMAND "${cflags}")
  else()
    set(flags "-I${VWN_SOURCE_DIR}/include" "-I${EIGEN_INCLUDE_DIR}")
  endif()
  set(exe "${CONSUMER_BINARY_DIR}/consumer")
  run_step("compile" "${CONSUMER_CXX_COMPILER}" -std=c++20 ${flags} "${CONSUMER_SOURCE_DIR}/main.cpp" -o "${exe}")
else()
  set(configure_args
    -S "${CONSUMER_SOURCE_DIR}"
    -B "${CONSUMER_BINARY_DIR}"
    "-DVWN_CONSUMER_WAY=${WAY}"
    "-DCMAKE_BUILD_TYPE=${CONSUMER_BUILD_TYPE}"
    "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}")
  if(WAY STREQUAL "find_package")
    list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${VWN_PREFIX}")
  else()
    list(APPEND configure_args "-DVWN_SOURCE_DIR=${VWN_SOURCE_DIR}" -DVWN_CUDA=OFF)
  endif()
  if(CONSUMER_GENERATOR)
    list(APPEND configure_args -G "${CONSUMER_GENERATOR}")
  endif()
  if(EIGEN3_DIR)
    list(APPEND configure_args "-DEigen3_DIR=${EIGEN3_DIR}")
  endif()
  run_step("configure" "${CMAKE_COMMAND}" ${configure_args})
  run_step("build" "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}" --config "${CONSUMER_BUILD_TYPE}")
  # Single-config generators put the program at the top of the build tree, multi-config ones in a per-configuration
  # folder.
  foreach(candidate IN ITEMS
      "${CONSUMER_BINARY_DIR}/consumer"
      "${CONSUMER_BINARY_DIR}/consumer.exe"
      "${CONSUMER_BINARY_DIR}/${CONSUMER_BUILD_TYPE}/consumer"
      "${CONSUMER_BINARY_DIR}/${CONSUMER_BUILD_TYPE}/consumer.exe")
    if(EXISTS "${candidate}")
      set(exe "${candidate}")
      break()
    endif()
  endforeach()
  if(exe STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: consumer program not found in ${CONSUMER_BINARY_DIR}")
  endif()
endif()

run_step("run" "${exe}")
