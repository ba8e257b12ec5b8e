// The device runtime layer (errors, policy, buffers, views) and what only the device back end has (the atomic
// scatter of the embedding gradients). The first tests need no GPU.
#include "backend.cuh"

#include <primitives/modules_body.hpp>

#include <device_timing.hpp>

namespace {

using vwn::index_t;
using vwn::cuda::bf16;

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

// cuBLAS takes sizes and leading dimensions as int: a larger one is refused by name before cuBLAS is called (no
// handle is needed to see it, so no GPU either).
TEST(CudaRuntime, GemmRefusesSizesThatDoNotFitAnInt) {
  const index_t big = index_t(1) << 31;
  const std::string msg = vwn_test::error_of([&] {
    vwn::cuda::detail::gemm(nullptr, false, true, big, 8, 8, 1.f, nullptr, CUDA_R_32F, 8, nullptr, CUDA_R_32F, 8, 0.f,
                            nullptr, CUDA_R_32F, 8);
  });
  EXPECT_NE(msg.find("vwn::cuda::gemm: rows m: expected 0 .. 2147483647 (a 32-bit int), got 2147483648"),
            std::string::npos)
      << msg;
  const std::string ld = vwn_test::error_of([&] {
    vwn::cuda::detail::gemm(nullptr, false, false, 4, 4, 4, 1.f, nullptr, CUDA_R_32F, big + 5, nullptr, CUDA_R_32F, 4,
                            0.f, nullptr, CUDA_R_32F, 4);
  });
  EXPECT_NE(ld.find("leading dimension of A: expected 0 .. 2147483647"), std::string::npos) << ld;
}

// The math mode of vwn's GEMMs keeps float sums throughout (no TF32, no split-K partials in bf16), whatever the
// handle's own mode; checked without a GPU.
TEST(CudaRuntime, GemmMathModeDisallowsReducedPrecision) {
  using vwn::cuda::detail::gemm_math_mode;
  EXPECT_NE(int(gemm_math_mode & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION), 0);
  EXPECT_EQ(int(gemm_math_mode & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION), int(CUBLAS_DEFAULT_MATH));
}

// The device benchmarks' timing structure: the L2 flush before the window opens, nothing but the benchmarked calls
// inside it, back to back, and the time of one call reported.
TEST(CudaRuntime, BenchmarkWindowHoldsBackToBackCallsAfterAFlush) {
  std::vector<std::string> seen;
  struct recorder {
    std::vector<std::string>* seen;
    const char* name;
    void record() { seen->push_back(name); }
    float elapsed_since(const recorder& start) const {
      EXPECT_STREQ(start.name, "start");
      return 40.f;
    }
  };
  recorder start{&seen, "start"}, stop{&seen, "stop"};
  const double per_call = vwn_bench::time_per_call(start, stop, [&] { seen.push_back("call"); },
                                                   [&] { seen.push_back("flush"); });
  std::vector<std::string> expected{"flush", "start"};
  expected.insert(expected.end(), vwn_bench::calls_per_window, "call");
  expected.push_back("stop");
  EXPECT_EQ(seen, expected);
  EXPECT_GT(vwn_bench::calls_per_window, 1);
  EXPECT_EQ(per_call, 40.0 / vwn_bench::calls_per_window);
}

class CudaRuntimeDevice : public vwn_test::backend_test<vwn_test::device_backend<float>> {};

cublasMath_t math_mode(cublasHandle_t h) {
  cublasMath_t m{};
  VWN_CUDA_CHECK(cublasGetMathMode(h, &m));
  return m;
}

// The mode is set on the handle the library uses (the default one, or the caller's through device.with) while a
// GEMM runs, and the caller's mode is given back after it.
TEST_F(CudaRuntimeDevice, GemmMathModeIsSetOnTheHandleAndRestored) {
  vwn::cuda::blas_handle own;
  for (const cublasHandle_t h : {own.get(), vwn::cuda::device.blas()}) {
    for (const cublasMath_t caller : {CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH, vwn::cuda::detail::gemm_math_mode}) {
      VWN_CUDA_CHECK(cublasSetMathMode(h, caller));
      {
        const vwn::cuda::detail::gemm_math_scope scope(h);
        EXPECT_EQ(math_mode(h), vwn::cuda::detail::gemm_math_mode);
      }
      EXPECT_EQ(math_mode(h), caller);
    }
    VWN_CUDA_CHECK(cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH));
    vwn::cuda::device_buffer<float> a(4), b(4), c(4);
    vwn::cuda::detail::gemm(h, false, false, 2, 2, 2, 1.f, a.data(), CUDA_R_32F, 2, b.data(), CUDA_R_32F, 2, 0.f,
                            c.data(), CUDA_R_32F, 2);
    EXPECT_EQ(math_mode(h), CUBLAS_TF32_TENSOR_OP_MATH);
    VWN_CUDA_CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH));
  }
}

// A bf16-output GEMM with a long inner dimension and a small output (the shape cuBLAS splits over k): every entry is
// the float sum rounded once to bf16, within the bf16 output tolerance of the exact sum (a reduction of split-K
// partials in bf16 would be off by several units in the last place).
TEST_F(CudaRuntimeDevice, Bf16GemmSumsInFloatAndRoundsOnce) {
  using bf = vwn_test::device_backend<bf16>;
  std::mt19937_64 gen(vwn_test::fresh_seed());
  const index_t m = 16, n = 16, k = 65536;
  vwn::matrix<double> A = vwn_test::randn<double>(m, k, gen), B = vwn_test::randn<double>(k, n, gen);
  for (index_t i = 0; i < A.size(); ++i) A.data()[i] = bf::round(A.data()[i]);
  for (index_t i = 0; i < B.size(); ++i) B.data()[i] = bf::round(B.data()[i]);
  const auto dA = bf::upload(A), dB = bf::upload(B);
  auto C = bf::poisoned(m, n);
  vwn::cuda::device.synchronize();
  vwn::cuda::detail::gemm(vwn::cuda::device.blas(), false, false, m, n, k, 1.f, dA.data(), CUDA_R_16BF, k, dB.data(),
                          CUDA_R_16BF, n, 0.f, C.data(), CUDA_R_16BF, n);
  const vwn::matrix<double> ref = A * B;
  EXPECT_TRUE(vwn_test::near(bf::download(C), ref, bf::output_tolerance));
}

TEST_F(CudaRuntimeDevice, RoundTripAndPoison) {
  using bf = vwn_test::device_backend<bf16>;
  std::mt19937_64 gen(vwn_test::fresh_seed());
  vwn::matrix<double> h = vwn_test::randn<double>(5, 7, gen);
  for (index_t i = 0; i < h.size(); ++i) h.data()[i] = bf::round(h.data()[i]);
  EXPECT_TRUE(vwn_test::close(bf::download(bf::upload(h)), h, 0, 0));
  const vwn::matrix<double> back =
      vwn_test::device_backend<float>::download(vwn_test::device_backend<float>::poisoned(3, 3));
  EXPECT_TRUE(back.array().isNaN().all());
}

// Construction is synchronous: a module built on the default stream (parameters uploaded, gradients cleared there)
// and used at once on a non-blocking stream, which is not ordered after the default stream, accumulates into
// cleared gradients. Each layer runs its backward twice on its stream; the sums must equal twice one backward
// (the same float operations in the same order: exactly).
TEST_F(CudaRuntimeDevice, ModulesAreReadyForAnyStreamWhenConstructed) {
  using be = vwn_test::device_backend<float>;
  std::mt19937_64 gen(vwn_test::fresh_seed());
  const index_t db = 45, T = 4133, D = 2 * db, Dw = 3 * db;
  const auto H = be::upload(vwn_test::randn<double>(T, Dw, gen)), Z = be::upload(vwn_test::randn<double>(T, D, gen)),
             G = be::upload(vwn_test::randn<double>(T, Dw, gen)), dX = be::upload(vwn_test::randn<double>(T, D, gen));
  vwn::cuda::stream s;
  const auto on = vwn::cuda::device.on(s.get());
  vwn::matrix<double> once, twice;
  for (int runs : {1, 2}) {
    vwn::cuda::dghc<2, 3, float> layer(D);  // default policy: the legacy default stream
    vwn::cuda::dghc<2, 3, float>::workspace ws;
    auto X = be::poisoned(T, D), C = be::poisoned(T, Dw), Ho = be::poisoned(T, Dw), dZ = be::poisoned(T, D),
         dH = be::poisoned(T, Dw);
    // The poisons were queued on the legacy default stream, which the non-blocking stream does not wait for: done
    // before the layer writes these outputs, or a late poison could overwrite them.
    vwn::cuda::device.synchronize();
    layer.forward_width(on, H, X, C, ws);
    layer.forward_depth(on, Z, C, Ho, ws);
    for (int r = 0; r < runs; ++r) {
      layer.backward_depth(on, G, Z, dZ, ws);
      layer.backward_width(on, H, dX, G, dH, ws);
    }
    s.synchronize();
    vwn::matrix<double> all(1, 0);
    for (const auto& [name, g] : be::gradients(layer)) {
      all.conservativeResize(1, all.cols() + g.cols());
      all.rightCols(g.cols()) = g;
    }
    (runs == 1 ? once : twice) = all;
  }
  EXPECT_TRUE(vwn_test::close(twice, (2 * once).eval(), 0, 0));
}

// A slab larger than a block's shared memory ((8,64) float at slot width 1000: 256 KB, above the 227 KB of an
// H100 or H200): the staged forward kernel is refused by name when asked for, and the automatic choice runs the
// tiled kernel, bit for bit as when that is asked for.
TEST_F(CudaRuntimeDevice, StagedForwardFallsBackWhereTheSlabDoesNotFit) {
  using be = vwn_test::device_backend<float>;
  using layer_t = vwn::cuda::dghc<8, 64, float>;
  std::mt19937_64 gen(vwn_test::fresh_seed());
  const index_t db = 1000, T = 5, D = 8 * db, Dw = 64 * db;
  ASSERT_GT((vwn::cuda::detail::staged_width_layout<8, 64, float, true>::bytes(int(db))),
            vwn::cuda::detail::shared_memory_optin());
  layer_t layer(D);
  layer_t::host_type host(D);  // a projection away from its zero initialisation, so that the coefficients differ per token
  host.params.W_alpha = vwn_test::randn<float>(db, 8 + 64, gen, 0.1);
  host.params.W_beta = vwn_test::randn<float>(db, 8, gen, 0.1);
  layer.params.upload(vwn::cuda::device, host.params);
  layer_t::workspace ws;
  const auto H = be::upload(vwn_test::randn<double>(T, Dw, gen));
  auto X = be::poisoned(T, D), C = be::poisoned(T, Dw);
  const std::string msg = vwn_test::error_of([&] { layer.forward_width(vwn::cuda::device, H, X, C, ws, vwn::cuda::width_kernel::staged); });
  EXPECT_NE(msg.find("shared memory of the staged kernel"), std::string::npos) << msg;
  EXPECT_EQ(ws.tokens, 0);
  vwn::matrix<double> out[2];
  for (const auto kernel : {vwn::cuda::width_kernel::automatic, vwn::cuda::width_kernel::tiled}) {
    auto Xk = be::poisoned(T, D), Ck = be::poisoned(T, Dw);
    layer.forward_width(vwn::cuda::device, H, Xk, Ck, ws, kernel);
    vwn::matrix<double> both(T, D + Dw);
    both << be::download(Xk), be::download(Ck);
    out[kernel == vwn::cuda::width_kernel::tiled] = both;
  }
  EXPECT_FALSE(out[0].array().isNaN().any());
  EXPECT_TRUE(vwn_test::close(out[0], out[1], 0, 0));
}

// The atomic scatter of a table gradient (device only) sums the same rows as the deterministic one, in another
// order: float sums of at most T = 37 values per entry, within the gradient tolerance; absent rows stay exactly 0.
TEST_F(CudaRuntimeDevice, AtomicScatterMatchesTheDeterministicOne) {
  using be = vwn_test::device_backend<float>;
  std::mt19937_64 gen(vwn_test::fresh_seed());
  const index_t V = 11, T = 37, D = 2 * 45;
  vwn::cuda::overwidth_embedding<2, 3, float> emb(V, D, 5);
  const auto tok = vwn_test::random_tokens(T, V, gen);
  const auto dH0 = be::upload(vwn_test::randn<double>(T, emb.wide_width(), gen));
  vwn::matrix<double> by_mode[2];
  for (const auto mode : {vwn::cuda::scatter::deterministic, vwn::cuda::scatter::atomic}) {
    emb.zero_grad();
    emb.backward(vwn::cuda::device, tok, dH0, mode);
    vwn::cuda::download<float>(vwn::cuda::device, emb.dE, by_mode[int(mode)]);
  }
  EXPECT_TRUE(vwn_test::near(by_mode[1], by_mode[0], be::gradient_tolerance));
  EXPECT_TRUE(((by_mode[1].array() == 0) == (by_mode[0].array() == 0)).all());
}

}  // namespace
