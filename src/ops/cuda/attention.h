// Causal GQA attention over the fp16 KV cache, the GPU twin of ops/cpu/attention:
//   query head h reads K/V head h / (NH / KVH); s_j = q . k_j / sqrt(HS) for cached positions
//   j <= p (p the query's position); out = sum_j softmax(s)_j v_j.
// Decode (one token) splits the positions across blocks (split-K, "flash decoding"); the last
// block to finish combines the partial softmax sums; prefill streams tiles of keys past each query with an online
// softmax (flash attention). HS must be a multiple of 32, at most 256.
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"
#include "ops/cuda/elementwise.h"

namespace primal::cuda {

struct AttentionParams {
  const float* q = nullptr;         // (T, NH, HS) fp32, rotated; token t at position pos0 + t
  int64_t q_stride = 0;             // floats from one token's q to the next (0: NH * HS)
  const void* k_cache = nullptr;    // (n_ctx, KVH, HS) fp16, positions 0 .. pos0+T-1 filled
  const void* v_cache = nullptr;    // (n_ctx, KVH, HS) fp16
  const int32_t* pos0 = nullptr;    // device: position of token 0
  int64_t T = 1, NH = 0, KVH = 0, HS = 0;
  // Decode only: with fuse_rope, q points at the token's raw q | k | v row (rope.qkv, the QKV
  // GEMV's output) and the decode kernel does rope_qkv's work itself: it adds the bias, rotates
  // its query head and the new key, and stores the new key and value in the cache at the
  // position (blocks that read that position take the values they formed, not the cache). The
  // results are bit-identical to rope_qkv followed by the plain kernel, with one launch fewer.
  bool fuse_rope = false;
  RopeQkvParams rope;
};

// Splits of the decode kernel for a model with KVH heads: enough blocks to fill the GPU.
int attention_decode_splits(int64_t KVH);
// Bytes of the decode kernel's scratch: completion counters, then the partial results
// (NH, splits, HS + 2) fp32. It must be zero-filled before the first call; every call leaves
// the counters at zero again.
size_t attention_decode_scratch(int64_t NH, int64_t HS, int splits);

// T = 1: out (NH, HS) fp32. scratch: attention_decode_scratch bytes. Reads the position from
// the device, so a captured graph replays for any position.
void attention_decode(const AttentionParams& p, int splits, void* scratch, float* out, cudaStream_t s);

// Any T: out (T, NH*HS) fp16 (the operand of the output projection's GEMM). Tensor cores
// (flash_attention.cu: fp16 Q, K, V and probabilities, fp32 scores and sums) for HS of 32, 64,
// 128 or 256; the fp32 kernel below otherwise.
void attention_prefill(const AttentionParams& p, void* out, cudaStream_t s);
// The two variants, for tests: the tensor-core one returns false for a head size it lacks.
bool attention_prefill_tc(const AttentionParams& p, void* out, cudaStream_t s);
void attention_prefill_fp32(const AttentionParams& p, void* out, cudaStream_t s);

}  // namespace primal::cuda
