# Configure, build and run the consumer project against an installed vwn.
# Usage: cmake -DVWN_PREFIX=... -DCONSUMER_SOURCE_DIR=... -DCONSUMER_BINARY_DIR=...
#              [-DCONSUMER_GENERATOR=...] [-DCONSUMER_CXX_COMPILER=...]
#              [-DCONSUMER_BUILD_TYPE=...] [-DEIGEN3_DIR=...] -P run_consumer.cmake
foreach(var IN ITEMS VWN_PREFIX CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: ${var} is required")
  endif()
endforeach()
if(NOT DEFINED CONSUMER_BUILD_TYPE OR "${CONSUMER_BUILD_TYPE}" STREQUAL "")
  set(CONSUMER_BUILD_TYPE Release)
endif()

file(REMOVE_RECURSE "${CONSUMER_BINARY_DIR}")
file(MAKE_DIRECTORY "${CONSUMER_BINARY_DIR}")

set(configure_args
  -S "${CONSUMER_SOURCE_DIR}"
  -B "${CONSUMER_BINARY_DIR}"
  "-DCMAKE_PREFIX_PATH=${VWN_PREFIX}"
  "-DCMAKE_BUILD_TYPE=${CONSUMER_BUILD_TYPE}")
if(CONSUMER_GENERATOR)
  list(APPEND configure_args -G "${CONSUMER_GENERATOR}")
endif()
if(CONSUMER_CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}")
endif()
if(EIGEN3_DIR)
  list(APPEND configure_args "-DEigen3_DIR=${EIGEN3_DIR}")
endif()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "run_consumer.cmake: ${what} failed (${rc})")
  endif()
endfunction()

run_step("configure" "${CMAKE_COMMAND}" ${configure_args})
run_step("build" "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}" --config "${CONSUMER_BUILD_TYPE}")

# Single-config generators put the program at the top of the build tree,
# multi-config ones in a per-configuration folder.
set(exe "")
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

run_step("run" "${exe}")
