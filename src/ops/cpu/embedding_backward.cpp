#include "ops/cpu/embedding_backward.h"

#include "core/error.h"

namespace primal::cpu {

template <class F>
void embedding_forward_train(F* out, const int32_t* tokens, int64_t T, const float* table, int64_t V, int64_t C) {
  for (int64_t t = 0; t < T; ++t) {
    PRIMAL_CHECK(tokens[t] >= 0 && tokens[t] < V, "token id {} at position {} is outside the vocabulary (0..{})",
                 tokens[t], t, V - 1);
    const float* row = table + int64_t(tokens[t]) * C;
    for (int64_t c = 0; c < C; ++c) out[t * C + c] = F(row[c]);
  }
}

template <class F>
void embedding_backward(F* dtable, const F* dout, const int32_t* tokens, int64_t T, int64_t C) {
  constexpr int64_t kCols = 16;  // columns per task: one cache line of fp32 gradient
#pragma omp parallel for schedule(static) if (T * C > 65536)
  for (int64_t c0 = 0; c0 < C; c0 += kCols) {
    const int64_t c1 = c0 + kCols < C ? c0 + kCols : C;
    for (int64_t t = 0; t < T; ++t) {
      F* d = dtable + int64_t(tokens[t]) * C;
      for (int64_t c = c0; c < c1; ++c) d[c] += dout[t * C + c];
    }
  }
}

template void embedding_forward_train<float>(float*, const int32_t*, int64_t, const float*, int64_t, int64_t);
template void embedding_forward_train<double>(double*, const int32_t*, int64_t, const float*, int64_t, int64_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t);

}  // namespace primal::cpu
