// Token selection on the GPU: the repetition penalty, the argmax and the k best logits, so that
// only k candidates (not the V logits) cross to the host. The order is the CPU sampler's: higher
// logit first, equal logits by ascending id.
//
// Candidates travel as 64-bit keys that sort ascending in that order:
//   key = (~ordered(logit)) << 32 | id,   ordered() the order-preserving map of fp32 to u32.
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"

namespace primal::cuda {

constexpr int kMaxTopK = 128;

// (logit, id) <-> key, on the host.
uint64_t logit_key(float logit, int32_t id);
float key_logit(uint64_t key);
inline int32_t key_id(uint64_t key) { return int32_t(key & 0xffffffffu); }

// logits[ids[i]] divided by `penalty` when positive, multiplied when negative; ids distinct.
void apply_penalty(float* logits, const int32_t* ids, int n, float penalty, cudaStream_t s);

// *key = the smallest key of logits (V): the argmax, ties to the lowest id. With reset false the
// caller has set *key to ~0 already (see embed_rows).
void argmax_key(const float* logits, int64_t V, uint64_t* key, cudaStream_t s, bool reset = true);

// out: (k) keys of the k best logits, best first; 1 <= k <= kMaxTopK, k <= V.
size_t top_k_scratch_bytes(int64_t V, int k);
void top_k_keys(const float* logits, int64_t V, int k, void* scratch, uint64_t* out, cudaStream_t s);

// The decode loop's step on the device: *token = id of *key, *pos += 1.
void advance_token(const uint64_t* key, int32_t* token, int32_t* pos, cudaStream_t s);

}  // namespace primal::cuda
