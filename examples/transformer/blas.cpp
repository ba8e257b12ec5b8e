// Loads a CBLAS library and installs it as vwn's host GEMM kernel (blas.hpp).
#include "blas.hpp"

#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <vwn/detail/parallel.hpp>

#ifndef VWN_BLAS_PATH
#define VWN_BLAS_PATH ""
#endif

namespace vwn::model {
namespace {

// The CBLAS entry points, declared by value (the enumerations of cblas.h are ints: CblasRowMajor 101, CblasNoTrans
// 111, CblasTrans 112), so that no BLAS header is needed to build.
template <class Scalar>
using cblas_gemm = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, Scalar alpha, const Scalar* a,
                            int lda, const Scalar* b, int ldb, Scalar beta, Scalar* c, int ldc);
constexpr int row_major = 101, no_trans = 111, trans = 112;

cblas_gemm<float> sgemm = nullptr;
cblas_gemm<double> dgemm = nullptr;
blas_info installed{false, "Eigen", ""};
std::mutex install_mutex;

template <class Scalar>
cblas_gemm<Scalar>& entry() {
  if constexpr (sizeof(Scalar) == sizeof(float))
    return sgemm;
  else
    return dgemm;
}

bool fits_int(index_t v) { return v >= 0 && v <= INT_MAX; }

// The host_gemm_kernel: one single-threaded CBLAS call on row-major storage. A product whose sizes do not fit the
// BLAS's 32-bit integers is computed by Eigen instead.
//
// Every call runs on one thread. Inside vwn's parallel loops an OpenMP build of the BLAS does so by itself; outside
// them (a product of one row panel) it would split the product over its own threads, and its split changes the
// rounding with the thread count (measured: OpenBLAS 0.3.21, 100 x 384 x 512), so the thread count is 1 for the call.
template <class Scalar>
void kernel(bool ta, bool tb, index_t m, index_t n, index_t k, const Scalar* a, index_t lda, const Scalar* b,
            index_t ldb, bool accumulate, Scalar* c, index_t ldc) {
  if (fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) && fits_int(ldb) && fits_int(ldc)) {
    const auto call = [&] {
      entry<Scalar>()(row_major, ta ? trans : no_trans, tb ? trans : no_trans, int(m), int(n), int(k), Scalar(1), a,
                      int(lda), b, int(ldb), accumulate ? Scalar(1) : Scalar(0), c, int(ldc));
    };
#ifdef _OPENMP
    if (!omp_in_parallel() && omp_get_max_threads() > 1) {
      const int threads = omp_get_max_threads();
      omp_set_num_threads(1);
      call();
      omp_set_num_threads(threads);
      return;
    }
#endif
    call();
    return;
  }
  using stride = Eigen::OuterStride<>;
  using map = Eigen::Map<const matrix<Scalar>, 0, stride>;
  const map A(a, ta ? k : m, ta ? m : k, stride(lda)), B(b, tb ? n : k, tb ? k : n, stride(ldb));
  Eigen::Map<matrix<Scalar>, 0, stride> C(c, m, n, stride(ldc));
  const auto run = [&](const auto& l, const auto& r) {
    if (accumulate)
      C.noalias() += l * r;
    else
      C.noalias() = l * r;
  };
  if (ta && tb) run(A.transpose(), B.transpose());
  else if (ta) run(A.transpose(), B);
  else if (tb) run(A, B.transpose());
  else run(A, B);
}

// OpenBLAS 0.3.21 takes the AVX-512 AMD processors (Zen 4 and 5) for Zen and runs its AVX2 kernels there, at about
// half the rate of its SkylakeX (AVX-512) kernels (docs/benchmarks.md). Unless the user chose a kernel set, ask for
// those on an AMD processor with the AVX-512 subsets they use. Read once, when the library loads.
void prefer_avx512_kernels() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && __builtin_cpu_is("amd") && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd"))
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
#endif
}

std::string describe(void* handle, const std::string& path) {
  using text = const char* (*)();
  if (auto f = reinterpret_cast<text>(dlsym(handle, "openblas_get_config"))) {
    std::string d = f();  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..."
    if (auto core = reinterpret_cast<text>(dlsym(handle, "openblas_get_corename"))) d += std::string(", ") + core() + " kernels";
    return d;
  }
  if (auto f = reinterpret_cast<text>(dlsym(handle, "bli_info_get_version_str"))) return std::string("BLIS ") + f();
  return "CBLAS (" + path + ")";
}

}  // namespace

blas_info use_blas(const std::string& path) {
  std::lock_guard<std::mutex> lock(install_mutex);
  prefer_avx512_kernels();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw std::runtime_error("vwn::model::use_blas: expected a loadable CBLAS shared library, got '" + path +
                             "': " + (why ? why : "dlopen failed"));
  }
  auto s = reinterpret_cast<cblas_gemm<float>>(dlsym(handle, "cblas_sgemm"));
  auto d = reinterpret_cast<cblas_gemm<double>>(dlsym(handle, "cblas_dgemm"));
  if (s == nullptr || d == nullptr) {
    dlclose(handle);
    throw std::runtime_error("vwn::model::use_blas: expected cblas_sgemm and cblas_dgemm in '" + path +
                             "', got a library without them");
  }
  // The handle stays open: a kernel installed earlier may still be referenced by a caller's saved pointer.
  sgemm = s;
  dgemm = d;
  detail::set_host_gemm_kernel<float>(&kernel<float>);
  detail::set_host_gemm_kernel<double>(&kernel<double>);
  installed = {true, describe(handle, path), path};
  return installed;
}

blas_info use_eigen_products() {
  std::lock_guard<std::mutex> lock(install_mutex);
  detail::set_host_gemm_kernel<float>(nullptr);
  detail::set_host_gemm_kernel<double>(nullptr);
  installed = {false, "Eigen", ""};
  return installed;
}

std::string configured_blas_path() { return VWN_BLAS_PATH; }

blas_info use_default_blas() {
  if (const char* env = std::getenv("VWN_BLAS"); env != nullptr && *env != '\0') {
    const std::string v(env);
    if (v == "off" || v == "eigen" || v == "Eigen") return use_eigen_products();
    return use_blas(v);
  }
  const std::string path = configured_blas_path();
  if (path.empty()) return use_eigen_products();
  try {
    return use_blas(path);
  } catch (const std::runtime_error&) {
    blas_info info = use_eigen_products();
    info.name = "Eigen (the configured BLAS " + path + " could not be loaded)";
    return info;
  }
}

blas_info current_blas() {
  std::lock_guard<std::mutex> lock(install_mutex);
  return installed;
}

}  // namespace vwn::model
