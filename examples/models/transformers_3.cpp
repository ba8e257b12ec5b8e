// Model code of the run-time shape registry (include/vwn/model_registry.hpp), shapes: 4,8 4,16.
// The shapes are spread over several files so that they compile in parallel.
#include <vwn/model_holder.hpp>

VWN_INSTANTIATE_TRANSFORMER_SHAPE(4, 8)
VWN_INSTANTIATE_TRANSFORMER_SHAPE(4, 16)
