// The tensor-core flash attention forward (attention_mma.h).
//
// mma.sync.m16n8k16 (bf16 in, fp32 accumulators) fragments, lane = 4 g + t:
//   A (16 x 16, row major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16 x 8, k x n):      b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C (16 x 8):             c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// (the lower half of a 32-bit register holds the lower index). S = Q K^T takes B[dim][key] =
// K[key][dim]: a pair of dims of one key, contiguous in K's rows. O = P V takes A = P, whose
// fragments are exactly the accumulators of two adjacent S tiles, and B[key][dim] = V[key][dim]:
// a pair of keys of one dim, contiguous in V transposed (Vt), which is how V is staged.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "ops/cuda/attention_mma.h"
#include "ops/cuda/check.cuh"

namespace primal::cuda {
namespace {

constexpr int kRows = 64;    // queries per block (16 per warp)
constexpr int kKeys = 64;    // keys per tile
constexpr int kThreads = 128;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Inputs are fp32 (rounded to bf16 here) or bf16 (the bf16 mode's activations, taken as they are):
// pairs and quads of consecutive values as packed bf16.
__device__ __forceinline__ uint32_t load_pair(const float* p) {
  const float2 x = *reinterpret_cast<const float2*>(p);
  return pack_bf16(x.x, x.y);
}
__device__ __forceinline__ uint32_t load_pair(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint2 load_quad(const float* p) {
  const float4 x = *reinterpret_cast<const float4*>(p);
  return make_uint2(pack_bf16(x.x, x.y), pack_bf16(x.z, x.w));
}
__device__ __forceinline__ uint2 load_quad(const __nv_bfloat16* p) { return *reinterpret_cast<const uint2*>(p); }
__device__ __forceinline__ __nv_bfloat16 half_of(uint32_t w, int hi) {
  const uint16_t b = uint16_t(hi ? w >> 16 : w & 0xFFFFu);
  return *reinterpret_cast<const __nv_bfloat16*>(&b);
}
// Stores a row pair of the output.
__device__ __forceinline__ void store_pair(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store_pair(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// Stages rows r0 .. r0+63 (of stride `stride` values, HS = D contiguous) as bf16: row major into
// `rm` (pitch D + 8) and transposed into `tr` (pitch kKeys + 8), each when not null (the forward's
// K and V, the backward's tiles); rows past T are 0. The transposed copy has consecutive threads
// take consecutive rows (conflict-free 2-byte stores).
template <int D, class In>
__device__ __forceinline__ void stage_tile(const In* base, int64_t stride, int r0, int T, __nv_bfloat16* rm,
                                           __nv_bfloat16* tr) {
  constexpr int KP = D + 8, VP = kKeys + 8;
  for (int idx = int(threadIdx.x); rm && idx < kKeys * D / 4; idx += kThreads) {
    const int row = idx / (D / 4), c4 = idx % (D / 4);
    const uint2 w = r0 + row < T ? load_quad(base + int64_t(r0 + row) * stride + 4 * c4) : make_uint2(0u, 0u);
    *reinterpret_cast<uint2*>(rm + row * KP + 4 * c4) = w;
  }
  if (!tr) return;
  for (int idx = int(threadIdx.x); idx < kKeys * D / 4; idx += kThreads) {
    const int row = idx % kKeys, c4 = idx / kKeys;
    const uint2 w = r0 + row < T ? load_quad(base + int64_t(r0 + row) * stride + 4 * c4) : make_uint2(0u, 0u);
    tr[(4 * c4 + 0) * VP + row] = half_of(w.x, 0);
    tr[(4 * c4 + 1) * VP + row] = half_of(w.x, 1);
    tr[(4 * c4 + 2) * VP + row] = half_of(w.y, 0);
    tr[(4 * c4 + 3) * VP + row] = half_of(w.y, 1);
  }
}

// One block: queries q0 .. q0+63 of head h of sequence b. D = HS.
template <int D, class In, class Out>
__global__ void __launch_bounds__(kThreads) flash_forward_mma_kernel(const In* __restrict__ q,
                                                                    const In* __restrict__ k,
                                                                    const In* __restrict__ v, Out* out, float* lse,
                                                                    int T, int NH, int KVH, float scale_log2) {
  constexpr int KP = D + 8;      // Ks row pitch (bf16): conflict-free fragment loads
  constexpr int VP = kKeys + 8;  // Vt row pitch
  __shared__ __align__(16) __nv_bfloat16 Ks[kKeys * KP];
  __shared__ __align__(16) __nv_bfloat16 Vt[D * VP];
  const int qt = int(gridDim.x) - 1 - int(blockIdx.x);  // the longest rows first
  const int h = int(blockIdx.y), b = int(blockIdx.z), kvh = h / (NH / KVH);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  const int q0 = qt * kRows, r0 = q0 + 16 * warp + g, r1 = r0 + 8;
  const int64_t qstride = int64_t(NH) * D, kstride = int64_t(KVH) * D;
  const In* kb = k + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const In* vb = v + int64_t(b) * T * kstride + int64_t(kvh) * D;

  // The warp's 16 query rows as A fragments (bf16), straight from global memory.
  uint32_t qa[D / 16][4];
  {
    const In* qr0 = q + (int64_t(b) * T + r0) * qstride + int64_t(h) * D;
    const In* qr1 = qr0 + 8 * qstride;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int c = 16 * kk + 2 * t;
      qa[kk][0] = r0 < T ? load_pair(qr0 + c) : 0u, qa[kk][1] = r1 < T ? load_pair(qr1 + c) : 0u;
      qa[kk][2] = r0 < T ? load_pair(qr0 + c + 8) : 0u, qa[kk][3] = r1 < T ? load_pair(qr1 + c + 8) : 0u;
    }
  }
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // running max (base 2), lane-partial sums

  for (int j = 0; j <= qt; ++j) {
    const int k0 = j * kKeys;
    __syncthreads();  // the previous tile's fragments are consumed
    stage_tile<D>(kb, kstride, k0, T, Ks, nullptr);  // K row major
    stage_tile<D>(vb, kstride, k0, T, nullptr, Vt);  // V transposed
    __syncthreads();

    // S = Q K^T: 16 queries x 64 keys per warp, 8 tiles of 8 keys.
    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
      const __nv_bfloat16* kr = Ks + (8 * n + g) * KP + 2 * t;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(kr + 16 * kk);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(kr + 16 * kk + 8);
        mma_bf16(s[n], qa[kk], b0, b1);
      }
    }
    // Scale to base 2, mask (causal and the end of the sequence), the tile's row maxima.
    float mx0 = -INFINITY, mx1 = -INFINITY;
    const bool diag = j == qt || k0 + kKeys > T;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * scale_log2;
        if (diag) {
          const int key = k0 + 8 * n + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
          if (key > row || key >= T) x = -INFINITY;
        }
        s[n][e] = x;
        if (e < 2) mx0 = fmaxf(mx0, x);
        else mx1 = fmaxf(mx1, x);
      }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    // Every row has key 0 <= row in tile 0, so the maxima are finite from the first tile on
    // (rows past the end of the sequence see unmasked keys too; they are not written).
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float a0 = exp2f(m0 - n0), a1 = exp2f(m1 - n1);
    m0 = n0, m1 = n1;
    l0 *= a0, l1 *= a1;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] *= a0, o[n][1] *= a0, o[n][2] *= a1, o[n][3] *= a1;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
      s[n][0] = exp2f(s[n][0] - n0), s[n][1] = exp2f(s[n][1] - n0);
      s[n][2] = exp2f(s[n][2] - n1), s[n][3] = exp2f(s[n][3] - n1);
      l0 += s[n][0] + s[n][1], l1 += s[n][2] + s[n][3];
    }
    // O += P V, 16 keys per k-step: P's fragments are the accumulators of S tiles 2kk, 2kk + 1.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const __nv_bfloat16* vr = Vt + (8 * n + g) * VP + 16 * kk + 2 * t;
        mma_bf16(o[n], pa, *reinterpret_cast<const uint32_t*>(vr), *reinterpret_cast<const uint32_t*>(vr + 8));
      }
    }
  }

  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  constexpr float kLn2 = 0.6931471805599453f;
  const float i0 = 1.0f / l0, i1 = 1.0f / l1;
  if (r0 < T) {
    Out* orow = out + (int64_t(b) * T + r0) * qstride + int64_t(h) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) store_pair(orow + 8 * n + 2 * t, o[n][0] * i0, o[n][1] * i0);
    if (t == 0) lse[(int64_t(b) * NH + h) * T + r0] = (m0 + log2f(l0)) * kLn2;
  }
  if (r1 < T) {
    Out* orow = out + (int64_t(b) * T + r1) * qstride + int64_t(h) * D;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) store_pair(orow + 8 * n + 2 * t, o[n][2] * i1, o[n][3] * i1);
    if (t == 0) lse[(int64_t(b) * NH + h) * T + r1] = (m1 + log2f(l1)) * kLn2;
  }
}

// ---- backward ----------------------------------------------------------------------------------
//
// Three kernels, no atomics (every sum in a fixed order: bitwise identical from run to run):
//  1. Dv[b, h, t] = dout . out (fp32), stored in dq[b, t, h, 0], the one element of dq that only
//     kernel 3's block for that row reads and later overwrites;
//  2. dk, dv per (sequence, KV head, tile of 64 keys), 16 keys a warp, walking the query tiles
//     from the diagonal to the end for every query head of the group:
//       S^T = K Q^T, P^T = exp2(S^T log2e / sqrt(HS) - lse2), dV += P^T dO,
//       dP^T = V dO^T, dS^T = P^T (dP^T - Dv), dK += dS^T Q;
//  3. dq per (sequence, head, tile of 64 queries), 16 queries a warp, over the key tiles up to
//     the diagonal: S = Q K^T, P, dP = dO V^T, dS = P (dP - Dv), dQ += dS K.
// Operands are staged as bf16 in shared memory, row major where a product reads pairs along the
// head dimension and transposed where it reads pairs along the queries (Q^T, dO^T) or keys (K^T).
// 32 queries at a time in kernel 2 keep its four accumulator sets (dK, dV, S^T, dP^T) within the
// register file at HS 128.

constexpr int kSub = 32;  // queries per inner step of kernel 2

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class In>
__global__ void dv_rows_kernel(const float* dout, const In* out, float* dq, int64_t rows, int HS) {
  const int lane = int(threadIdx.x & 31);
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < rows;
       r += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    // r = (b T + t) NH + h: the row of q's layout.
    const float* a = dout + r * HS;
    const In* o = out + r * HS;
    float x = 0.0f;
    for (int d = lane; d < HS; d += 32) x += a[d] * to_f(o[d]);
    for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    if (lane == 0) dq[r * HS] = x;
  }
}

// The A fragment of rows row0 .. row0+15, k-step kk, of a row-major bf16 tile with pitch P.
__device__ __forceinline__ void load_a(uint32_t a[4], const __nv_bfloat16* tile, int P, int row0, int kk, int g,
                                       int t) {
  const __nv_bfloat16* p = tile + (row0 + g) * P + 16 * kk + 2 * t;
  a[0] = *reinterpret_cast<const uint32_t*>(p);
  a[1] = *reinterpret_cast<const uint32_t*>(p + 8 * P);
  a[2] = *reinterpret_cast<const uint32_t*>(p + 8);
  a[3] = *reinterpret_cast<const uint32_t*>(p + 8 * P + 8);
}

// The backward's paired products over the head dimension, for a warp's 16 rows row0_a.. of the
// row-major tiles A1, A2 against NT tiles of 8 rows row0_b.. of the row-major tiles B1, B2 (all
// pitch P): acc1[n] = A1 B1^T, acc2[n] = A2 B2^T (S and dP, or their transposes).
template <int D, int NT>
__device__ __forceinline__ void mma_pair(float (&acc1)[NT][4], float (&acc2)[NT][4], const __nv_bfloat16* A1,
                                         const __nv_bfloat16* A2, const __nv_bfloat16* B1, const __nv_bfloat16* B2,
                                         int P, int row0_a, int row0_b, int g, int t) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc1[n][e] = acc2[n][e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a1[4], a2[4];
    load_a(a1, A1, P, row0_a, kk, g, t);
    load_a(a2, A2, P, row0_a, kk, g, t);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int off = (row0_b + 8 * n + g) * P + 16 * kk + 2 * t;
      mma_bf16(acc1[n], a1, *reinterpret_cast<const uint32_t*>(B1 + off), *reinterpret_cast<const uint32_t*>(B1 + off + 8));
      mma_bf16(acc2[n], a2, *reinterpret_cast<const uint32_t*>(B2 + off), *reinterpret_cast<const uint32_t*>(B2 + off + 8));
    }
  }
}

template <int D>
constexpr size_t dkdv_smem() {
  return size_t(4 * kKeys * (D + 8) + 2 * D * (kKeys + 8)) * 2 + 2 * kKeys * sizeof(float);
}
template <int D>
constexpr size_t dq_smem() {
  return size_t(4 * kKeys * (D + 8) + D * (kKeys + 8)) * 2;
}

template <int D, class In>
__global__ void __launch_bounds__(kThreads) flash_dkdv_mma_kernel(const In* __restrict__ q,
                                                                 const In* __restrict__ k,
                                                                 const In* __restrict__ v,
                                                                 const float* __restrict__ dout,
                                                                 const float* __restrict__ lse, const float* dvec,
                                                                 float* dk, float* dv, int T, int NH, int KVH,
                                                                 bool per_head, float scale, float scale_log2) {
  constexpr int KP = D + 8, VP = kKeys + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* Ks = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* Vs = Ks + kKeys * KP;
  __nv_bfloat16* Qs = Vs + kKeys * KP;
  __nv_bfloat16* Os = Qs + kKeys * KP;  // dO
  __nv_bfloat16* Qt = Os + kKeys * KP;
  __nv_bfloat16* Ot = Qt + D * VP;
  float* lse2 = reinterpret_cast<float*>(Ot + D * VP);  // (64) lse log2e of the tile's queries
  float* dvs = lse2 + kKeys;                             // (64) Dv of the tile's queries
  const int kt = int(gridDim.x) - 1 - int(blockIdx.x);   // the tiles with the most queries first
  // blockIdx.y: a KV head whose group's query heads the block walks in order (dk, dv written), or
  // (per_head) one query head, whose share of dk, dv goes to its own slot of dk, dv laid out as q
  // (B, T, NH, HS), summed over the group by sum_group_kernel.
  const int G = NH / KVH, h_first = per_head ? int(blockIdx.y) : int(blockIdx.y) * G, n_heads = per_head ? 1 : G;
  const int kvh = h_first / G, b = int(blockIdx.z);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  const int k0 = kt * kKeys, n_qt = (T + kRows - 1) / kRows;
  const int64_t qstride = int64_t(NH) * D, kstride = int64_t(KVH) * D;
  const In* kb = k + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const In* vb = v + int64_t(b) * T * kstride + int64_t(kvh) * D;
  stage_tile<D>(kb, kstride, k0, T, Ks, nullptr);
  stage_tile<D>(vb, kstride, k0, T, Vs, nullptr);
  float dK[D / 8][4], dV[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dK[n][e] = dV[n][e] = 0.0f;
  const int key_a = k0 + 16 * warp + g, key_b = key_a + 8;  // this lane's two keys

  for (int hh = 0; hh < n_heads; ++hh) {
    const int h = h_first + hh;
    const In* qb = q + int64_t(b) * T * qstride + int64_t(h) * D;
    const float* ob = dout + int64_t(b) * T * qstride + int64_t(h) * D;
    for (int qt = kt; qt < n_qt; ++qt) {
      const int q0 = qt * kRows;
      __syncthreads();  // the previous tile is consumed (and K, V staged, the first time)
      stage_tile<D>(qb, qstride, q0, T, Qs, Qt);
      stage_tile<D>(ob, qstride, q0, T, Os, Ot);
      for (int i = int(threadIdx.x); i < kRows; i += kThreads) {
        const int tq = q0 + i;
        // Rows past the end: lse +inf, so P = 0 there.
        lse2[i] = tq < T ? lse[(int64_t(b) * NH + h) * T + tq] * 1.4426950408889634f : INFINITY;
        dvs[i] = tq < T ? dvec[((int64_t(b) * T + tq) * NH + h) * D] : 0.0f;
      }
      __syncthreads();
      const bool diag = qt == kt;
#pragma unroll
      for (int sub = 0; sub < kRows / kSub; ++sub) {
        const int s0 = sub * kSub;
        float st[kSub / 8][4], dpt[kSub / 8][4];  // S^T = K Q^T, dP^T = V dO^T
        mma_pair<D>(st, dpt, Ks, Vs, Qs, Os, KP, 16 * warp, s0, g, t);
        // P^T and dS^T in place (S^T's accumulators: rows = keys key_a / key_b, columns = queries).
#pragma unroll
        for (int n = 0; n < kSub / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = s0 + 8 * n + 2 * t + (e & 1), key = e < 2 ? key_a : key_b;
            float p = exp2f(st[n][e] * scale_log2 - lse2[qi]);
            if ((diag && q0 + qi < key) || key >= T) p = 0.0f;
            st[n][e] = p;
            dpt[n][e] = p * (dpt[n][e] - dvs[qi]);
          }
        // dV += P^T dO and dK += dS^T Q over the 32 queries (2 k-steps of 16).
#pragma unroll
        for (int kk = 0; kk < kSub / 16; ++kk) {
          const uint32_t pa[4] = {pack_bf16(st[2 * kk][0], st[2 * kk][1]), pack_bf16(st[2 * kk][2], st[2 * kk][3]),
                                  pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                                  pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3])};
          const uint32_t da[4] = {pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]), pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]),
                                  pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                                  pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
          for (int n = 0; n < D / 8; ++n) {
            const __nv_bfloat16* orr = Ot + (8 * n + g) * VP + s0 + 16 * kk + 2 * t;
            const __nv_bfloat16* qr = Qt + (8 * n + g) * VP + s0 + 16 * kk + 2 * t;
            mma_bf16(dV[n], pa, *reinterpret_cast<const uint32_t*>(orr), *reinterpret_cast<const uint32_t*>(orr + 8));
            mma_bf16(dK[n], da, *reinterpret_cast<const uint32_t*>(qr), *reinterpret_cast<const uint32_t*>(qr + 8));
          }
        }
      }
    }
  }
  // dk and dv rows key_a, key_b of KV head kvh (or of query head h_first's slot).
  const int64_t ostride = per_head ? qstride : kstride;
  float* dkb = dk + int64_t(b) * T * ostride + int64_t(per_head ? h_first : kvh) * D;
  float* dvb = dv + int64_t(b) * T * ostride + int64_t(per_head ? h_first : kvh) * D;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = 8 * n + 2 * t;
    if (key_a < T) {
      *reinterpret_cast<float2*>(dkb + int64_t(key_a) * ostride + c) = make_float2(dK[n][0] * scale, dK[n][1] * scale);
      *reinterpret_cast<float2*>(dvb + int64_t(key_a) * ostride + c) = make_float2(dV[n][0], dV[n][1]);
    }
    if (key_b < T) {
      *reinterpret_cast<float2*>(dkb + int64_t(key_b) * ostride + c) = make_float2(dK[n][2] * scale, dK[n][3] * scale);
      *reinterpret_cast<float2*>(dvb + int64_t(key_b) * ostride + c) = make_float2(dV[n][2], dV[n][3]);
    }
  }
}

template <int D, class In>
__global__ void __launch_bounds__(kThreads) flash_dq_mma_kernel(const In* __restrict__ q,
                                                               const In* __restrict__ k,
                                                               const In* __restrict__ v,
                                                               const float* __restrict__ dout,
                                                               const float* __restrict__ lse, float* dq, int T, int NH,
                                                               int KVH, float scale, float scale_log2) {
  constexpr int KP = D + 8, VP = kKeys + 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __nv_bfloat16* Qs = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* Os = Qs + kRows * KP;  // dO
  __nv_bfloat16* Ks = Os + kRows * KP;
  __nv_bfloat16* Vs = Ks + kKeys * KP;
  __nv_bfloat16* Kt = Vs + kKeys * KP;
  const int qt = int(gridDim.x) - 1 - int(blockIdx.x);
  const int h = int(blockIdx.y), b = int(blockIdx.z), kvh = h / (NH / KVH);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  const int q0 = qt * kRows, r0 = q0 + 16 * warp + g, r1 = r0 + 8;
  const int64_t qstride = int64_t(NH) * D, kstride = int64_t(KVH) * D;
  const In* qb = q + int64_t(b) * T * qstride + int64_t(h) * D;
  const float* ob = dout + int64_t(b) * T * qstride + int64_t(h) * D;
  const In* kb = k + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const In* vb = v + int64_t(b) * T * kstride + int64_t(kvh) * D;
  float* dqb = dq + int64_t(b) * T * qstride + int64_t(h) * D;
  // This lane's rows: lse in base 2 and Dv (read from dq before anything overwrites it: only
  // this block writes these rows of dq, at its end).
  const float l2a = r0 < T ? lse[(int64_t(b) * NH + h) * T + r0] * 1.4426950408889634f : INFINITY;
  const float l2b = r1 < T ? lse[(int64_t(b) * NH + h) * T + r1] * 1.4426950408889634f : INFINITY;
  const float dva = r0 < T ? dqb[int64_t(r0) * qstride] : 0.0f;
  const float dvb = r1 < T ? dqb[int64_t(r1) * qstride] : 0.0f;
  stage_tile<D>(qb, qstride, q0, T, Qs, nullptr);
  stage_tile<D>(ob, qstride, q0, T, Os, nullptr);
  float dQ[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dQ[n][0] = dQ[n][1] = dQ[n][2] = dQ[n][3] = 0.0f;

  for (int j = 0; j <= qt; ++j) {
    const int k0 = j * kKeys;
    __syncthreads();
    stage_tile<D>(kb, kstride, k0, T, Ks, Kt);
    stage_tile<D>(vb, kstride, k0, T, Vs, nullptr);
    __syncthreads();
    float s[kKeys / 8][4], dp[kKeys / 8][4];  // S = Q K^T, dP = dO V^T
    mma_pair<D>(s, dp, Qs, Os, Ks, Vs, KP, 16 * warp, 0, g, t);
    const bool diag = j == qt || k0 + kKeys > T;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * n + 2 * t + (e & 1), row = e < 2 ? r0 : r1;
        float p = exp2f(s[n][e] * scale_log2 - (e < 2 ? l2a : l2b));
        if (diag && (key > row || key >= T)) p = 0.0f;
        s[n][e] = p * (dp[n][e] - (e < 2 ? dva : dvb));  // dS
      }
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint32_t da[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const __nv_bfloat16* kr = Kt + (8 * n + g) * VP + 16 * kk + 2 * t;
        mma_bf16(dQ[n], da, *reinterpret_cast<const uint32_t*>(kr), *reinterpret_cast<const uint32_t*>(kr + 8));
      }
    }
  }
  __syncthreads();  // every lane of the block has read its Dv (from dq) before any row is written
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = 8 * n + 2 * t;
    if (r0 < T)
      *reinterpret_cast<float2*>(dqb + int64_t(r0) * qstride + c) = make_float2(dQ[n][0] * scale, dQ[n][1] * scale);
    if (r1 < T)
      *reinterpret_cast<float2*>(dqb + int64_t(r1) * qstride + c) = make_float2(dQ[n][2] * scale, dQ[n][3] * scale);
  }
}

// dst[b, t, kvh, :] = sum over hh < G, in order, of src[b, t, kvh G + hh, :] (src laid out as q).
__global__ void sum_group_kernel(const float* src, float* dst, int64_t rows, int G, int HS) {
  // rows = B T KVH; a thread per 4 values of a row.
  const int64_t per = HS / 4, total = rows * per;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / per, c = k - r * per;
    const float4* p = reinterpret_cast<const float4*>(src + r * G * HS) + c;
    float4 acc = p[0];
    for (int hh = 1; hh < G; ++hh) {
      const float4 x = p[hh * per];
      acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
    }
    reinterpret_cast<float4*>(dst + r * HS)[c] = acc;
  }
}

template <int D, class In>
void backward(float* dq, float* dk, float* dv, const float* dout, const In* out, const In* q, const In* k,
              const In* v, const float* lse, int64_t B, int64_t T, int64_t NH, int64_t KVH, float* ws,
              size_t ws_floats, cudaStream_t s) {
  const float scale = float(1.0 / std::sqrt(double(D))), scale_log2 = float(1.4426950408889634 / std::sqrt(double(D)));
  const int64_t rows = B * T * NH;
  dv_rows_kernel<<<unsigned(std::min<int64_t>((rows + 7) / 8, 16 * int64_t(sm_count()))), 256, 0, s>>>(
      dout, out, dq, rows, D);
  PRIMAL_CUDA_CHECK_LAUNCH();
  // Opt in to more than 48 KB of shared memory (once per instantiation; cheap to repeat).
  constexpr size_t s1 = dkdv_smem<D>(), s2 = dq_smem<D>();
  PRIMAL_CUDA_CHECK(
      cudaFuncSetAttribute(flash_dkdv_mma_kernel<D, In>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(s1)));
  PRIMAL_CUDA_CHECK(
      cudaFuncSetAttribute(flash_dq_mma_kernel<D, In>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(s2)));
  const unsigned tiles = unsigned((T + kRows - 1) / kRows);
  // A block per (key tile, query head) when the group has several heads and the workspace holds
  // their shares: a block per KV head walks all G heads of its group in turn (a 6-head group at T
  // 1024 gave 256 blocks, the first ones with 96 query tiles to walk).
  const int64_t nq = B * T * NH * D;
  const bool per_head = NH > KVH && ws && ws_floats >= size_t(2 * nq);
  float* out_k = per_head ? ws : dk;
  float* out_v = per_head ? ws + nq : dv;
  flash_dkdv_mma_kernel<D, In><<<dim3(tiles, unsigned(per_head ? NH : KVH), unsigned(B)), kThreads, s1, s>>>(
      q, k, v, dout, lse, dq, out_k, out_v, int(T), int(NH), int(KVH), per_head, scale, scale_log2);
  PRIMAL_CUDA_CHECK_LAUNCH();
  if (per_head) {
    const int64_t rows = B * T * KVH;
    const int blocks = int(std::min<int64_t>((rows * D / 4 + 255) / 256, 16 * int64_t(sm_count())));
    sum_group_kernel<<<blocks, 256, 0, s>>>(out_k, dk, rows, int(NH / KVH), int(D));
    PRIMAL_CUDA_CHECK_LAUNCH();
    sum_group_kernel<<<blocks, 256, 0, s>>>(out_v, dv, rows, int(NH / KVH), int(D));
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
  flash_dq_mma_kernel<D, In><<<dim3(tiles, unsigned(NH), unsigned(B)), kThreads, s2, s>>>(
      q, k, v, dout, lse, dq, int(T), int(NH), int(KVH), scale, scale_log2);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool attention_mma_supports(int64_t HS) { return HS == 32 || HS == 64 || HS == 96 || HS == 128; }

namespace {

void check_args(const void* a, const void* b, const void* c, const void* d, const void* e, int64_t B, int64_t T,
                int64_t NH, int64_t KVH, int64_t HS, const char* what) {
  PRIMAL_CHECK(a && b && c && d && e, "{}: a null pointer", what);
  PRIMAL_CHECK(B > 0 && T > 0 && KVH > 0 && NH % KVH == 0, "{}: B {} T {} NH {} KVH {}", what, B, T, NH, KVH);
  PRIMAL_CHECK(attention_mma_supports(HS), "{}: head size {} (32, 64, 96, 128)", what, HS);
  PRIMAL_CHECK(T < (int64_t(1) << 30) && B < 65536 && NH < 65536, "{}: B {} T {} NH {} too large", what, B, T, NH);
}

template <class In, class Out>
void forward(Out* out, float* lse, const In* q, const In* k, const In* v, int64_t B, int64_t T, int64_t NH,
             int64_t KVH, int64_t HS, cudaStream_t s) {
  check_args(out, lse, q, k, v, B, T, NH, KVH, HS, "attention_forward_mma");
  const dim3 grid(unsigned((T + kRows - 1) / kRows), unsigned(NH), unsigned(B));
  const float scale_log2 = float(1.4426950408889634 / std::sqrt(double(HS)));
#define PRIMAL_LAUNCH(D)                                                                            \
  flash_forward_mma_kernel<D, In, Out><<<grid, kThreads, 0, s>>>(q, k, v, out, lse, int(T), int(NH), int(KVH), \
                                                                scale_log2)
  switch (HS) {
    case 32: PRIMAL_LAUNCH(32); break;
    case 64: PRIMAL_LAUNCH(64); break;
    case 96: PRIMAL_LAUNCH(96); break;
    default: PRIMAL_LAUNCH(128); break;
  }
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

template <class In>
void backward_any(float* dq, float* dk, float* dv, const float* dout, const In* out, const In* q, const In* k,
                  const In* v, const float* lse, int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS,
                  cudaStream_t s, float* ws, size_t ws_floats) {
  check_args(dq, dk, dv, dout, lse, B, T, NH, KVH, HS, "attention_backward_mma");
  check_args(out, q, k, v, lse, B, T, NH, KVH, HS, "attention_backward_mma");
  switch (HS) {
    case 32: backward<32>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s); break;
    case 64: backward<64>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s); break;
    case 96: backward<96>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s); break;
    default: backward<128>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s); break;
  }
}

const __nv_bfloat16* bf(const uint16_t* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

}  // namespace

void attention_forward_mma(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                           int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s) {
  forward(out, lse, q, k, v, B, T, NH, KVH, HS, s);
}

void attention_forward_mma(uint16_t* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                           int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s) {
  forward(reinterpret_cast<__nv_bfloat16*>(out), lse, bf(q), bf(k), bf(v), B, T, NH, KVH, HS, s);
}

void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* q,
                            const float* k, const float* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                            int64_t KVH, int64_t HS, cudaStream_t s, float* ws, size_t ws_floats) {
  backward_any(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, HS, s, ws, ws_floats);
}

void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const uint16_t* out, const uint16_t* q,
                            const uint16_t* k, const uint16_t* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                            int64_t KVH, int64_t HS, cudaStream_t s, float* ws, size_t ws_floats) {
  backward_any(dq, dk, dv, dout, bf(out), bf(q), bf(k), bf(v), lse, B, T, NH, KVH, HS, s, ws, ws_floats);
}

}  // namespace primal::cuda
