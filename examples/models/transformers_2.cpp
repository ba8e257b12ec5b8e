// Model code of the run-time shape registry (include/vwn/model_registry.hpp), shapes: 2,3 2,4.
// The shapes are spread over several files so that they compile in parallel.
#include <vwn/model_holder.hpp>

VWN_INSTANTIATE_TRANSFORMER_SHAPE(2, 3)
VWN_INSTANTIATE_TRANSFORMER_SHAPE(2, 4)
