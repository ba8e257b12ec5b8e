#pragma once
// Shared helpers of the device tests: the skip-without-a-GPU fixture, rounding host data to the device
// storage type, host <-> device copies and the tolerances (each with its reason).

#include <cuda_runtime.h>

#include <cmath>
#include <string>
#include <type_traits>

#include <vwn/cuda.hpp>

#include "../test_common.hpp"

namespace vwn_cuda_test {

using vwn::index_t;
using vwn::cuda::bf16;

// Why no device test can run here, or "" when a device is present.
inline std::string no_device_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    static_cast<void>(cudaGetLastError());
    return std::string("no CUDA device (cudaGetDeviceCount: ") + cudaGetErrorName(e) + ", " + cudaGetErrorString(e) +
           "): device test skipped";
  }
  if (n == 0) return "no CUDA device (cudaGetDeviceCount returned 0): device test skipped";
  return "";
}

// Base fixture of every device test: skips with a clear message when there is no GPU.
class DeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = no_device_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

// x rounded to storage S and back (so the host reference sees exactly the device's inputs).
template <class S>
double round_to(double x) {
  return double(vwn::cuda::to_float(vwn::cuda::from_float<S>(float(x))));
}

template <class S, class Mat>
void round_all(Mat& m) {
  for (index_t i = 0; i < m.size(); ++i) m.data()[i] = round_to<S>(m.data()[i]);
}

// A fresh random T x W matrix already rounded to S.
template <class S>
vwn::matrix<double> random_input(index_t T, index_t W, std::mt19937_64& gen, double scale = 1.0) {
  vwn::matrix<double> m = vwn_test::randn<double>(T, W, gen, scale);
  round_all<S>(m);
  return m;
}

template <class S>
vwn::cuda::device_matrix<S> to_device(const vwn::matrix<double>& h) {
  vwn::cuda::device_matrix<S> d(h.rows(), h.cols());
  vwn::cuda::upload<S>(vwn::cuda::device, h, d);
  return d;
}

template <class S>
vwn::matrix<double> to_host(const vwn::cuda::device_matrix<S>& d) {
  vwn::matrix<double> h;
  vwn::cuda::download<S>(vwn::cuda::device, d, h);
  return h;
}

// An uninitialised device output, filled with NaN so that an element the kernel does not write fails.
template <class S>
vwn::cuda::device_matrix<S> poisoned(index_t rows, index_t cols) {
  vwn::cuda::device_matrix<S> d(rows, cols);
  vwn::cuda::poison<S>(vwn::cuda::device, d);
  return d;
}

// Tolerance atol + rtol |ref|, atol given relative to the largest |ref| of the tensor (elements that
// cancel to near zero keep the absolute error of the terms they were summed from).
struct tolerance {
  double atol_rel, rtol;
};

// Outputs stored as S, computed in float from inputs both sides share:
//  float: sums of at most a few thousand products in float; the error grows like sqrt(L) 2^-24 (about 1e-6
//         relative for L ~ 10^4), so 1e-4 leaves a margin of about 100;
//  bf16:  one final rounding to 8 significant bits (at most 2^-9 relative) on top of that; 2^-7 leaves 4x.
template <class S>
constexpr tolerance output_tolerance() {
  if constexpr (std::is_same_v<S, float>)
    return {1e-5, 1e-4};
  else
    return {1e-4, 1.0 / 128};
}

// Parameter gradients are float whatever the storage (the inputs are the same rounded values on both sides):
// sums over T db products per entry, in per-block partials then a second pass; error about L 2^-24 relative
// to the sum of |terms|, which random signs make sqrt(L) times the result: about 1e-5 at L = 10^4; 5e-4
// leaves a margin of 50.
constexpr tolerance gradient_tolerance{1e-5, 5e-4};

template <class A, class B>
::testing::AssertionResult near(const A& got, const B& ref, tolerance tol) {
  const double scale = ref.size() ? ref.cwiseAbs().maxCoeff() : 0.0;
  return vwn_test::close(got, ref, tol.atol_rel * scale, tol.rtol);
}

// Rounds every parameter of a host module to float (the device keeps float parameters).
template <class Params>
void round_parameters_to_float(Params& p) {
  p.visit([](std::string_view, auto* data, index_t size, bool) {
    for (index_t i = 0; i < size; ++i) data[i] = double(float(data[i]));
  });
}

}  // namespace vwn_cuda_test
