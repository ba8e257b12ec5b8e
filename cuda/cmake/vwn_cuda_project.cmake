# Settings shared by the project's own CUDA targets (device tests, device benchmarks). Included from
# cuda/, tests/cuda/ and bench/cuda/; never installed.
include_guard(DIRECTORY)

find_package(CUDAToolkit REQUIRED)

# Architectures: CMAKE_CUDA_ARCHITECTURES (or CUDAARCHS) when the user gave it, else 80: sm_80 code plus
# compute_80 PTX, which the driver compiles at load time for newer GPUs (sm_90: H100, H200). One architecture
# halves the device compile of the tests; benchmarks are built for the GPU they run on
# (scripts/gpu-check.sh passes its compute capability; by hand: -DCMAKE_CUDA_ARCHITECTURES=native).
# CMake fills CMAKE_CUDA_ARCHITECTURES with the compiler's default (help string "CUDA architectures")
# when nobody gave one; that default is replaced here.
get_property(_vwn_arch_help CACHE CMAKE_CUDA_ARCHITECTURES PROPERTY HELPSTRING)
if(NOT DEFINED ENV{CUDAARCHS} AND (NOT CMAKE_CUDA_ARCHITECTURES OR _vwn_arch_help STREQUAL "CUDA architectures"))
  set(VWN_CUDA_ARCHITECTURES 80)
else()
  set(VWN_CUDA_ARCHITECTURES ${CMAKE_CUDA_ARCHITECTURES})
endif()

# CMake releases older than the CUDA toolkit (e.g. CMake 3.25 with CUDA 13) do not know that nvcc >= 12
# compiles C++20, and reject the C++20 requirement vwn::vwn carries; tell them, in this directory only.
if(NOT "cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES
   AND CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA" AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12)
  set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
  set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
endif()

# Architectures, warnings (as errors with VWN_WERROR) and C++20 for one of the project's CUDA targets.
function(vwn_cuda_target target)
  set_target_properties(${target} PROPERTIES
    CUDA_ARCHITECTURES "${VWN_CUDA_ARCHITECTURES}"
    CUDA_STANDARD 20
    CUDA_STANDARD_REQUIRED ON
    CUDA_EXTENSIONS OFF)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(VWN_WERROR)
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
  endif()
  # The host half of a .cu file gets the C++ objects' -march=native (CMakeLists.txt, VWN_NATIVE): Eigen's heap
  # alignment follows the vector instructions allowed, so a matrix allocated in a native C++ object (the
  # precompiled host references) and freed in an SSE2-only .cu object is an invalid free.
  if(VWN_NATIVE)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-march=native>)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)  # as for C++ objects
      target_compile_options(${target} PRIVATE
        $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wno-uninitialized,-Wno-maybe-uninitialized>)
    endif()
  endif()
endfunction()
