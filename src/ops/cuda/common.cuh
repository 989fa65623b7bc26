// Small device helpers shared by the kernels.
#pragma once
#include <cuda_runtime.h>

namespace primal::cuda {

// Sum over the `width` lanes of a group (width a power of two <= 32, groups aligned to it).
__device__ __forceinline__ float group_sum(float v, int width) {
  for (int o = width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The descriptor that owns launch block b, for batched kernels whose descriptors (any type with a
// block0 member) list their first blocks in increasing order.
template <class Desc>
__device__ __forceinline__ int owner_of(const Desc* d, int count, int64_t b) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (d[mid].block0 <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Sum of a double over the whole block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `scratch` holds 32 doubles of shared memory.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double t = lane < n_warps ? scratch[lane] : 0.0;
  return warp_sum(t);
}

// RoPE's rotation of the pair (a, b) by the angle of cosine c and sine s: r0 = a c - b s, r1 = a s +
// b c, each product and sum rounded, no fused multiply-add (the CPU's values; the trainer's rotations
// all call this one, so that a RoPE fused into another kernel keeps rope_rotate's bits).
__device__ __forceinline__ void rope_rotate_pair(float a, float b, float c, float s, float& r0, float& r1) {
  r0 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)), r1 = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
}

// block_sum of two values at once (scratch: 64 doubles), each by block_sum's own steps: the same
// sums, one pair of barriers.
__device__ __forceinline__ void block_sum2(double& a, double& b, double* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  a = warp_sum(a), b = warp_sum(b);
  __syncthreads();  // scratch may still be read from a previous call
  if (lane == 0) scratch[warp] = a, scratch[32 + warp] = b;
  __syncthreads();
  const double ta = lane < n_warps ? scratch[lane] : 0.0, tb = lane < n_warps ? scratch[32 + lane] : 0.0;
  a = warp_sum(ta), b = warp_sum(tb);
}

// 1 / sqrt(mean of squares + eps) as the CPU's rmsnorm forms it: squares summed in fp64, the
// reciprocal root in fp64, rounded once to fp32.
__device__ __forceinline__ float rms_scale(double sum_sq, int64_t n, float eps) {
  return float(1.0 / sqrt(sum_sq / double(n) + double(eps)));
}

// 16 bytes global -> shared without passing through registers (sm_80+); !valid: zero-filled (no
// bytes read). Completion: cp_async_commit groups the copies issued so far, cp_async_wait<N>
// waits until at most N groups are pending (then __syncthreads before other threads read).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = unsigned(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

}  // namespace primal::cuda
