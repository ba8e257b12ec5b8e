# Writes the ctest entries of the device test suites of vwn_cuda_tests (run after each build of it): one entry per
# suite (a typed suite's shapes together), which runs the suite's tests in one process (run_device_suite.sh) and is
# reported skipped when every test of it skipped, as without a CUDA device. Without a GPU every device test skips at once, so one process start per suite
# replaces one per test. The CPU-only tests (the staged kernels run on the host, CudaRuntime) keep an entry each
# (gtest_discover_tests in CMakeLists.txt).
#
#   cmake -DTEST_EXECUTABLE=<vwn_cuda_tests> -DCTEST_FILE=<output> -DDEVICE_FILTER=<gtest filter> -DBASH=<bash>
#         -DRUNNER=<run_device_suite.sh> [-DLABEL=<ctest label, default cuda_device>] -P device_suites.cmake
# The CPU-only suites go through the same script (DEVICE_FILTER their filter, LABEL cuda_host): their tests pass or
# fail, and the entry with them.
cmake_minimum_required(VERSION 3.21)  # a script: the policies of this version (IN_LIST)
if(NOT DEFINED LABEL)
  set(LABEL cuda_device)
endif()
execute_process(COMMAND "${TEST_EXECUTABLE}" --gtest_list_tests "--gtest_filter=${DEVICE_FILTER}"
                OUTPUT_VARIABLE listing RESULT_VARIABLE rc TIMEOUT 120)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "device_suites: ${TEST_EXECUTABLE} --gtest_list_tests failed (${rc}):\n${listing}")
endif()
string(REPLACE "\n" ";" lines "${listing}")
set(suites "")
foreach(line IN LISTS lines)
  # A suite line starts in the first column and ends in '.', with a typed suite's type as a comment after it:
  # "CudaFloatGhc/dghc_m2_n3.  # TypeParam = ..." or "CudaRuntimeDevice.".
  if(line MATCHES "^([A-Za-z0-9_]+)(/[A-Za-z0-9_]+)?\\.")
    set(name "${CMAKE_MATCH_1}")
    if(CMAKE_MATCH_2)
      set(filter "${name}/*")
    else()
      set(filter "${name}.*")
    endif()
    if(NOT "${name}" IN_LIST suites)
      list(APPEND suites "${name}")
      set(filter_${name} "${filter}")
    endif()
  endif()
endforeach()
set(content "")
foreach(name IN LISTS suites)
  string(APPEND content
    "add_test([=[cuda.${name}]=] [=[${BASH}]=] [=[${RUNNER}]=] [=[${TEST_EXECUTABLE}]=] [=[${filter_${name}}]=])\n"
    "set_tests_properties([=[cuda.${name}]=] PROPERTIES SKIP_RETURN_CODE 77 LABELS ${LABEL})\n")
endforeach()
list(LENGTH suites count)
if(count EQUAL 0)
  message(FATAL_ERROR "device_suites: no device suite in ${TEST_EXECUTABLE} for the filter ${DEVICE_FILTER}")
endif()
file(WRITE "${CTEST_FILE}.tmp" "${content}")
file(RENAME "${CTEST_FILE}.tmp" "${CTEST_FILE}")
