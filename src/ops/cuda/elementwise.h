// Row-wise and element-wise kernels of the forward pass, each the GPU twin of a CPU op:
//   rmsnorm     out[t, c] = (x[t, c] * (1 / sqrt(mean_c(x[t, :]^2) + eps))) * w[c]   (ops/cpu/rmsnorm)
//   swiglu      out[t, f] = silu(gu[t, f]) * gu[t, F + f]                          (ops/cpu/swiglu)
//   rope_qkv    bias, RoPE of q and k, k and v stored in the fp16 cache             (ops/cpu/rope)
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"

namespace primal::cuda {

// x: (T, C) fp32; w: (C); out: (T, C) fp16. Sum of squares in fp64 as on the CPU.
void rmsnorm_f16(const float* x, const float* w, int64_t T, int64_t C, float eps, void* out, cudaStream_t s);

// gu: (T, 2F) fp32, gate in columns 0..F-1, up in F..2F-1; out: (T, F) fp16.
void swiglu_f16(const float* gu, int64_t T, int64_t F, void* out, cudaStream_t s);

// out[i] = silu(gate[i]) * up[i], fp32, n elements; out may alias gate or up.
void swiglu_f32(const float* gate, const float* up, int64_t n, float* out, cudaStream_t s);

struct RopeQkvParams {
  float* qkv = nullptr;         // (T, NH*HS + 2*KVH*HS): q | k | v per token; q is rotated in place
  const float* bias = nullptr;  // (NH*HS + 2*KVH*HS) or null
  int64_t T = 0, NH = 0, KVH = 0, HS = 0, n_rot = 0;
  bool neox = false;
  const void* cos_sin = nullptr;     // (n_ctx, n_rot/2) float pairs (cos, sin): rope_table's
  const int32_t* pos0 = nullptr;     // device: position of token 0 (the cache's fill level)
  void* k_cache = nullptr;           // (n_ctx, KVH, HS) fp16 of this layer
  void* v_cache = nullptr;           // (n_ctx, KVH, HS) fp16
};
// Adds the bias; rotates q (in place, fp32) and k; writes k and v as fp16 to cache rows
// pos0 .. pos0+T-1.
void rope_qkv(const RopeQkvParams& p, cudaStream_t s);

// out: (n_pos, half) float pairs: (cos, sin) of p * inv_freq[i], the angle in fp64 and cos/sin
// rounded to fp32, as the CPU's rope forms them. inv_freq: (half) fp64 on the device.
void rope_table(const double* inv_freq, int64_t half, int64_t n_pos, void* out, cudaStream_t s);

}  // namespace primal::cuda
