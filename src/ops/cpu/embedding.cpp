#include "ops/cpu/embedding.h"

#include "core/error.h"
#include "quant/dequant.h"

namespace primal::cpu {

void embedding_forward(float* out, const int32_t* tokens, int64_t T, const TensorRef& table) {
  const int64_t C = table.row_size(), V = table.nrows();
  for (int64_t t = 0; t < T; ++t) {
    PRIMAL_CHECK(tokens[t] >= 0 && tokens[t] < V, "token id {} at position {} is outside the vocabulary (0..{})",
                 tokens[t], t, V - 1);
    dequantize_tensor_row(table, tokens[t], out + t * C);
  }
}

}  // namespace primal::cpu
