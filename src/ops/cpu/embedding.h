// Token embedding lookup: out[t, :] = table[tokens[t], :], rows dequantized from any type.
#pragma once
#include <cstdint>

#include "core/tensor_ref.h"

namespace primal::cpu {

// out: (T, C); tokens: (T); table: V rows of C elements. An id outside [0, V) throws Error.
void embedding_forward(float* out, const int32_t* tokens, int64_t T, const TensorRef& table);

}  // namespace primal::cpu
