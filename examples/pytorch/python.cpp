// The Python extension module vwn_torch._C: loading it registers the operators torch.ops.vwn.* (ops.cpp); it also
// gives the modules of vwn_torch/__init__.py their initial parameters and reads vwn-train checkpoints. Errors arrive
// in Python as ValueError (shapes, settings), TypeError (dtypes) and IndexError (tokens outside the vocabulary).

#include <torch/extension.h>
#include <torch/python.h>

#include <vwn/core/connection.hpp>

#include "vwn_torch.hpp"

namespace py = pybind11;
using namespace vwn::libtorch;

namespace {
torch::Dtype dtype_of(const py::object& o) { return torch::python::detail::py_object_to_dtype(o); }

py::list as_list(const std::vector<parameter>& params) {
  py::list out;
  for (const parameter& x : params) out.append(py::make_tuple(x.name, x.tensor, x.weight_decay));
  return out;
}
}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "vwn's width-connection primitives as PyTorch operators (torch.ops.vwn.*; host back end, CPU tensors)";

  mod.def("compiled_shapes", &compiled_shapes, "The shapes (m, n) this build compiled, as text.");
  mod.def(
      "ghc_parameters",
      [](int m, int n, std::int64_t dim, bool dynamic, const py::object& dtype, const std::string& connection) {
        return as_list(ghc_parameters(m, n, dim, dynamic, dtype_of(dtype), connection));
      },
      py::arg("m"), py::arg("n"), py::arg("dim"), py::arg("dynamic"), py::arg("dtype"), py::arg("connection") = "vwn",
      "(name, initial value, weight decay) of each parameter of a GHC / DGHC sub-layer of the connection family "
      "`connection`, in the operators' order.");
  mod.def("connection_names", [] { return vwn::connection_names_text(); },
          "The connection families of GHC, as text: \"vwn mhc mhc-lite mhc-v4\".");
  mod.def(
      "embedding_parameters",
      [](int m, int n, std::int64_t vocab, std::int64_t dim, bool lowrank, std::uint64_t seed, const py::object& dtype) {
        return as_list(embedding_parameters(m, n, vocab, dim, lowrank, seed, dtype_of(dtype)));
      },
      py::arg("m"), py::arg("n"), py::arg("vocab"), py::arg("dim"), py::arg("lowrank"), py::arg("seed"),
      py::arg("dtype"), "The same for an over-width embedding, drawn with `seed`.");
  mod.def(
      "reduce_head_parameters",
      [](int m, int n, std::int64_t dim, std::uint64_t seed, const py::object& dtype) {
        return as_list(reduce_head_parameters(m, n, dim, seed, dtype_of(dtype)));
      },
      py::arg("m"), py::arg("n"), py::arg("dim"), py::arg("seed"), py::arg("dtype"),
      "The same for a reduce head, drawn with `seed`.");
  mod.def(
      "mtp_mixer_parameters",
      [](int m, int n, std::int64_t dim, std::uint64_t seed, const py::object& dtype) {
        return as_list(mtp_mixer_parameters(m, n, dim, seed, dtype_of(dtype)));
      },
      py::arg("m"), py::arg("n"), py::arg("dim"), py::arg("seed"), py::arg("dtype"),
      "The same for an MTP mixer, drawn with `seed`.");

  mod.def(
      "read_checkpoint",
      [](const std::string& path) {
        checkpoint_tensors c = read_checkpoint(path);
        return py::make_tuple(c.tensors, c.metadata);
      },
      py::arg("path"),
      "A verified vwn-train checkpoint: (tensors by file name as flat float32 tensors, metadata as text).");
}
