#pragma once
// vwn's host products on a BLAS: loads a shared library that provides the CBLAS `cblas_sgemm` and `cblas_dgemm`
// (OpenBLAS, BLIS, ...) at run time and installs it as the host GEMM kernel of <vwn/detail/parallel.hpp>, for float
// and double. The core library does not depend on any BLAS: programs opt in (vwn-train, vwn-sample, vwn-eval, the
// benchmarks and the tests that check the BLAS path), and everything else keeps Eigen's own product.
//
// The library is loaded with dlopen(RTLD_LOCAL) rather than linked, so that a process that already has another BLAS
// (PyTorch brings Debian's threaded OpenBLAS) does not have two definitions of `cblas_sgemm` fight at link time,
// and so that a program built where the BLAS was found still runs, on Eigen, where it is not (docs/benchmarks.md).
//
// The kernel is called from several threads at once, one call per row panel of a product: the library must be safe
// to call concurrently and run single-threaded inside an OpenMP parallel region. Debian's OpenMP build of OpenBLAS
// (libopenblas0-openmp) is; its serial build is not (it is built without locking), and its pthreads build starts
// threads of its own in every call.
#include <string>

namespace vwn::model {

/// Which product the host code uses after a `use_*` call.
struct blas_info {
  bool active = false;  ///< a BLAS is installed (false: Eigen's own product)
  std::string name;     ///< "Eigen", or the library's own description ("OpenBLAS 0.3.21 ...", "BLIS 0.9.0")
  std::string path;     ///< the shared library loaded, empty for Eigen
};

/// Loads the BLAS at `path` and installs it for float and double. Throws std::runtime_error naming the path and the
/// loader's message when the file cannot be loaded or lacks `cblas_sgemm` / `cblas_dgemm`; nothing changes then.
blas_info use_blas(const std::string& path);

/// Installs Eigen's own product again (the library's default).
blas_info use_eigen_products();

/// The BLAS the project was configured with (CMake option VWN_BLAS; none when it was not found), unless the
/// environment variable VWN_BLAS says otherwise: "off" (or "eigen") keeps Eigen, any other value is the path of a
/// library to load. A configured library that is missing at run time falls back to Eigen with `info.name` saying so;
/// a library named in VWN_BLAS that cannot be loaded is an error (std::runtime_error).
blas_info use_default_blas();

/// The path of the BLAS the project was configured with, empty when none.
std::string configured_blas_path();

/// What is installed now.
blas_info current_blas();

}  // namespace vwn::model
