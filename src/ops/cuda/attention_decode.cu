// Decode attention (one query token) over the fp16 cache, split across blocks (flash decoding).
//
// Positions go in chunks of 32. Grid (KVH, blocks, head chunks) of 4 warps; warp w of block b
// takes chunks 4 b + w, + 4 * blocks, ... For a chunk, the warp stages its keys and values in
// shared memory (cp.async: all loads in flight at once), lane l scores position 32 c + l against
// every query head of the block (the whole dot product in the lane), and the warp folds the
// chunk into its running softmax (lane l owns dims l + 32 d of the weighted sums). The warps of
// a block then combine in shared memory; when more than one block had chunks, the last block to
// finish combines the blocks' results (a counter per block column, reset by that block):
//   out[h, d] = sum_s acc_s[d] e^(m_s - M) / sum_s l_s e^(m_s - M),  M = max_s m_s.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "ops/cuda/attention.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/launch.cuh"

namespace primal::cuda {
namespace {

// One query head per block: a block's lanes score their positions against all of its heads in
// sequence, so several heads per block (which share the staged keys and values) lengthen the
// critical path of the short contexts that decode mostly sees. Measured on the H100 with
// qwen2.5-1.5B (6 query heads per KV head), tg128: 8 heads per block 793 tok/s, 2: 957, 1: 1000;
// tg1000: 2: 865, 1: 928 (the keys re-read per head come from L2).
constexpr int kChunk = 32, kWarps = 4, kMaxHeads = 1;


template <int HS>
struct DecodeSmem {
  static constexpr int LD = HS + 8;  // padded rows: lane j reading row j hits its own bank group
  static constexpr size_t per_warp = size_t(2 * kChunk * LD) * 2;  // keys and values, fp16
  static constexpr size_t bytes = kWarps * per_warp + size_t(kMaxHeads * HS) * 4 +
                                 size_t(kWarps * kMaxHeads * kChunk) * 4 + size_t(2 * HS) * 2;  // + new k, v
};

// rope_qkv's arithmetic for one pair of elements of a head (see elementwise.cu): pair i is a
// rotation pair (i < n_rot / 2) or two elements past n_rot; x is the head's raw values and
// bias (or null) its bias. Writes the two results and their indices within the head.
__device__ __forceinline__ void rope_pair(const RopeQkvParams& r, const float* x, const float* bias, int64_t pos,
                                          int i, bool rotate, int& e0, int& e1, float& a, float& b) {
  const int half = int(r.n_rot / 2);
  if (i < half) {
    e0 = r.neox ? i : 2 * i;
    e1 = r.neox ? i + half : 2 * i + 1;
  } else {
    e0 = int(r.n_rot) + 2 * (i - half), e1 = e0 + 1;
  }
  a = x[e0], b = x[e1];
  if (bias) a += bias[e0], b += bias[e1];
  if (rotate && i < half) {
    const float2 cs = static_cast<const float2*>(r.cos_sin)[pos * half + i];
    const float ra = __fsub_rn(__fmul_rn(a, cs.x), __fmul_rn(b, cs.y));
    const float rb = __fadd_rn(__fmul_rn(a, cs.y), __fmul_rn(b, cs.x));
    a = ra, b = rb;
  }
}

template <int D>
__global__ void __launch_bounds__(kWarps * 32) attn_decode_kernel(const AttentionParams p, int blocks, int hpb,
                                                                  int* counters, float* partial, float* result) {
  constexpr int HS = 32 * D;
  constexpr int H = 32 / D < kMaxHeads ? 32 / D : kMaxHeads;  // heads per block: registers 2 H D <= 64
  using S = DecodeSmem<HS>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __half* ks = reinterpret_cast<__half*>(smem + warp * S::per_warp);
  __half* vs = ks + kChunk * S::LD;
  float* qf = reinterpret_cast<float*>(smem + kWarps * S::per_warp);  // (hpb, HS)
  float* ew = qf + kMaxHeads * HS + warp * kMaxHeads * kChunk;          // this warp's (heads, 32) weights
  const float4* q4 = reinterpret_cast<const float4*>(qf);
  __half* kn = reinterpret_cast<__half*>(qf + kMaxHeads * HS + kWarps * kMaxHeads * kChunk);  // (HS) new key
  __half* vn = kn + HS;                                                                        // (HS) new value
  const int64_t G = p.NH / p.KVH, kvh = blockIdx.x, b = blockIdx.y;
  const int64_t h0 = kvh * G + int64_t(blockIdx.z) * hpb;
  const int nh = int(min(int64_t(hpb), kvh * G + G - h0));
  pdl_trigger();
  pdl_wait();
  const int64_t n = int64_t(*p.pos0) + 1, n_chunks = (n + kChunk - 1) / kChunk;
  const int n_active = int(min(int64_t(blocks), (n_chunks + kWarps - 1) / kWarps));  // blocks with chunks
  if (b >= n_active) return;
  const int64_t last_chunk = (n - 1) / kChunk;
  if (p.fuse_rope) {
    const RopeQkvParams& r = p.rope;
    const int64_t Q = p.NH * HS, KV = p.KVH * HS, pos = n - 1;
    const float* bias = r.bias;
    for (int k = threadIdx.x; k < nh * HS / 2; k += blockDim.x) {
      const int g = k / (HS / 2), i = k % (HS / 2);
      const int64_t c = (h0 + g) * HS;
      int e0, e1;
      float a, bb;
      rope_pair(r, p.q + c, bias ? bias + c : nullptr, pos, i, true, e0, e1, a, bb);
      qf[g * HS + e0] = a, qf[g * HS + e1] = bb;
    }
    const bool writer = b == 0 && blockIdx.z == 0;  // one block per KV head stores the new row
    for (int k = threadIdx.x; k < HS; k += blockDim.x) {
      const bool is_v = k >= HS / 2;
      const int i = is_v ? k - HS / 2 : k;
      const int64_t c = (is_v ? Q + KV : Q) + kvh * HS;
      int e0, e1;
      float a, bb;
      rope_pair(r, p.q + c, bias ? bias + c : nullptr, pos, i, !is_v, e0, e1, a, bb);
      const __half ha = __float2half_rn(a), hb = __float2half_rn(bb);
      __half* dst = is_v ? vn : kn;
      dst[e0] = ha, dst[e1] = hb;
      if (writer) {
        __half* cache = static_cast<__half*>(is_v ? r.v_cache : r.k_cache) + pos * KV + kvh * HS;
        cache[e0] = ha, cache[e1] = hb;
      }
    }
  } else {
    for (int k = threadIdx.x; k < nh * HS; k += blockDim.x) qf[k] = p.q[h0 * HS + k];
  }
  __syncthreads();

  const float scale = float(1.0 / sqrt(double(HS)));
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
  for (int64_t c = b * kWarps + warp; c < n_chunks; c += int64_t(blocks) * kWarps) {
    __syncwarp();
    for (int k = lane; k < kChunk * HS / 8; k += 32) {
      const int jj = k / (HS / 8), c8 = k % (HS / 8);
      const int64_t pos = c * kChunk + jj;
      const int64_t src = (pos < n ? pos : 0) * stride + 8 * c8;
      cp_async16(ks + jj * S::LD + 8 * c8, kc + src, pos < n);
      cp_async16(vs + jj * S::LD + 8 * c8, vc + src, pos < n);
    }
    cp_async_wait_all();
    __syncwarp();
    if (p.fuse_rope && c == last_chunk) {  // the new position, which the cache may not hold yet
      const int jj = int((n - 1) % kChunk);
      for (int d = lane; d < HS; d += 32) ks[jj * S::LD + d] = kn[d], vs[jj * S::LD + d] = vn[d];
      __syncwarp();
    }
    const bool valid = c * kChunk + lane < n;
    float sc[H];
#pragma unroll
    for (int g = 0; g < H; ++g) sc[g] = 0;
    const uint4* kr = reinterpret_cast<const uint4*>(ks + lane * S::LD);
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
        const float4 qa = q4[(g * HS) / 4 + 2 * d8], qb = q4[(g * HS) / 4 + 2 * d8 + 1];
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
    // The weights go through shared memory (broadcast reads, independent of each other) rather
    // than one shuffle per position and head on the critical path.
#pragma unroll
    for (int g = 0; g < H; ++g)
      if (g < nh) ew[g * kChunk + lane] = e[g];
    __syncwarp();
    const int n_here = int(min(int64_t(kChunk), n - c * kChunk));
#pragma unroll 4
    for (int jj = 0; jj < n_here; ++jj) {
      float v[D];
#pragma unroll
      for (int d = 0; d < D; ++d) v[d] = __half2float(vs[jj * S::LD + lane + 32 * d]);
#pragma unroll
      for (int g = 0; g < H; ++g) {
        if (g >= nh) break;
        const float w = ew[g * kChunk + jj];
#pragma unroll
        for (int d = 0; d < D; ++d) acc[g][d] = fmaf(w, v[d], acc[g][d]);
      }
    }
  }

  // The block's warps: (m, l, acc) per warp and head into shared memory (over the staging area).
  __syncthreads();
  const int rec = HS + 2;
  float* wp = reinterpret_cast<float*>(smem);  // (kWarps, hpb, rec)
#pragma unroll
  for (int g = 0; g < H; ++g) {
    if (g >= nh) break;
    float* r = wp + (warp * hpb + g) * rec;
    if (lane == 0) r[0] = m[g], r[1] = l[g];
#pragma unroll
    for (int d = 0; d < D; ++d) r[2 + lane + 32 * d] = acc[g][d];
  }
  __syncthreads();
  // Block result per head: thread k takes (head, dim) pairs.
  const bool single = n_active == 1;
  for (int k = threadIdx.x; k < nh * HS; k += blockDim.x) {
    const int g = k / HS, d = k % HS;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wp[(w * hpb + g) * rec]);
    float L = 0, A = 0;
    for (int w = 0; w < kWarps; ++w) {
      const float* r = wp + (w * hpb + g) * rec;
      const float f = r[0] == -INFINITY ? 0.0f : expf(r[0] - M);  // a warp without chunks: m = -inf
      L += r[1] * f;
      A += r[2 + d] * f;
    }
    if (single) {
      result[(h0 + g) * HS + d] = A / L;
    } else {
      float* o = partial + ((h0 + g) * blocks + b) * rec;
      if (d == 0) o[0] = M, o[1] = L;
      o[2 + d] = A;
    }
  }
  if (single) return;
  // Several blocks: the last one to finish combines them.
  __threadfence();
  __syncthreads();
  __shared__ int last;
  int* counter = counters + blockIdx.x * gridDim.z + blockIdx.z;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == n_active - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int k = threadIdx.x; k < nh * HS; k += blockDim.x) {
    const int g = k / HS, d = k % HS;
    const float* r = partial + (h0 + g) * blocks * rec;
    float M = -INFINITY;
    for (int s = 0; s < n_active; ++s) M = fmaxf(M, __ldcg(r + s * rec));
    float L = 0, A = 0;
#pragma unroll 4
    for (int s = 0; s < n_active; ++s) {
      const float f = expf(__ldcg(r + s * rec) - M);  // every active block saw a position: m finite
      L += __ldcg(r + s * rec + 1) * f;
      A += __ldcg(r + s * rec + 2 + d) * f;
    }
    result[(h0 + g) * HS + d] = A / L;
  }
  if (threadIdx.x == 0) *counter = 0;  // ready for the next call
}

size_t counter_bytes(int64_t NH) { return (size_t(NH) * sizeof(int) + 255) / 256 * 256; }

}  // namespace

int attention_decode_splits(int64_t KVH) {
  return int(std::clamp<int64_t>((sm_count() + KVH - 1) / KVH, 1, 64));
}

size_t attention_decode_scratch(int64_t NH, int64_t HS, int splits) {
  return counter_bytes(NH) + size_t(NH) * size_t(splits) * size_t(HS + 2) * sizeof(float);
}

void attention_decode(const AttentionParams& p, int splits, void* scratch, float* out, cudaStream_t s) {
  PRIMAL_CHECK(p.NH > 0 && p.KVH > 0 && p.NH % p.KVH == 0, "attention: {} query heads, {} KV heads", p.NH, p.KVH);
  PRIMAL_CHECK(p.HS % 32 == 0 && p.HS >= 32 && p.HS <= 256, "attention: head size {} (GPU: a multiple of 32, <= 256)",
               p.HS);
  PRIMAL_CHECK(p.T == 1 && splits >= 1, "attention_decode: T = {}, splits = {}", p.T, splits);
  if (p.fuse_rope) {
    const RopeQkvParams& r = p.rope;
    PRIMAL_CHECK(r.qkv == p.q && r.T == 1 && r.NH == p.NH && r.KVH == p.KVH && r.HS == p.HS && r.n_rot > 0 &&
                     r.n_rot <= p.HS && r.n_rot % 2 == 0 && r.cos_sin && r.pos0 == p.pos0 && r.k_cache == p.k_cache &&
                     r.v_cache == p.v_cache,
                 "attention_decode: RoPE parameters inconsistent with the attention's");
  }
  const int64_t G = p.NH / p.KVH, D = p.HS / 32;
  const int hpb = int(std::max<int64_t>(1, std::min<int64_t>({G, kMaxHeads, 32 / D})));
  const dim3 grid(unsigned(p.KVH), unsigned(splits), unsigned((G + hpb - 1) / hpb));
  int* counters = static_cast<int*>(scratch);
  float* part = reinterpret_cast<float*>(static_cast<uint8_t*>(scratch) + counter_bytes(p.NH));
#define PRIMAL_LAUNCH(D_)                                                                                    \
  {                                                                                                          \
    constexpr size_t smem = DecodeSmem<32 * D_>::bytes;                                                      \
    static const bool attr = [] {                                                                            \
      PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(attn_decode_kernel<D_>, cudaFuncAttributeMaxDynamicSharedMemorySize, \
                                             int(smem)));                                                    \
      return true;                                                                                           \
    }();                                                                                                     \
    (void)attr;                                                                                              \
    launch_kernel(attn_decode_kernel<D_>, grid, dim3(kWarps * 32), smem, s, p, splits, hpb, counters, part, out); \
  }
  switch (D) {
    case 1: PRIMAL_LAUNCH(1); break;
    case 2: PRIMAL_LAUNCH(2); break;
    case 3: PRIMAL_LAUNCH(3); break;
    case 4: PRIMAL_LAUNCH(4); break;
    case 5: PRIMAL_LAUNCH(5); break;
    case 6: PRIMAL_LAUNCH(6); break;
    case 7: PRIMAL_LAUNCH(7); break;
    default: PRIMAL_LAUNCH(8); break;
  }
#undef PRIMAL_LAUNCH
}

}  // namespace primal::cuda
