// Causal GQA attention for training on the GPU, the twin of ops/cpu/attention_backward (same
// layouts, same semantics), fp32 throughout:
//   s_j = q . k_j / sqrt(HS) for keys j <= t,  p = softmax(s),  out = sum_j p_j v_j,
//   lse = log sum_j exp(s_j)  (kept for the backward instead of the (T, T) probabilities);
//   backward: p_j = exp(s_j - lse), D = dout . out, dp_j = dout . v_j, ds_j = p_j (dp_j - D),
//   dq = sum_j ds_j k_j / sqrt(HS),  dk_j = sum ds_j q / sqrt(HS),  dv_j = sum p_j dout
//   (dk, dv summed over the queries t >= j of every query head of the group).
// Query head h reads K/V head h / (NH / KVH).
//
// Flash-attention-2 structure (no (T, T) matrix in device memory): the forward runs an online
// softmax per (sequence, head, tile of 32 queries) over tiles of 32 keys; the backward computes
// D first, then per (sequence, KV head, tile of 32 keys) loops over the query tiles of every
// query head of the group to accumulate dk, dv in registers, and per (sequence, head, query tile)
// loops over the key tiles to accumulate dq. No atomics: every sum runs in a fixed order, so
// results are bitwise identical from run to run. CUDA cores (fp32 FMA), HS of 32, 64, 96 or 128.
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"

namespace primal::cuda {

// Whether the kernels below take head size HS (others are refused with primal::Error).
bool attention_train_supports(int64_t HS);

// out, q: (B, T, NH, HS); k, v: (B, T, KVH, HS); lse: (B, NH, T). out and lse are written.
void attention_forward_train(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                             int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s);

// dq: (B, T, NH, HS), dk, dv: (B, T, KVH, HS) overwritten with the gradients; dout, out, q:
// (B, T, NH, HS); k, v: (B, T, KVH, HS); lse: (B, NH, T) from attention_forward_train. dq also
// serves as the scratch of D = dout . out (one float per row, before the gradient replaces it),
// so dq must not overlap any input.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* q,
                        const float* k, const float* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                        int64_t KVH, int64_t HS, cudaStream_t s);

}  // namespace primal::cuda
