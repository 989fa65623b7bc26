// Token embedding for training, on an fp32 table (V, C) held in memory:
//   forward  out[t, :] = table[tokens[t], :]
//   backward dtable[tokens[t], :] += dout[t, :]
#pragma once
#include <cstdint>

namespace primal::cpu {

// out: (T, C); tokens: (T); table: (V, C). Ids are checked (Error outside [0, V)).
template <class F>
void embedding_forward_train(F* out, const int32_t* tokens, int64_t T, const float* table, int64_t V, int64_t C);

// dtable: (V, C) accumulated; dout: (T, C). Columns in parallel, tokens in order within a
// column, so repeated ids sum in the same order whatever the thread count.
template <class F>
void embedding_backward(F* dtable, const F* dout, const int32_t* tokens, int64_t T, int64_t C);

}  // namespace primal::cpu
