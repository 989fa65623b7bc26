// Causal GQA attention for training, over B independent sequences of T tokens (positions 0..T-1),
// as GEMMs per (sequence, head) on its (T, T) score matrix:
//   s_j = q . k_j / sqrt(HS) for j <= t,  p = softmax(s),  out = sum_j p_j v_j
// The forward keeps only the log-sum-exp of every row (lse = log sum_j exp(s_j)); the backward
// recomputes p_j = exp(s_j - lse) instead of storing the (T, T) probabilities per head:
//   D = dout . out,  dp_j = dout . v_j,  ds_j = p_j (dp_j - D)
//   dq = sum_j ds_j k_j / sqrt(HS),  dk_j += ds_j q / sqrt(HS),  dv_j += p_j dout
// Query head h reads K/V head h / (NH / KVH).
#pragma once
#include <cstdint>

namespace primal::cpu {

// out, q: (B, T, NH, HS); k, v: (B, T, KVH, HS); lse: (B, NH, T) written.
template <class F>
void attention_forward_train(F* out, F* lse, const F* q, const F* k, const F* v, int64_t B, int64_t T, int64_t NH,
                             int64_t KVH, int64_t HS);

// dq: (B, T, NH, HS), dk, dv: (B, T, KVH, HS) overwritten with the gradients; dout, out, q, k, v,
// lse as in and from the forward. One task per (sequence, K/V head) owns its dk, dv rows and the
// dq rows of its query heads: no two threads write the same element, sums run in a fixed order.
template <class F>
void attention_backward(F* dq, F* dk, F* dv, const F* dout, const F* out, const F* q, const F* k, const F* v,
                        const F* lse, int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS);

}  // namespace primal::cpu
