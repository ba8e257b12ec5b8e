// The reference transformer, compiled once per scalar type: VWN_MODEL_SCALAR is float in vwn_transformer and double
// in vwn_transformer_double (the tests' finite-difference checks). The width parts of each shape are compiled in
// their own generated translation units (width_parts.cpp.in); the host GEMMs of every module once, here
// (VWN_EXTERN_HOST_GEMM is defined for every user of these libraries).
#include <transformer/model.hpp>

template class vwn::model::transformer<VWN_MODEL_SCALAR>;

VWN_INSTANTIATE_HOST_GEMM(VWN_MODEL_SCALAR)
