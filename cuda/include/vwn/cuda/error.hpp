#pragma once
/// \file error.hpp
/// Errors of the CUDA back end: every CUDA runtime and cuBLAS call is checked and a failure throws
/// `vwn::cuda_error` with the file, the line, the call and the library's own error string. Nothing calls exit().

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace vwn {

/// A failed CUDA runtime or cuBLAS call (or a kernel launch). `what()` reads
/// "file:line: call: error name (error string)".
class cuda_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace cuda::detail {

[[noreturn]] inline void throw_error(const char* call, const char* file, int line, const std::string& error) {
  std::ostringstream s;
  s << file << ":" << line << ": " << call << ": " << error;
  throw cuda_error(s.str());
}

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess)
    throw_error(call, file, line, std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")");
}

inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw_error(call, file, line, std::string(cublasGetStatusName(status)) + " (" + cublasGetStatusString(status) + ")");
}

}  // namespace cuda::detail
}  // namespace vwn

/// Checks a `cudaError_t` or `cublasStatus_t` expression; throws `vwn::cuda_error` on failure.
#define VWN_CUDA_CHECK(call) ::vwn::cuda::detail::check((call), #call, __FILE__, __LINE__)

/// Checks the last kernel launch (configuration errors are reported at once; faults inside the kernel
/// surface at the next synchronising call, which is checked too).
#define VWN_CUDA_CHECK_LAUNCH() ::vwn::cuda::detail::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
