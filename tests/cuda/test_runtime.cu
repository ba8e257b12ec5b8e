// The device runtime layer: errors, policy, buffers and views. The first tests need no GPU.
#include "cuda_test_common.hpp"

namespace {

using namespace vwn_cuda_test;

TEST(CudaRuntime, ErrorsCarryFileLineCallAndTheLibraryString) {
  try {
    VWN_CUDA_CHECK(cudaErrorInvalidValue);
    FAIL() << "no exception";
  } catch (const vwn::cuda_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("test_runtime.cu:"), std::string::npos) << what;
    EXPECT_NE(what.find("cudaErrorInvalidValue"), std::string::npos) << what;
    EXPECT_NE(what.find("invalid argument"), std::string::npos) << what;
  }
  try {
    VWN_CUDA_CHECK(CUBLAS_STATUS_INVALID_VALUE);
    FAIL() << "no exception";
  } catch (const vwn::cuda_error& e) {
    EXPECT_NE(std::string(e.what()).find("CUBLAS_STATUS_INVALID_VALUE"), std::string::npos) << e.what();
  }
  static_assert(std::is_base_of_v<std::runtime_error, vwn::cuda_error>);
}

TEST(CudaRuntime, DeviceCountNeverThrows) { EXPECT_GE(vwn::cuda::device_count(), 0); }

TEST(CudaRuntime, PolicyCarriesStreamAndHandle) {
  constexpr vwn::cuda::device_t p = vwn::cuda::device;
  static_assert(p.stream() == nullptr);
  const auto s = reinterpret_cast<cudaStream_t>(std::uintptr_t(0x1234));
  EXPECT_EQ(vwn::cuda::device.on(s).stream(), s);
}

TEST(CudaRuntime, ViewsMirrorTheHostRefs) {
  float dummy[12];
  const vwn::cuda::device_matrix_ref<float> v(dummy, 3, 4);
  const vwn::cuda::device_matrix_cref<float> c = v;
  EXPECT_EQ(c.rows(), 3);
  EXPECT_EQ(c.cols(), 4);
  EXPECT_EQ(c.outerStride(), 4);
  EXPECT_EQ(v.middle_rows(1, 2).data(), dummy + 4);
  EXPECT_EQ(v.middle_cols(1, 2).outerStride(), 4);
}

class CudaRuntimeDevice : public DeviceTest {};

TEST_F(CudaRuntimeDevice, RoundTripAndPoison) {
  std::mt19937_64 gen(vwn_test::fresh_seed());
  const vwn::matrix<double> h = random_input<bf16>(5, 7, gen);
  const auto d = to_device<bf16>(h);
  EXPECT_TRUE(vwn_test::close(to_host(d), h, 0, 0));
  auto p = poisoned<float>(3, 3);
  const vwn::matrix<double> back = to_host(p);
  EXPECT_TRUE(back.array().isNaN().all());
}

TEST_F(CudaRuntimeDevice, ArgumentChecksThrowBeforeLaunching) {
  vwn::cuda::dghc<2, 3> layer(8);  // db = 4, D' = 12
  vwn::cuda::device_matrix<float> H(5, 12), X(4, 8), C(5, 12);
  vwn::cuda::dghc<2, 3>::workspace ws;
  try {
    layer.forward_width(vwn::cuda::device, H, X, C, ws);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("X shape: expected 5x8, got 4x8"), std::string::npos) << e.what();
  }
  vwn::cuda::device_matrix<float> Z(5, 8), Ho(5, 12);
  EXPECT_THROW(layer.forward_depth(vwn::cuda::device, Z, C, Ho, ws), std::invalid_argument);  // empty workspace
  EXPECT_THROW((vwn::cuda::ghc<2, 3>(7)), std::invalid_argument);  // D % m != 0
}

}  // namespace
