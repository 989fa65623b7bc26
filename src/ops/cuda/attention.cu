#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "ops/cuda/attention.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/launch.cuh"

namespace primal::cuda {
namespace {

constexpr int kWarps = 4;

// ---- prefill: grid (ceil(T / 16), NH), 4 warps x 4 queries; lanes take 32 keys of a tile each for
// the scores, then dims l + 32 d for the weighted sum of values. -------------------------------
constexpr int kQueriesPerWarp = 4;
constexpr int kQueriesPerBlock = kWarps * kQueriesPerWarp;
constexpr int kKeysPerTile = 32;

template <int D>
__global__ void __launch_bounds__(kWarps * 32) attn_prefill_kernel(const AttentionParams p, __half* out) {
  constexpr int HS = 32 * D;
  extern __shared__ float sm[];
  float* qs = sm;                                   // (16, HS)
  float* ks = qs + kQueriesPerBlock * HS;           // (32, HS + 1): padded, lane j reads row j
  float* vs = ks + kKeysPerTile * (HS + 1);         // (32, HS)
  const int64_t h = blockIdx.y, kvh = h / (p.NH / p.KVH), t0 = int64_t(blockIdx.x) * kQueriesPerBlock;
  const int64_t pos0 = *p.pos0;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float scale = float(1.0 / sqrt(double(HS)));
  const int64_t nq = min(int64_t(kQueriesPerBlock), p.T - t0);
  const int64_t q_stride = p.q_stride ? p.q_stride : p.NH * HS;
  for (int64_t k = threadIdx.x; k < kQueriesPerBlock * HS; k += blockDim.x) {
    const int64_t i = k / HS, d = k % HS;
    qs[k] = i < nq ? p.q[(t0 + i) * q_stride + h * HS + d] : 0.0f;
  }
  float m[kQueriesPerWarp], l[kQueriesPerWarp], acc[kQueriesPerWarp][D];
#pragma unroll
  for (int i = 0; i < kQueriesPerWarp; ++i) {
    m[i] = -INFINITY, l[i] = 0;
#pragma unroll
    for (int d = 0; d < D; ++d) acc[i][d] = 0;
  }
  const int64_t last = pos0 + t0 + nq - 1;  // the block's last query position: keys 0..last
  const int64_t stride = p.KVH * HS;
  const __half* kc = static_cast<const __half*>(p.k_cache) + kvh * HS;
  const __half* vc = static_cast<const __half*>(p.v_cache) + kvh * HS;
  for (int64_t j0 = 0; j0 <= last; j0 += kKeysPerTile) {
    __syncthreads();  // the previous tile is consumed (and qs written, the first time)
    for (int64_t k = threadIdx.x; k < kKeysPerTile * HS; k += blockDim.x) {
      const int64_t j = k / HS, d = k % HS;
      const bool in = j0 + j <= last;
      ks[j * (HS + 1) + d] = in ? __half2float(kc[(j0 + j) * stride + d]) : 0.0f;
      vs[j * HS + d] = in ? __half2float(vc[(j0 + j) * stride + d]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kQueriesPerWarp; ++i) {
      const int64_t qi = warp * kQueriesPerWarp + i, qpos = pos0 + t0 + qi;
      if (qi >= nq || j0 > qpos) continue;  // warp-uniform
      const float* qv = qs + qi * HS;
      const float* kr = ks + lane * (HS + 1);
      float dot = 0;
#pragma unroll 8
      for (int d = 0; d < HS; ++d) dot = fmaf(qv[d], kr[d], dot);
      const float sc = j0 + lane <= qpos ? dot * scale : -INFINITY;
      const float mn = fmaxf(m[i], warp_max(sc));
      const float alpha = expf(m[i] - mn), e = expf(sc - mn);
      l[i] = l[i] * alpha + warp_sum(e);
#pragma unroll
      for (int d = 0; d < D; ++d) acc[i][d] *= alpha;
      for (int j = 0; j < kKeysPerTile; ++j) {
        const float ej = __shfl_sync(0xffffffffu, e, j);
#pragma unroll
        for (int d = 0; d < D; ++d) acc[i][d] = fmaf(ej, vs[j * HS + lane + 32 * d], acc[i][d]);
      }
      m[i] = mn;
    }
  }
#pragma unroll
  for (int i = 0; i < kQueriesPerWarp; ++i) {
    const int64_t qi = warp * kQueriesPerWarp + i;
    if (qi >= nq) continue;
    __half* o = out + ((t0 + qi) * p.NH + h) * HS;
#pragma unroll
    for (int d = 0; d < D; ++d) o[lane + 32 * d] = __float2half_rn(acc[i][d] / l[i]);
  }
}

void check_shape(const AttentionParams& p) {
  PRIMAL_CHECK(p.NH > 0 && p.KVH > 0 && p.NH % p.KVH == 0, "attention: {} query heads, {} KV heads", p.NH, p.KVH);
  PRIMAL_CHECK(p.HS % 32 == 0 && p.HS >= 32 && p.HS <= 256, "attention: head size {} (GPU: a multiple of 32, <= 256)",
               p.HS);
  PRIMAL_CHECK(p.T > 0, "attention: no tokens");
}

// Calls LAUNCH(D) for D = HS / 32.
#define PRIMAL_HS_SWITCH(HS, LAUNCH)          \
  switch ((HS) / 32) {                        \
    case 1: LAUNCH(1); break;                 \
    case 2: LAUNCH(2); break;                 \
    case 3: LAUNCH(3); break;                 \
    case 4: LAUNCH(4); break;                 \
    case 5: LAUNCH(5); break;                 \
    case 6: LAUNCH(6); break;                 \
    case 7: LAUNCH(7); break;                 \
    case 8: LAUNCH(8); break;                 \
    default: fail("attention: head size {}", HS); \
  }

template <class K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace

void attention_prefill(const AttentionParams& p, void* out, cudaStream_t s) {
  if (!attention_prefill_tc(p, out, s)) attention_prefill_fp32(p, out, s);
}

void attention_prefill_fp32(const AttentionParams& p, void* out, cudaStream_t s) {
  check_shape(p);
  const dim3 grid(unsigned((p.T + kQueriesPerBlock - 1) / kQueriesPerBlock), unsigned(p.NH));
  const size_t smem = (size_t(kQueriesPerBlock) * p.HS + kKeysPerTile * (p.HS + 1) + kKeysPerTile * p.HS) * sizeof(float);
#define PRIMAL_LAUNCH(D_)                                                                      \
  allow_smem(attn_prefill_kernel<D_>, smem);                                                   \
  attn_prefill_kernel<D_><<<grid, kWarps * 32, smem, s>>>(p, static_cast<__half*>(out))
  PRIMAL_HS_SWITCH(p.HS, PRIMAL_LAUNCH);
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
