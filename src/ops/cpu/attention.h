// Causal multi-head attention with grouped K/V heads (GQA), over a KV cache.
//   query head h uses K/V head h / (NH / KVH);
//   s_j = q . k_j / sqrt(HS) for cached positions j <= p (p = pos0 + t, the query's position);
//   out = sum_j softmax(s)_j v_j.
#pragma once
#include <cstdint>

namespace primal::cpu {

// Batches of at least this many queries go through sgemm (when built with OpenBLAS); smaller
// ones (decode) through plain per-query loops.
constexpr int64_t kAttentionGemmMinT = 16;

// out: (T, NH, HS); q: (T, NH, HS) for positions pos0 .. pos0+T-1;
// k, v: (P, KVH, HS) with P >= pos0 + T (positions 0 .. pos0+T-1 must be filled).
void attention_forward(float* out, const float* q, const float* k, const float* v, int64_t T, int64_t pos0,
                       int64_t NH, int64_t KVH, int64_t HS);

}  // namespace primal::cpu
