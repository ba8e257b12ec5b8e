// Model code of the run-time shape registry (include/vwn/model_registry.hpp), shapes: 8,16 8,32.
// The shapes are spread over several files so that they compile in parallel.
#include <vwn/model_holder.hpp>

VWN_INSTANTIATE_TRANSFORMER_SHAPE(8, 16)
VWN_INSTANTIATE_TRANSFORMER_SHAPE(8, 32)
