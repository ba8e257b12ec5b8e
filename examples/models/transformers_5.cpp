// Model code of the run-time shape registry (include/vwn/model_registry.hpp), shapes: 8,64.
// The shapes are spread over several files so that they compile in parallel.
#include <vwn/model_holder.hpp>

VWN_INSTANTIATE_TRANSFORMER_SHAPE(8, 64)
