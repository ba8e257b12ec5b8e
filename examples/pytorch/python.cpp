// The Python extension module vwn_torch._C: the functional interface of vwn_torch.hpp for the Python modules of
// vwn_torch/__init__.py. Errors arrive in Python as ValueError (shapes, contiguity, devices, settings), TypeError
// (dtypes) and IndexError (tokens outside the vocabulary).

#include <torch/extension.h>
#include <torch/python.h>

#include "vwn_torch.hpp"

namespace py = pybind11;
using namespace vwn::libtorch;

namespace {
torch::Dtype dtype_of(const py::object& o) { return torch::python::detail::py_object_to_dtype(o); }
// The operators run without the GIL (vwn's loops never call into Python): other Python threads, a data loader's for
// instance, go on meanwhile. Arguments are converted before and results after, with the GIL held.
using release_gil = py::call_guard<py::gil_scoped_release>;
// The primitive is opaque (vwn_torch.hpp); Python holds it through this handle.
struct handle {
  std::shared_ptr<primitive> p;
};
}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "vwn's width-connection primitives as PyTorch autograd operators (host back end, CPU tensors)";

  py::class_<handle>(mod, "Primitive", "One vwn primitive: its parameters and state.")
      .def("__repr__", [](const handle& h) { return "<vwn_torch primitive " + describe(*h.p) + ">"; });

  py::class_<ghc_carry>(mod, "GHCCarry",
                        "What a GHC width connection hands to its depth connection: the carried state C and the "
                        "call's saved coefficients. Feed it to exactly one depth call.")
      .def_property_readonly("C", [](const ghc_carry& c) { return c.C; }, "The carried state, [..., D'].");

  mod.def("compiled_shapes", &compiled_shapes, "The shapes (m, n) this build compiled, as text.");
  mod.def(
      "parameters_of",
      [](const handle& h) {
        py::list out;
        for (const parameter& x : parameters_of(h.p)) out.append(py::make_tuple(x.name, x.tensor, x.weight_decay));
        return out;
      },
      "(name, tensor sharing the primitive's memory, weight decay) for each parameter, in vwn's order.");

  mod.def("make_ghc", [](int m, int n, std::int64_t dim, bool dynamic, const py::object& dtype) {
            return handle{make_ghc(m, n, dim, dynamic, dtype_of(dtype))};
          }, py::arg("m"), py::arg("n"), py::arg("dim"), py::arg("dynamic"), py::arg("dtype"));
  mod.def(
      "ghc_width",
      [](const handle& h, const torch::Tensor& H, const std::vector<torch::Tensor>& params) {
        ghc_width_result r = ghc_width(h.p, H, params);
        return std::make_pair(r.X, r.carry);
      },
      py::arg("ghc"), py::arg("H"), py::arg("params"), release_gil());
  mod.def(
      "ghc_depth",
      [](const torch::Tensor& Z, const ghc_carry& carry, const std::vector<torch::Tensor>& params) {
        return ghc_depth(Z, carry, params);
      },
      py::arg("Z"), py::arg("carry"), py::arg("params"), release_gil());

  mod.def("make_embedding", [](int m, int n, std::int64_t vocab, std::int64_t dim, bool lowrank, std::uint64_t seed,
                              const py::object& dtype) {
            return handle{make_embedding(m, n, vocab, dim, lowrank, seed, dtype_of(dtype))};
          }, py::arg("m"), py::arg("n"), py::arg("vocab"), py::arg("dim"),
          py::arg("lowrank"), py::arg("seed"), py::arg("dtype"));
  mod.def(
      "embedding_forward",
      [](const handle& h, const torch::Tensor& tokens, const std::vector<torch::Tensor>& params) {
        return embedding_forward(h.p, tokens, params);
      },
      py::arg("embedding"), py::arg("tokens"), py::arg("params"), release_gil());

  mod.def("make_reduce_head", [](int m, int n, std::int64_t dim, std::uint64_t seed, const py::object& dtype) {
            return handle{make_reduce_head(m, n, dim, seed, dtype_of(dtype))};
          }, py::arg("m"), py::arg("n"), py::arg("dim"), py::arg("seed"),
          py::arg("dtype"));
  mod.def(
      "reduce_head_forward",
      [](const handle& h, const torch::Tensor& H, const std::vector<torch::Tensor>& params) {
        return reduce_head_forward(h.p, H, params);
      },
      py::arg("head"), py::arg("H"), py::arg("params"), release_gil());

  mod.def("make_mtp_mixer", [](int m, int n, std::int64_t dim, std::uint64_t seed, const py::object& dtype) {
            return handle{make_mtp_mixer(m, n, dim, seed, dtype_of(dtype))};
          }, py::arg("m"), py::arg("n"), py::arg("dim"), py::arg("seed"),
          py::arg("dtype"));
  mod.def(
      "mtp_mixer_forward",
      [](const handle& h, const torch::Tensor& A, const torch::Tensor& B,
         const std::vector<torch::Tensor>& params) { return mtp_mixer_forward(h.p, A, B, params); },
      py::arg("mixer"), py::arg("A"), py::arg("B"), py::arg("params"), release_gil());

  mod.def(
      "read_checkpoint",
      [](const std::string& path) {
        checkpoint_tensors c = read_checkpoint(path);
        return py::make_tuple(c.tensors, c.metadata);
      },
      py::arg("path"),
      "A verified vwn-train checkpoint: (tensors by file name as flat float32 tensors, metadata as text).");
}
