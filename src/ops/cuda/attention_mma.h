// Causal GQA attention for training on the tensor cores, flash style (forward and backward): the same semantics
// and layouts as attention_forward_train (attention_train.h) and attention_forward_gemm
// (attention_gemm.h), whose lse the backward of either kind accepts:
//   s_j = q . k_j / sqrt(HS) for keys j <= t,  out = sum_j softmax(s)_j v_j,  lse = log sum_j exp(s_j).
//
// Why: the bf16 mode's GEMM attention writes and reads the (T, T) scores of every head in device
// memory (fp32 S, bf16 P: ~150 MB per sequence and layer at T 1024), so it runs at HBM speed, far
// from the tensor cores; the fp32 flash kernel avoids that traffic but runs on the CUDA cores.
// This kernel keeps S in registers: a block of 4 warps takes 64 queries of one head (16 a warp)
// and walks the key tiles up to the diagonal (64 keys each, staged in shared memory as bf16 by
// cp.async, the next tile's copies in flight during the current tile's products), S = Q K^T and
// O += P V by mma.sync m16n8k16 (bf16 operands from ldmatrix, fp32 accumulation), an online
// softmax in base 2 in between (FlashAttention-2's loop).
//
// Precision: q, k, v and P are rounded to bf16 (unit roundoff 2^-8), every sum runs in fp32: the
// errors of attention_forward_gemm (tests/gpu/test_attention_gemm_cuda.cpp holds both to the same
// bound against the fp64 CPU twin). No atomics: bitwise identical from run to run.
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"

namespace primal::cuda {

// Head sizes the kernel is built for (16 | HS, HS <= 128): 32, 64, 96, 128.
bool attention_mma_supports(int64_t HS);

// out, q: (B, T, NH, HS); k, v: (B, T, KVH, HS) fp32; lse: (B, NH, T). out and lse are written.
void attention_forward_mma(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                           int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s);
// The same on bf16 q, k, v (the bf16 trainer's activations; 16-byte aligned), out written as bf16:
// bitwise the fp32 function's results on the same values (it rounds its inputs to these bf16
// values), out rounded.
void attention_forward_mma(uint16_t* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                           int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s);

// The backward, as attention_backward (attention_train.h): dq: (B, T, NH, HS), dk, dv: (B, T, KVH,
// HS) overwritten; dout, out, q: (B, T, NH, HS); k, v: (B, T, KVH, HS); lse: (B, NH, T) from a
// forward of any kind. Three kernels (attention_mma.cu): per query row D = dout . out, lse in
// base 2 and dout rounded to bf16, into the workspace; dk, dv per tile of 64 keys over the group's
// query heads; dq per tile of 64 queries. q, k, v, dout, P and dS are rounded to bf16, sums in fp32
// (the GEMM path's errors). ws: attention_backward_mma_workspace(B, T, NH, HS, false) floats or
// more, 16-byte aligned (null or less: the function allocates that much itself, synchronizing the
// stream before it returns); with the `true` size and a GQA group of several query heads, each
// head's share of dk, dv is computed by its own blocks into ws and the group's shares are then
// summed in head order (more blocks, the same sums in a fixed order). ws overlaps no argument.
// The fp32-input overloads round q, k, v to bf16 copies first (and synchronize the stream).
size_t attention_backward_mma_workspace(int64_t B, int64_t T, int64_t NH, int64_t HS, bool gqa_shares);
void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* q,
                            const float* k, const float* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                            int64_t KVH, int64_t HS, cudaStream_t s, float* ws = nullptr, size_t ws_floats = 0);
// The bf16 mode's gradients written straight as bf16 (the q, k, v linear backward's operands) instead
// of fp32: each of dq, dk, dv given here is written only there, its fp32 buffer untouched, each value
// the fp32 one rounded to nearest even; with rope_cs, dq and dk are rotated back first (RoPE's
// backward: the table's cos and sin, rope_rotate's fp32 products). Bit for bit the fp32 gradients
// passed through rope_rotate(inverse, bf16 copy only) and a rounding, without their fp32 round trip.
struct AttentionGradsBf16 {
  uint16_t* dq = nullptr;          // (B, T, NH, HS) bf16 rows ld apart, or null (fp32 dq)
  uint16_t* dk = nullptr;          // (B, T, KVH, HS) bf16 rows ld apart, or null (fp32 dk)
  uint16_t* dv = nullptr;          // (B, T, KVH, HS) bf16 rows ld apart, or null (fp32 dv)
  int64_t ld = 0;                  // row stride per token of all three (elements, even, >= NH HS; 0: dense)
  const float* rope_cs = nullptr;  // (>= T, HS / 2, 2) cos, sin of every position's pairs (rope_table, every
                                   // dimension rotated, positions 0 .. T-1), or null: no rotation
  bool neox = false;               // RoPE pairs (i, i + HS / 2); else (2i, 2i + 1)
};

// The same with bf16 out, q, k, v (D = dout . out from the bf16 out). With `side` (and a workspace
// given), dq's kernel runs on side beside dk/dv's, and s waits for it before the function returns
// (events shared by every call: one caller thread at a time). grads_bf16: the gradients it names
// written as bf16 there (above), 4-byte aligned.
void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const uint16_t* out, const uint16_t* q,
                            const uint16_t* k, const uint16_t* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                            int64_t KVH, int64_t HS, cudaStream_t s, float* ws = nullptr, size_t ws_floats = 0,
                            cudaStream_t side = nullptr, const AttentionGradsBf16* grads_bf16 = nullptr);
// The same with dout bf16 too (16-byte aligned; the o projection's input gradient straight out of
// its GEMM as bf16, as PyTorch's autocast leaves it): the kernels read it where the fp32 overload
// reads its rounded copy, and D = dout . out sums its values. Bit for bit the overload above given
// the same values as fp32.
void attention_backward_mma(float* dq, float* dk, float* dv, const uint16_t* dout, const uint16_t* out,
                            const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* lse, int64_t B,
                            int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s, float* ws = nullptr,
                            size_t ws_floats = 0, cudaStream_t side = nullptr,
                            const AttentionGradsBf16* grads_bf16 = nullptr);

}  // namespace primal::cuda
