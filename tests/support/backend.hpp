#pragma once
// The host back end as seen by the primitive test bodies (tests/primitives/*_body.hpp). A back end tells a body
// its module types, how to move a double matrix in (rounded to its storage) and out, how to poison an output,
// its policy, and the tolerances its results must meet against the host reference in double. The device back
// end (tests/cuda/backend.cuh) has the same members, so that each body is written once and instantiated for both
// (Kokkos' per-execution-space test pattern).

#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <vwn/vwn.hpp>

#include "common.hpp"

namespace vwn_test {

// Tolerance atol + rtol |ref|, atol given relative to the largest |ref| of the tensor (elements that cancel to near
// zero keep the absolute error of the terms they were summed from).
struct tolerance {
  double atol_rel, rtol;
};

template <class A, class B>
::testing::AssertionResult near(const A& got, const B& ref, tolerance tol) {
  const double scale = ref.size() ? ref.cwiseAbs().maxCoeff() : 0.0;
  return close(got, ref, tol.atol_rel * scale, tol.rtol);
}

// The tolerance of outputs stored as bf16 (device bf16 back end, and its host simulation): computed in float from
// inputs and rounded intermediates both sides share (the reference rounds where the back end stores bf16), then one
// final rounding to 8 significant bits: round to nearest, a relative error of at most 2^-8 (half a unit in the last
// place, reached at the bottom of a binade). rtol 2^-7 covers that rounding with a margin of 2; atol 1e-4 of the largest |ref| covers the float error of the sums (as for float outputs) in entries
// that cancel to near zero.
inline constexpr tolerance bf16_output_tolerance{1e-4, 1.0 / 128};

// Rounds every parameter of a host module to float (the host float modules and the device keep float parameters).
template <class Params>
void round_parameters_to_float(Params& p) {
  p.visit([](std::string_view, auto* data, index_t size, bool) {
    for (index_t i = 0; i < size; ++i) data[i] = double(float(data[i]));
  });
}

// Copies the parameters of a host module (any scalar) into another host module of the same shape.
template <class To, class From>
void copy_parameters(To& to, From& from) {
  std::vector<std::vector<double>> values;
  from.params.visit([&](std::string_view, auto* data, index_t size, bool) { values.emplace_back(data, data + size); });
  std::size_t i = 0;
  to.params.visit([&](std::string_view name, auto* data, index_t size, bool) {
    ASSERT_EQ(values.at(i).size(), std::size_t(size)) << name;
    for (index_t k = 0; k < size; ++k) data[k] = static_cast<std::remove_pointer_t<decltype(data)>>(values[i][std::size_t(k)]);
    ++i;
  });
}

// Base fixture of every primitive test: skips, with the back end's reason, where the back end cannot run.
template <class Backend>
class backend_test : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = Backend::skip_reason();
    if (!why.empty()) GTEST_SKIP() << why;
  }
};

// Named dense tensors (gradients by parameter name, each a `1 x size` row).
using named_tensors = std::vector<std::pair<std::string, vwn::matrix<double>>>;

// A matrix as one `1 x size` row (row-major order).
template <class M>
vwn::matrix<double> flat(const M& m) {
  const vwn::matrix<double> d = m.template cast<double>();
  return Eigen::Map<const vwn::matrix<double>>(d.data(), 1, d.size());
}

// The host back end in Scalar (float: the back end under test; double is the reference the bodies compare with).
template <class Scalar>
struct host_backend {
  using storage = Scalar;
  template <int M, int N, bool Dynamic>
  using ghc = vwn::basic_ghc<M, N, Scalar, Dynamic>;
  template <int M, int N>
  using overwidth_embedding = vwn::overwidth_embedding<M, N, Scalar>;
  template <int M, int N>
  using lowrank_overwidth_embedding = vwn::lowrank_overwidth_embedding<M, N, Scalar>;
  template <int M, int N>
  using reduce_head = vwn::reduce_head<M, N, Scalar>;
  template <int M, int N>
  using mtp_mixer = vwn::mtp_mixer<M, N, Scalar>;
  using tensor = vwn::matrix<Scalar>;

  static std::string name() { return std::is_same_v<Scalar, float> ? "host_float" : "host_double"; }
  static constexpr vwn::host_t policy() { return vwn::host; }
  // Why no test can run on this back end here ("" when it can).
  static std::string skip_reason() { return ""; }
  static void synchronize() {}

  // x rounded to the storage and back, so that a reference sees exactly the inputs the back end sees.
  static double round(double x) { return double(Scalar(x)); }
  static tensor upload(const vwn::matrix<double>& h) { return h.cast<Scalar>(); }
  static vwn::matrix<double> download(const tensor& d) { return d.template cast<double>(); }
  // An output filled with NaN, so that an element a kernel does not write fails every comparison.
  static tensor poisoned(index_t rows, index_t cols) {
    tensor t(rows, cols);
    poison(t);
    return t;
  }

  // The parameters of a host module in double (rounded to Scalar).
  template <class Module, class Host>
  static void set_parameters(Module& m, Host& host) {
    copy_parameters(m, host);
  }
  // Every parameter gradient of `m` as a dense `1 x size` row, by name (an embedding table's sparse rows made dense).
  template <class Module>
  static named_tensors gradients(Module& m) {
    named_tensors out;
    if constexpr (requires { m.grads.E.rows; }) {  // direct embedding: sparse table gradient
      vwn::matrix<double> dense = vwn::matrix<double>::Zero(m.vocabulary(), m.wide_width());
      vwn::matrix<double> values = m.grads.E.values.template cast<double>();
      vwn::sparse_rows<double> rows{m.grads.E.rows, values};
      rows.add_to(dense);
      out.emplace_back("E", flat(dense));
    } else if constexpr (requires { m.grads.E_base.rows; }) {  // low-rank embedding
      vwn::matrix<double> dense = vwn::matrix<double>::Zero(m.vocabulary(), m.width());
      vwn::matrix<double> values = m.grads.E_base.values.template cast<double>();
      vwn::sparse_rows<double> rows{m.grads.E_base.rows, values};
      rows.add_to(dense);
      out.emplace_back("E_base", flat(dense));
      out.emplace_back("W_expand", flat(m.grads.W_expand.template cast<double>()));
    } else {
      m.grads.visit([&](std::string_view name, auto* data, index_t size, bool) {
        vwn::matrix<double> row(1, size);
        for (index_t k = 0; k < size; ++k) row(0, k) = double(data[k]);
        out.emplace_back(std::string(name), row);
      });
    }
    return out;
  }

  // The GroupNorm output a reduce head with GroupNorm stored in its workspace by the last forward (`T x D'`), as
  // the reference must multiply it.
  template <class Workspace>
  static vwn::matrix<double> groupnorm_output(const Workspace& ws, index_t, index_t) {
    return ws.normed.template cast<double>();
  }

  // Outputs stored as Scalar, computed in Scalar from inputs both sides share: in float, sums of at most a few
  // thousand products; the error grows like sqrt(L) 2^-24 (about 1e-6 relative for L ~ 10^4): 1e-4 leaves a margin
  // of about 100. (double is the reference itself.)
  static constexpr tolerance output_tolerance{1e-5, 1e-4};
  // Parameter gradients: sums over T db products per entry, error about L 2^-24 relative to the sum of |terms|,
  // which random signs make sqrt(L) times the result: about 1e-5 at L = 10^4; 5e-4 leaves a margin of 50.
  static constexpr tolerance gradient_tolerance{1e-5, 5e-4};
};

}  // namespace vwn_test
