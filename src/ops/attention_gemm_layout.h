// The workspace layout of the cuBLAS training attention (ops/cuda/attention_gemm.h), as plain host
// arithmetic (attention_gemm_min_workspace / good_workspace are built on it; the trainer no longer
// uses this attention, so the memory planner no longer counts it). A chunk is n query heads in
// `segs` segments (one KV head each) of one sequence;
// 2-byte values are bf16, every region starts at a multiple of kAttnAlign bytes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace primal::attn_gemm {

constexpr size_t kAttnAlign = 256;

inline size_t align_up(size_t n) { return (n + kAttnAlign - 1) / kAttnAlign * kAttnAlign; }
// Score row length: T rounded up to 8, so every fp32 and bf16 row starts 32-byte aligned.
inline int64_t padded_len(int64_t T) { return (T + 7) / 8 * 8; }

// Byte offsets of a chunk's regions.
struct Layout {
  size_t q = 0, dout = 0, k = 0, v = 0, s = 0, dp = 0, o = 0, total = 0;
};

// Q bf16 (n, T, HS) | K, V bf16 (segs, T, HS) | S fp32 (n, T, Tp), P bf16 inside | O fp32 (n, T, HS)
inline Layout forward_layout(int64_t n, int64_t segs, int64_t T, int64_t HS) {
  const size_t rows = size_t(n * T), kv = size_t(segs * T) * size_t(HS) * 2;
  Layout L;
  L.q = 0;
  L.k = L.q + align_up(rows * size_t(HS) * 2);
  L.v = L.k + align_up(kv);
  L.s = L.v + align_up(kv);
  L.o = L.s + align_up(rows * size_t(padded_len(T)) * sizeof(float));
  L.total = L.o + align_up(rows * size_t(HS) * sizeof(float));
  return L;
}

// Q, dO bf16 (n, T, HS) (dQ fp32 over both once consumed) | K, V bf16 (segs, T, HS) |
// S fp32 (n, T, Tp), P inside | dP fp32 (n, T, Tp), dS inside
inline Layout backward_layout(int64_t n, int64_t segs, int64_t T, int64_t HS) {
  const size_t rows = size_t(n * T), kv = size_t(segs * T) * size_t(HS) * 2;
  const size_t scores = align_up(rows * size_t(padded_len(T)) * sizeof(float));
  Layout L;
  L.q = 0;
  L.dout = L.q + align_up(rows * size_t(HS) * 2);
  L.o = L.q;
  L.k = L.dout + align_up(rows * size_t(HS) * 2);
  L.v = L.k + align_up(kv);
  L.s = L.v + align_up(kv);
  L.dp = L.s + scores;
  L.total = L.dp + scores;
  return L;
}

// The workspace for chunks of n heads in segs segments, forward and backward alike.
inline size_t chunk_workspace(int64_t n, int64_t segs, int64_t T, int64_t HS) {
  const size_t f = forward_layout(n, segs, T, HS).total, b = backward_layout(n, segs, T, HS).total;
  return f > b ? f : b;
}

}  // namespace primal::attn_gemm
