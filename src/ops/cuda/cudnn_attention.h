// Causal attention forward and backward by cuDNN's fused flash-attention engines (the bf16
// trainer's fast path on Hopper: wgmma kernels, ~2x our mma.sync ones at qwen's shape).
//
// libcudnn.so.9 is loaded at run time (dlopen), so primal runs where it is absent: every entry
// point then reports false and the caller keeps its own kernels (attention_mma.h). The graphs are
// cuDNN's backend API form of scaled dot-product attention (the pattern its SDPA engines fuse:
// Q K^T, scale, causal mask, softmax with stats, P V; and the backward's), built once per shape and
// kept.
//
// Layouts (bf16, every row 16-byte aligned): q (B, T, NH, HS) rows ldq apart a token; k, v (B, T,
// KVH, HS) rows ldk apart; out, dout (B, T, NH, HS) rows NH HS apart; lse (B, NH, T) fp32, the
// natural-log sum of exp of the scaled masked scores (as attention_forward_mma writes it); dq (B, T,
// NH, HS), dk, dv (B, T, KVH, HS), rows ldd apart (a column block each of one wider matrix).
// The backward is not bitwise reproducible (cuDNN sums dq across key tiles with atomics).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace primal::cuda {

struct CudnnAttnShape {
  int64_t B = 0, T = 0, NH = 0, KVH = 0, HS = 0;
  int64_t ldq = 0, ldk = 0;  // q's and k/v's row strides per token (elements)
  int64_t ldd = 0;           // dq, dk, dv's row stride per token (backward)
};

// Whether libcudnn.so.9 loaded (PRIMAL_CUDNN=0 disables it; PRIMAL_CUDNN_LIB names the library).
bool cudnn_attention_loaded();
// PRIMAL_CUDNN=on: callers use it wherever it has an engine, past their own speed heuristics
// (comparisons at small head sizes). (=verbose logs the plans and the backend's errors.)
bool cudnn_attention_forced();

// Workspace bytes (device memory, 256-byte aligned base) the forward / backward of a shape need,
// or -1 when cuDNN has no engine for it (or is not loaded). Builds and keeps the graph.
int64_t cudnn_attention_forward_workspace(const CudnnAttnShape& sh);
int64_t cudnn_attention_backward_workspace(const CudnnAttnShape& sh);

// false (nothing written) where the workspace query above gives -1 or ws_bytes is short.
bool cudnn_attention_forward(uint16_t* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                             const CudnnAttnShape& sh, void* ws, size_t ws_bytes, cudaStream_t s);
bool cudnn_attention_backward(uint16_t* dq, uint16_t* dk, uint16_t* dv, const uint16_t* dout, const uint16_t* out,
                              const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* lse,
                              const CudnnAttnShape& sh, void* ws, size_t ws_bytes, cudaStream_t s);

}  // namespace primal::cuda
