#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "ops/cuda/attention.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"

namespace primal::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxHeadsPerBlock = 8;

// ---- decode: grid (KVH, splits, head chunks) of one warp each. Positions go in chunks of 32,
// chunk c to split c % splits; lane l scores position 32 c + l against every query head of the
// chunk (the whole dot product in the lane: no shuffles on the critical path), then the warp
// folds the chunk into its running softmax: lane l owns dims l + 32 d of the weighted sums. ----
constexpr int kChunk = 32;

template <int D>
__global__ void __launch_bounds__(32) attn_decode_kernel(const AttentionParams p, int splits, int heads_per_block,
                                                          float* partial) {
  constexpr int HS = 32 * D;
  constexpr int H = 32 / D < kMaxHeadsPerBlock ? 32 / D : kMaxHeadsPerBlock;  // registers: 2 H D <= 64
  __shared__ float4 qs[kMaxHeadsPerBlock * HS / 4];
  const int64_t G = p.NH / p.KVH, kvh = blockIdx.x, s = blockIdx.y;
  const int64_t h0 = kvh * G + int64_t(blockIdx.z) * heads_per_block;
  const int nh = int(min(int64_t(heads_per_block), kvh * G + G - h0));
  const int64_t n = int64_t(*p.pos0) + 1, n_chunks = (n + kChunk - 1) / kChunk;
  const int lane = threadIdx.x;
  const float scale = float(1.0 / sqrt(double(HS)));
  float* qf = reinterpret_cast<float*>(qs);
  for (int k = lane; k < nh * HS; k += 32) qf[k] = p.q[h0 * HS + k];
  __syncwarp();

  float acc[H][D], m[H], l[H];
#pragma unroll
  for (int g = 0; g < H; ++g) {
    m[g] = -INFINITY, l[g] = 0;
#pragma unroll
    for (int d = 0; d < D; ++d) acc[g][d] = 0;
  }
  const int64_t stride = p.KVH * HS;
  const __half* kc = static_cast<const __half*>(p.k_cache) + kvh * HS;
  const __half* vc = static_cast<const __half*>(p.v_cache) + kvh * HS;
  // The chunk's keys and values, staged with all their loads in flight at once (rows padded by
  // 16 bytes: lane j reading 16 bytes of row j hits its own bank group).
  constexpr int LD = HS + 8;
  __shared__ __align__(16) __half ks[kChunk * LD], vs[kChunk * LD];
  for (int64_t c = s; c < n_chunks; c += splits) {
    const int64_t j = c * kChunk + lane;
    const bool valid = j < n;
    __syncwarp();
#pragma unroll 4
    for (int k = lane; k < kChunk * HS / 8; k += 32) {
      const int jj = k / (HS / 8), c8 = k % (HS / 8);
      const int64_t pos = c * kChunk + jj;
      uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
      if (pos < n) {
        kv = __ldg(reinterpret_cast<const uint4*>(kc + pos * stride) + c8);
        vv = __ldg(reinterpret_cast<const uint4*>(vc + pos * stride) + c8);
      }
      *reinterpret_cast<uint4*>(ks + jj * LD + 8 * c8) = kv;
      *reinterpret_cast<uint4*>(vs + jj * LD + 8 * c8) = vv;
    }
    __syncwarp();
    // scores of position j for each head
    float sc[H];
#pragma unroll
    for (int g = 0; g < H; ++g) sc[g] = 0;
    const uint4* kr = reinterpret_cast<const uint4*>(ks + lane * LD);
#pragma unroll 4
    for (int d8 = 0; d8 < HS / 8; ++d8) {
      const uint4 kv = kr[d8];
      float kf[8];
      const __half2* h2 = reinterpret_cast<const __half2*>(&kv);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h2[i]);
        kf[2 * i] = f.x, kf[2 * i + 1] = f.y;
      }
#pragma unroll
      for (int g = 0; g < H; ++g) {
        if (g >= nh) break;
        const float4 qa = qs[(g * HS) / 4 + 2 * d8], qb = qs[(g * HS) / 4 + 2 * d8 + 1];
        sc[g] = fmaf(qa.x, kf[0], sc[g]), sc[g] = fmaf(qa.y, kf[1], sc[g]);
        sc[g] = fmaf(qa.z, kf[2], sc[g]), sc[g] = fmaf(qa.w, kf[3], sc[g]);
        sc[g] = fmaf(qb.x, kf[4], sc[g]), sc[g] = fmaf(qb.y, kf[5], sc[g]);
        sc[g] = fmaf(qb.z, kf[6], sc[g]), sc[g] = fmaf(qb.w, kf[7], sc[g]);
      }
    }
    float e[H];
#pragma unroll
    for (int g = 0; g < H; ++g) {
      if (g >= nh) break;
      const float v = valid ? sc[g] * scale : -INFINITY;
      const float mn = fmaxf(m[g], warp_max(v));  // finite: lane 0's position is valid
      const float alpha = expf(m[g] - mn);
      e[g] = expf(v - mn);
      l[g] = l[g] * alpha + warp_sum(e[g]);
#pragma unroll
      for (int d = 0; d < D; ++d) acc[g][d] *= alpha;
      m[g] = mn;
    }
    const int n_here = int(min(int64_t(kChunk), n - c * kChunk));
    for (int jj = 0; jj < n_here; ++jj) {
      float v[D];
#pragma unroll
      for (int d = 0; d < D; ++d) v[d] = __half2float(vs[jj * LD + lane + 32 * d]);
#pragma unroll
      for (int g = 0; g < H; ++g) {
        if (g >= nh) break;
        const float w = __shfl_sync(0xffffffffu, e[g], jj);
#pragma unroll
        for (int d = 0; d < D; ++d) acc[g][d] = fmaf(w, v[d], acc[g][d]);
      }
    }
  }
  const int64_t rec = HS + 2;
#pragma unroll
  for (int g = 0; g < H; ++g) {
    if (g >= nh) break;
    float* out = partial + ((h0 + g) * splits + s) * rec;
    if (lane == 0) out[0] = m[g], out[1] = l[g];
#pragma unroll
    for (int d = 0; d < D; ++d) out[2 + lane + 32 * d] = acc[g][d];
  }
}

// out[h, d] = sum_s acc_s[d] e^(m_s - M) / sum_s l_s e^(m_s - M) over the splits that ran.
__global__ void attn_combine_kernel(const AttentionParams p, int splits, const float* partial, float* out) {
  const int64_t h = blockIdx.x, HS = p.HS, rec = HS + 2;
  const int64_t n = int64_t(*p.pos0) + 1;
  const int64_t n_split = min(int64_t(splits), (n + kChunk - 1) / kChunk);  // the splits that had a chunk
  const float* r = partial + h * splits * rec;
  float M = -INFINITY;
  for (int64_t s = 0; s < n_split; ++s) M = fmaxf(M, r[s * rec]);
  for (int64_t d = threadIdx.x; d < HS; d += blockDim.x) {
    float L = 0, A = 0;
    for (int64_t s = 0; s < n_split; ++s) {
      const float f = r[s * rec] == -INFINITY ? 0.0f : expf(r[s * rec] - M);
      L += r[s * rec + 1] * f;
      A += r[s * rec + 2 + d] * f;
    }
    out[h * HS + d] = A / L;
  }
}

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

int attention_decode_splits(int64_t KVH) {
  return int(std::clamp<int64_t>((2 * sm_count() + KVH - 1) / KVH, 1, 64));
}

size_t attention_decode_scratch(int64_t NH, int64_t HS, int splits) {
  return size_t(NH) * size_t(splits) * size_t(HS + 2) * sizeof(float);
}

void attention_decode(const AttentionParams& p, int splits, void* scratch, float* out, cudaStream_t s) {
  check_shape(p);
  PRIMAL_CHECK(p.T == 1 && splits >= 1, "attention_decode: T = {}, splits = {}", p.T, splits);
  const int64_t G = p.NH / p.KVH, D = p.HS / 32;
  // Heads per block: at most 8, and few enough that the accumulators (heads x D) and the scores
  // stay in registers.
  const int hpb = int(std::max<int64_t>(1, std::min<int64_t>({G, kMaxHeadsPerBlock, 32 / D})));
  const dim3 grid(unsigned(p.KVH), unsigned(splits), unsigned((G + hpb - 1) / hpb));
  float* part = static_cast<float*>(scratch);
#define PRIMAL_LAUNCH(D_) attn_decode_kernel<D_><<<grid, 32, 0, s>>>(p, splits, hpb, part)
  PRIMAL_HS_SWITCH(p.HS, PRIMAL_LAUNCH);
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
  attn_combine_kernel<<<unsigned(p.NH), unsigned(std::min<int64_t>(p.HS, 256)), 0, s>>>(p, splits, part, out);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

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
