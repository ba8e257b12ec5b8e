// Model code of the run-time shape registry (include/vwn/model_registry.hpp), shapes: 1,1 1,2 1,4.
// The shapes are spread over several files so that they compile in parallel.
#include <vwn/model_holder.hpp>

VWN_INSTANTIATE_TRANSFORMER_SHAPE(1, 1)
VWN_INSTANTIATE_TRANSFORMER_SHAPE(1, 2)
VWN_INSTANTIATE_TRANSFORMER_SHAPE(1, 4)
