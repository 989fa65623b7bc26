// The tensor-core flash attention, forward and backward (attention_mma.h).
//
// Fragments and loads: mma.cuh. S = Q K^T takes B[dim][key] = K[key][dim] from K's row-major
// tile (load_b_nk); O = P V takes A = P, whose fragments are exactly the accumulators of two
// adjacent S tiles, and B[key][dim] = V[key][dim] by the transposing load (load_b_kn). Every
// operand is staged once, row major, in shared memory (bf16, rows padded by 16 bytes) by cp.async
// straight from the bf16 activations, the next tile's copies in flight while the current one is
// multiplied (two stages).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "ops/cuda/attention_mma.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/mma.cuh"

namespace primal::cuda {
namespace {

using bf16 = __nv_bfloat16;
using mma::load_a;
using mma::load_b_kn;
using mma::load_b_nk;
using mma::mma_bf16;
using mma::pack_bf16;

constexpr int kRows = 64;    // queries per block (16 per warp)
constexpr int kKeys = 64;    // keys per tile
constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// A staged tile: 64 rows of D bf16, pitch D + 8.
template <int D>
constexpr int tile_elems() {
  return kKeys * (D + 8);
}

// Issues the copies of rows r0 .. r0+ROWS-1 (row stride `stride` elements, D contiguous) into dst
// by a block of THREADS threads; rows at or past T are zero-filled.
template <int D, int ROWS = kKeys, int THREADS = kThreads>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* base, int64_t stride, int r0, int T) {
  constexpr int P = D + 8, chunks = D / 8;  // 16-byte chunks per row
  for (int c = int(threadIdx.x); c < ROWS * chunks; c += THREADS) {
    const int row = c / chunks, col = 8 * (c % chunks);
    const bool ok = r0 + row < T;
    cp_async16(dst + row * P + col, base + (ok ? int64_t(r0 + row) * stride + col : 0), ok);
  }
}

// The A fragment of k-step kk (columns 16 kk .. 16 kk + 15) from the fp32 accumulators of the two
// 8-column mma tiles 2 kk, 2 kk + 1 (their layouts coincide), rounded to bf16: P or dS as an operand.
template <int NT>
__device__ __forceinline__ void acc_to_a(uint32_t a[4], const float (&acc)[NT][4], int kk) {
  a[0] = pack_bf16(acc[2 * kk][0], acc[2 * kk][1]), a[1] = pack_bf16(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = pack_bf16(acc[2 * kk + 1][0], acc[2 * kk + 1][1]), a[3] = pack_bf16(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}
// acc (16 x D) += A (16 x 16) B, B being rows k0 .. k0+15 of a row-major [k][n] tile (pitch P):
// O += P V, dV += P^T dO, dK += dS^T Q, dQ += dS K.
template <int D>
__device__ __forceinline__ void mma_rows_kn(float (&acc)[D / 8][4], const uint32_t a[4], const bf16* tile, int P, int k0,
                                            int lane) {
#pragma unroll
  for (int n = 0; n < D / 8; n += 2) {
    uint32_t b[4];
    load_b_kn(b, tile, P, k0, 8 * n, lane);
    mma_bf16(acc[n], a, b[0], b[1]);
    mma_bf16(acc[n + 1], a, b[2], b[3]);
  }
}

// The key/value pipeline of the forward and dq kernels, at iteration j of 0 .. last: issues the
// copies of tile j + 1 into the other stage (which iteration j - 1 consumed before its closing
// barrier) unless j is the last, then waits until tile j has landed for every thread.
template <int D, int THREADS = kThreads>
__device__ __forceinline__ void kv_pipeline_step(bf16* Ks, bf16* Vs, const bf16* kb, const bf16* vb, int64_t kstride,
                                                 int j, int last, int T) {
  constexpr int TE = tile_elems<D>();
  if (j < last) {
    load_tile<D, kKeys, THREADS>(Ks + ((j + 1) & 1) * TE, kb, kstride, (j + 1) * kKeys, T);
    load_tile<D, kKeys, THREADS>(Vs + ((j + 1) & 1) * TE, vb, kstride, (j + 1) * kKeys, T);
    cp_async_commit();
    cp_async_wait<1>();
  } else {
    cp_async_wait<0>();
  }
  __syncthreads();
}

// 2^x by the multi-function unit alone (ex2.approx.ftz: one instruction where exp2f adds three for
// results below 2^-126): the same value for every result a float holds normally; a p below 2^-126 is 0
// instead of a subnormal, which no sum here can tell from 0 (every row's sum is at least 1, and a
// subnormal p rounds to nothing against the values it is added to).
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void store_pair(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void store_pair(bf16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// One block of W warps: queries q0 .. q0+16W-1 of head h of sequence b. D = HS. Shared memory: Q,
// then two stages of K and V. W = 8 shares each staged key tile between twice the queries of W = 4
// (half the copies per product) and keeps twice the warps resident; the rows of a block below a
// tile's keys see them masked (p = 0, the running sums unchanged): every row's arithmetic is the
// same for either W, bit for bit.
template <int D, int W>
constexpr size_t forward_smem() {
  return size_t((16 * W + 4 * kKeys) * (D + 8)) * 2;
}

// With W = 8 two blocks share a multiprocessor (16 warps, where one block of 178 registers a thread
// left 8): at most 128 registers, so the warp's Q fragments are read from shared memory for every key
// tile instead of being held (the same values, the same bits).
template <int D, int W, class Out>
__global__ void __launch_bounds__(32 * W, W == 8 ? 2 : 1) flash_forward_mma_kernel(const bf16* __restrict__ q,
                                                                  const bf16* __restrict__ k,
                                                                  const bf16* __restrict__ v, Out* out, float* lse,
                                                                  int T, int NH, int KVH, float scale_log2) {
  constexpr int P = D + 8, TE = tile_elems<D>(), ROWS = 16 * W, THREADS = 32 * W;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + ROWS * P;  // stage j & 1 at Ks + (j & 1) TE
  bf16* Vs = Ks + 2 * TE;
  const int qt = int(gridDim.x) - 1 - int(blockIdx.x);  // the longest rows first
  const int h = int(blockIdx.y), b = int(blockIdx.z), kvh = h / (NH / KVH);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  const int q0 = qt * ROWS, r0 = q0 + 16 * warp + g, r1 = r0 + 8;
  // The last key tile: the one holding the block's last row, or the sequence's last key.
  const int last = min(q0 + ROWS - 1, T - 1) / kKeys;
  const int64_t qstride = int64_t(NH) * D, kstride = int64_t(KVH) * D;
  const bf16* kb = k + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const bf16* vb = v + int64_t(b) * T * kstride + int64_t(kvh) * D;

  load_tile<D, ROWS, THREADS>(Qs, q + int64_t(b) * T * qstride + int64_t(h) * D, qstride, q0, T);
  load_tile<D, kKeys, THREADS>(Ks, kb, kstride, 0, T);
  load_tile<D, kKeys, THREADS>(Vs, vb, kstride, 0, T);
  cp_async_commit();

  constexpr bool kHoldQ = W != 8;
  uint32_t qa[kHoldQ ? D / 16 : 1][4];  // the warp's 16 query rows as A fragments (held: kHoldQ)
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // running max (base 2), lane-partial sums

  for (int j = 0; j <= last; ++j) {
    const int k0 = j * kKeys;
    kv_pipeline_step<D, THREADS>(Ks, Vs, kb, vb, kstride, j, last, T);
    const bf16* Kc = Ks + (j & 1) * TE;
    const bf16* Vc = Vs + (j & 1) * TE;
    if (kHoldQ && j == 0) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) load_a(qa[kHoldQ ? kk : 0], Qs, P, 16 * warp, 16 * kk, lane);
    }

    // A warp whose rows all lie before the tile's first key would see it wholly masked (p = 0, its
    // sums unchanged, bit for bit): it skips the tile (with 128-row blocks, half the warps on the
    // block's last tile).
    if (k0 < q0 + 16 * (warp + 1)) {
      // S = Q K^T: 16 queries x 64 keys per warp, 8 tiles of 8 keys.
      float s[kKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        if (!kHoldQ) load_a(qa[0], Qs, P, 16 * warp, 16 * kk, lane);
        const uint32_t* qf = qa[kHoldQ ? kk : 0];
#pragma unroll
        for (int n = 0; n < kKeys / 8; n += 2) {
          uint32_t kb4[4];
          load_b_nk(kb4, Kc, P, 8 * n, 16 * kk, lane);
          mma_bf16(s[n], qf, kb4[0], kb4[1]);
          mma_bf16(s[n + 1], qf, kb4[2], kb4[3]);
        }
      }
      // Scale to base 2, mask (causal and the end of the sequence), the tile's row maxima.
      float mx0 = -INFINITY, mx1 = -INFINITY;
      const bool diag = k0 + kKeys - 1 > q0 || k0 + kKeys > T;  // a key past the block's first row or the end
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
      const float a0 = exp2_ftz(m0 - n0), a1 = exp2_ftz(m1 - n1);
      m0 = n0, m1 = n1;
      l0 *= a0, l1 *= a1;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) o[n][0] *= a0, o[n][1] *= a0, o[n][2] *= a1, o[n][3] *= a1;
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
        s[n][0] = exp2_ftz(s[n][0] - n0), s[n][1] = exp2_ftz(s[n][1] - n0);
        s[n][2] = exp2_ftz(s[n][2] - n1), s[n][3] = exp2_ftz(s[n][3] - n1);
        l0 += s[n][0] + s[n][1], l1 += s[n][2] + s[n][3];
      }
      // O += P V, 16 keys per k-step: P's fragments are the accumulators of S tiles 2kk, 2kk + 1.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t pa[4];
        acc_to_a(pa, s, kk);
        mma_rows_kn<D>(o, pa, Vc, P, 16 * kk, lane);
      }
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
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
//  1. per query row: Dv = dout . out (fp32), lse in base 2, and dout rounded to bf16, into the
//     workspace (BwdWs) where the other two stage them with cp.async;
//  2. dk, dv per (sequence, KV head, tile of 64 keys) or per query head (GQA shares, summed after
//     the kernel), 16 keys a warp, walking the query tiles from the diagonal to the end for
//     every query head of the group (or the one):
//       S^T = K Q^T, P^T = exp2(S^T log2e / sqrt(HS) - lse2), dV += P^T dO,
//       dP^T = V dO^T, dS^T = P^T (dP^T - Dv), dK += dS^T Q;
//  3. dq per (sequence, head, tile of 64 queries), 16 queries a warp, over the key tiles up to
//     the diagonal: S = Q K^T, P, dP = dO V^T, dS = P (dP - Dv), dQ += dS K.
// Every operand is one row-major tile: the products that read pairs along the queries (P^T dO,
// dS^T Q) or keys (dS K) take them by the transposing load. 32 queries at a time in kernel 2
// keep its four accumulator sets (dK, dV, S^T, dP^T) within the register file at HS 128.

constexpr int kSub = 32;  // queries per inner step of kernel 2

// The backward's workspace (floats, 16-byte aligned parts): dout in bf16 (B, T, NH, HS), lse2
// and Dv (B, NH, Tp) with Tp = T rounded up to 4 (each row 16-byte aligned); then, optionally,
// each query head's share of dk and dv (2 B T NH HS).
struct BwdWs {
  bf16* dob = nullptr;
  float* lse2 = nullptr;
  float* dvec = nullptr;
  int Tp = 0;
};
int64_t padded_t(int64_t T) { return (T + 3) / 4 * 4; }
int64_t ws_base_floats(int64_t B, int64_t T, int64_t NH, int64_t HS) {
  return B * T * NH * HS / 2 + 2 * B * NH * padded_t(T);
}
BwdWs carve(float* ws, int64_t B, int64_t T, int64_t NH, int64_t HS) {
  BwdWs w;
  w.dob = reinterpret_cast<bf16*>(ws);
  w.lse2 = ws + B * T * NH * HS / 2;
  w.dvec = w.lse2 + B * NH * padded_t(T);
  w.Tp = int(padded_t(T));
  return w;
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }

// A warp per row r = (b T + t) NH + h of q's layout. An fp32 dout is rounded into the workspace's
// bf16 copy; a bf16 one is that copy already (w.dob points at it), and only D and lse2 are written.
// (HS a template argument: the row's HS / 32 loads of a lane unrolled, all in flight at once; the
// same sums in the same order)
template <class In, int HS, class DIn>
__global__ void bwd_prep_kernel(const DIn* dout, const In* out, const float* lse, BwdWs w, int64_t rows, int T,
                                int NH) {
  const int lane = int(threadIdx.x & 31);
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < rows;
       r += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const DIn* a = dout + r * HS;
    const In* o = out + r * HS;
    float x = 0.0f;
#pragma unroll
    for (int d = lane; d < HS; d += 32) {
      const float ad = to_f(a[d]);
      x += ad * to_f(o[d]);
      if constexpr (std::is_same_v<DIn, float>) w.dob[r * HS + d] = __float2bfloat16_rn(ad);
    }
    for (int off = 16; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
    if (lane == 0) {
      const int64_t h = r % NH, bt = r / NH, b = bt / T, tq = bt - b * T;
      const int64_t i = (b * NH + h) * w.Tp + tq;
      w.dvec[i] = x;
      w.lse2[i] = lse[(b * NH + h) * T + tq] * kLog2e;
    }
  }
}

// Issues the copies of 64 values of a (B, NH, Tp) row from q0 (chunks past Tp zero-filled).
__device__ __forceinline__ void load_row64(float* dst, const float* row, int q0, int Tp, int c) {
  const bool ok = q0 + 4 * c < Tp;
  cp_async16(dst + 4 * c, row + (ok ? q0 + 4 * c : 0), ok);
}

// The backward's paired products over the head dimension, for a warp's 16 rows m0.. of the
// row-major tiles A1, A2 against NT tiles of 8 rows n0.. of the row-major tiles B1, B2 (all pitch
// P): acc1 = A1 B1^T, acc2 = A2 B2^T (S and dP, or their transposes), each summed over the head
// dimension in order.
template <int D, int NT>
__device__ __forceinline__ void mma_pair(float (&acc1)[NT][4], float (&acc2)[NT][4], const bf16* A1, const bf16* A2,
                                         const bf16* B1, const bf16* B2, int P, int m0, int n0, int lane) {
#pragma unroll
  for (int n = 0; n < NT; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc1[n][e] = acc2[n][e] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a1[4], a2[4];
    load_a(a1, A1, P, m0, 16 * kk, lane);
    load_a(a2, A2, P, m0, 16 * kk, lane);
#pragma unroll
    for (int n = 0; n < NT; n += 2) {
      uint32_t b1[4], b2[4];
      load_b_nk(b1, B1, P, n0 + 8 * n, 16 * kk, lane);
      load_b_nk(b2, B2, P, n0 + 8 * n, 16 * kk, lane);
      mma_bf16(acc1[n], a1, b1[0], b1[1]);
      mma_bf16(acc2[n], a2, b2[0], b2[1]);
      mma_bf16(acc1[n + 1], a1, b1[2], b1[3]);
      mma_bf16(acc2[n + 1], a2, b2[2], b2[3]);
    }
  }
}

// Where the backward writes bf16 gradients (attention_mma.h AttentionGradsBf16, device pointers):
// each null pointer's gradient goes to its fp32 buffer instead.
struct Bf16Grads {
  bf16 *dq = nullptr, *dk = nullptr, *dv = nullptr;
  int64_t ldq = 0, ldkv = 0;    // row strides per token (elements)
  const float* cs = nullptr;    // (T, D / 2, 2) cos, sin per position (rope_table), or null: no rotation
  bool neox = false;
};

// rope_rotate's inverse rotation of the pair (a, b) by the table's (c, sn): its own function, the same
// bits.
__device__ __forceinline__ void rotate_back(float a, float b, float c, float sn, float& r0, float& r1) {
  rope_rotate_pair(a, b, c, -sn, r0, r1);
}

// One row of a warp's (16 x D) accumulators, the values acc[n][e0], acc[n][e0 + 1] of columns 8n + 2t,
// 8n + 2t + 1 (e0 = 0: the lane's first row, 2: its second), times scale, written to row (bf16) as
// store_pair would write them, rotated back first when cs (the row's position's D / 2 (cos, sin)
// pairs) is given: a thread holds both values of every pair it writes (NeoX: columns c, c + D/2 in
// accumulator tiles n, n + D/16; else c, c + 1).
template <int D>
__device__ __forceinline__ void store_row_bf16(bf16* row, const float (&acc)[D / 8][4], int e0, float scale, int t,
                                               const float* cs, bool neox) {
  if (!cs) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) store_pair(row + 8 * n + 2 * t, acc[n][e0] * scale, acc[n][e0 + 1] * scale);
  } else if (neox) {
#pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      float lo[2], hi[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int i = 8 * n + 2 * t + e;
        const float2 c = *reinterpret_cast<const float2*>(cs + 2 * i);
        rotate_back(acc[n][e0 + e] * scale, acc[n + D / 16][e0 + e] * scale, c.x, c.y, lo[e], hi[e]);
      }
      store_pair(row + 8 * n + 2 * t, lo[0], lo[1]);
      store_pair(row + D / 2 + 8 * n + 2 * t, hi[0], hi[1]);
    }
  } else {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int i = 4 * n + t;
      float r0, r1;
      const float2 c = *reinterpret_cast<const float2*>(cs + 2 * i);
      rotate_back(acc[n][e0] * scale, acc[n][e0 + 1] * scale, c.x, c.y, r0, r1);
      store_pair(row + 8 * n + 2 * t, r0, r1);
    }
  }
}

// The table rows (D floats: D / 2 cos, sin pairs) of positions p0 .. p0 + 63, staged by cp.async in
// two pipeline stages that the last tile leaves free (rows 0 .. 31 in a, 32 .. 63 in b, pitch D + 4
// floats: 128 D + 512 bytes, within a stage's 128 D + 1024), issued before that tile's products: the
// epilogue reads them from shared memory instead of 2 D scattered global loads a thread once the
// loop is done (those added 33 us to a qwen-shaped dq kernel of 268).
template <int D>
__device__ __forceinline__ void stage_table(float* a, float* b, const float* cs, int p0, int T) {
  constexpr int chunks = D / 4, half = kRows / 2;
  for (int c = int(threadIdx.x); c < kRows * chunks; c += kThreads) {
    const int row = c / chunks, col = 4 * (c % chunks);
    const bool ok = p0 + row < T;
    cp_async16((row < half ? a : b) + (row % half) * (D + 4) + col, cs + (ok ? int64_t(p0 + row) * D + col : 0), ok);
  }
  cp_async_commit();
}
template <int D>
__device__ __forceinline__ const float* staged_row(const float* a, const float* b, int row) {
  return (row < kRows / 2 ? a : b) + (row % (kRows / 2)) * (D + 4);
}

// One unit of a token's group sum: dst = sum over hh < G, in head order, of src[hh HS + c ..] (src:
// the token's G shares of one KV head), 4 values from c (NeoX rotation: the 4 pairs c .. c + 3 and
// HS / 2 + c .. HS / 2 + c + 3), to fp32 dst32 or as bf16 to dst16, rotated back where cs (the token's
// position's table row).
template <int D>
__device__ __forceinline__ void group_sum_unit(const float* src, int G, int c, float* dst32, bf16* dst16,
                                               const float* cs, bool neox) {
  auto sum4 = [&](int col, float v[4]) {
    float4 acc = *reinterpret_cast<const float4*>(src + col);
    for (int hh = 1; hh < G; ++hh) {
      const float4 x = *reinterpret_cast<const float4*>(src + hh * D + col);
      acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
    }
    v[0] = acc.x, v[1] = acc.y, v[2] = acc.z, v[3] = acc.w;
  };
  float a[4];
  sum4(c, a);
  if (dst32) {
    *reinterpret_cast<float4*>(dst32 + c) = make_float4(a[0], a[1], a[2], a[3]);
  } else if (cs && neox) {
    float b[4], lo[4], hi[4];
    sum4(c + D / 2, b);
    for (int e = 0; e < 4; ++e) rotate_back(a[e], b[e], cs[2 * (c + e)], cs[2 * (c + e) + 1], lo[e], hi[e]);
    store_pair(dst16 + c, lo[0], lo[1]), store_pair(dst16 + c + 2, lo[2], lo[3]);
    store_pair(dst16 + D / 2 + c, hi[0], hi[1]), store_pair(dst16 + D / 2 + c + 2, hi[2], hi[3]);
  } else if (cs) {  // pairs (c, c + 1), (c + 2, c + 3): frequencies c / 2, c / 2 + 1
    float r[4];
    rotate_back(a[0], a[1], cs[c], cs[c + 1], r[0], r[1]);
    rotate_back(a[2], a[3], cs[c + 2], cs[c + 3], r[2], r[3]);
    store_pair(dst16 + c, r[0], r[1]), store_pair(dst16 + c + 2, r[2], r[3]);
  } else {
    store_pair(dst16 + c, a[0], a[1]), store_pair(dst16 + c + 2, a[2], a[3]);
  }
}

// dst = the group sums of the per-head shares src (B, T, NH, HS): sum over hh < G, in head order, of
// src[b, t, kvh G + hh, :], to fp32 dst32 (B, T, KVH, HS) or to bf16 dst16 (rows ld apart a token),
// rotated back where cs. A thread per group_sum_unit; rows = B T KVH.
template <int D>
__global__ void sum_group_kernel(const float* src, float* dst32, bf16* dst16, int64_t ld, int64_t rows, int G, int KVH,
                                 int T, const float* cs, bool neox) {
  const int per = dst16 && cs && neox ? D / 8 : D / 4;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < rows * per;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / per, bt = r / KVH, kvh = r - bt * KVH;
    const int c = 4 * int(k - r * per);
    group_sum_unit<D>(src + r * G * D, G, c, dst16 ? nullptr : dst32 + r * D,
                      dst16 ? dst16 + bt * ld + kvh * D : nullptr, dst16 && cs ? cs + (bt % T) * D : nullptr, neox);
  }
}

template <int D>
constexpr size_t dkdv_smem() {
  return size_t(6 * tile_elems<D>()) * 2 + 4 * kRows * sizeof(float);
}
template <int D>
constexpr size_t dq_smem() {
  return size_t(6 * tile_elems<D>()) * 2;
}

// kShares (per_head): a block per (key tile, query head), its share of dk, dv into that head's slot
// of dk, dv laid out as q (B, T, NH, HS), summed over the group by sum_group_kernel (summing them
// here, by the group's last block to finish, cost more than the pass: 373 against 323 + 2 x 21 us
// at qwen's shape). Otherwise a block per (key tile, KV head) walks the group's query heads in order
// and writes dk, dv itself (fp32, or bf16 by o16; the shares variant is compiled without that code:
// 244 registers instead of 255).
template <int D, bool kShares>
__global__ void __launch_bounds__(kThreads) flash_dkdv_mma_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                                 const bf16* __restrict__ v, const BwdWs w, float* dk,
                                                                 float* dv, int T, int NH, int KVH, float scale,
                                                                 float scale_log2, Bf16Grads o16) {
  constexpr bool per_head = kShares;
  constexpr int P = D + 8, TE = tile_elems<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + TE;
  bf16* Qs = Vs + TE;       // two stages: Qs + stage TE
  bf16* Os = Qs + 2 * TE;   // dO, two stages
  float* lse2 = reinterpret_cast<float*>(Os + 2 * TE);  // (2, 64) lse log2e of the tile's queries
  float* dvs = lse2 + 2 * kRows;                         // (2, 64) Dv of the tile's queries
  const int kt = int(gridDim.x) - 1 - int(blockIdx.x);   // the tiles with the most queries first
  // blockIdx.y: a KV head whose group's query heads the block walks in order, or (per_head) one query
  // head.
  const int G = NH / KVH, h_first = per_head ? int(blockIdx.y) : int(blockIdx.y) * G, n_heads = per_head ? 1 : G;
  const int kvh = h_first / G, b = int(blockIdx.z);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, t = lane & 3;
  const int k0 = kt * kKeys, n_qt = (T + kRows - 1) / kRows, per = n_qt - kt, steps = n_heads * per;
  const int64_t qstride = int64_t(NH) * D, kstride = int64_t(KVH) * D;
  load_tile<D>(Ks, k + int64_t(b) * T * kstride + int64_t(kvh) * D, kstride, k0, T);
  load_tile<D>(Vs, v + int64_t(b) * T * kstride + int64_t(kvh) * D, kstride, k0, T);
  // Step i: query tile kt + i % per of head h_first + i / per, into stage i & 1.
  const auto issue = [&](int i) {
    const int h = h_first + i / per, q0 = (kt + i % per) * kRows, st = i & 1;
    const int64_t off = int64_t(b) * T * qstride + int64_t(h) * D;
    load_tile<D>(Qs + st * TE, q + off, qstride, q0, T);
    load_tile<D>(Os + st * TE, w.dob + off, qstride, q0, T);
    const int64_t row = (int64_t(b) * NH + h) * w.Tp;
    for (int c = int(threadIdx.x); c < 2 * kRows / 4; c += kThreads)
      c < kRows / 4 ? load_row64(lse2 + st * kRows, w.lse2 + row, q0, w.Tp, c)
                    : load_row64(dvs + st * kRows, w.dvec + row, q0, w.Tp, c - kRows / 4);
    cp_async_commit();
  };
  issue(0);  // (with K and V in the same group)
  float dK[D / 8][4], dV[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dK[n][e] = dV[n][e] = 0.0f;
  const int key_a = k0 + 16 * warp + (lane >> 2), key_b = key_a + 8;  // this lane's two keys
  // With bf16 dk rotated back (written here, not as shares): the table rows of the tile's keys, in
  // the stages the last step leaves free.
  const bool stage = o16.dk && o16.cs && !per_head;
  float* const tab_a = reinterpret_cast<float*>(Qs + (steps & 1) * TE);
  float* const tab_b = reinterpret_cast<float*>(Os + (steps & 1) * TE);

  for (int i = 0; i < steps; ++i) {
    if (i + 1 < steps) {
      issue(i + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (i == steps - 1 && stage) stage_table<D>(tab_a, tab_b, o16.cs, k0, T);
    const int st = i & 1, q0 = (kt + i % per) * kRows;
    const bf16* Qc = Qs + st * TE;
    const bf16* Oc = Os + st * TE;
    const float* l2 = lse2 + st * kRows;
    const float* dvc = dvs + st * kRows;
    const bool edge = q0 == k0 || q0 + kRows > T || k0 + kKeys > T;  // the diagonal or the end
#pragma unroll
    for (int sub = 0; sub < kRows / kSub; ++sub) {
      const int s0 = sub * kSub;
      // Queries all before the warp's first key: P^T and dS^T would be 0 (dK, dV unchanged, bit for
      // bit), skipped (on the diagonal tile, the upper two warps' first 32 queries).
      if (q0 + s0 + kSub <= k0 + 16 * warp) continue;
      float sT[kSub / 8][4], dpT[kSub / 8][4];  // S^T = K Q^T, dP^T = V dO^T
      mma_pair<D>(sT, dpT, Ks, Vs, Qc, Oc, P, 16 * warp, s0, lane);
      // P^T and dS^T in place (rows = keys key_a / key_b, columns = queries).
#pragma unroll
      for (int n = 0; n < kSub / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = s0 + 8 * n + 2 * t + (e & 1), key = e < 2 ? key_a : key_b;
          const float p = exp2_ftz(sT[n][e] * scale_log2 - l2[qi]);
          const bool dead = edge && (q0 + qi < key || key >= T || q0 + qi >= T);
          sT[n][e] = dead ? 0.0f : p;
          dpT[n][e] = dead ? 0.0f : p * (dpT[n][e] - dvc[qi]);
        }
      // dV += P^T dO and dK += dS^T Q over the 32 queries (2 k-steps of 16).
#pragma unroll
      for (int kk = 0; kk < kSub / 16; ++kk) {
        uint32_t pa[4], da[4];
        acc_to_a(pa, sT, kk);
        acc_to_a(da, dpT, kk);
        // (both products in one loop, their loads interleaved: two mma_rows_kn calls spilled)
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
          uint32_t ob4[4], qb4[4];
          load_b_kn(ob4, Oc, P, s0 + 16 * kk, 8 * n, lane);
          load_b_kn(qb4, Qc, P, s0 + 16 * kk, 8 * n, lane);
          mma_bf16(dV[n], pa, ob4[0], ob4[1]);
          mma_bf16(dV[n + 1], pa, ob4[2], ob4[3]);
          mma_bf16(dK[n], da, qb4[0], qb4[1]);
          mma_bf16(dK[n + 1], da, qb4[2], qb4[3]);
        }
      }
    }
    __syncthreads();  // this stage is consumed before step i + 2 refills it
  }
  // dk and dv rows key_a, key_b of KV head kvh (or of query head h_first's slot: always fp32, for
  // the group sums), or their bf16 rows (o16; dk rotated back where o16.cs).
  const int64_t ostride = per_head ? qstride : kstride;
  float* dkb = dk + int64_t(b) * T * ostride + int64_t(per_head ? h_first : kvh) * D;
  float* dvb = dv + int64_t(b) * T * ostride + int64_t(per_head ? h_first : kvh) * D;
  bf16* dk16 = o16.dk && !per_head ? o16.dk + int64_t(b) * T * o16.ldkv + int64_t(kvh) * D : nullptr;
  bf16* dv16 = o16.dv && !per_head ? o16.dv + int64_t(b) * T * o16.ldkv + int64_t(kvh) * D : nullptr;
  // (shares: always fp32, the group sum rounds)
  if (stage) cp_async_wait<0>(), __syncthreads();
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = r ? key_b : key_a, e0 = 2 * r;
    if (key >= T) continue;
    if (dk16) store_row_bf16<D>(dk16 + int64_t(key) * o16.ldkv, dK, e0, scale, t,
                                stage ? staged_row<D>(tab_a, tab_b, key - k0) : nullptr, o16.neox);
    if (dv16) store_row_bf16<D>(dv16 + int64_t(key) * o16.ldkv, dV, e0, 1.0f, t, nullptr, false);
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int c = 8 * n + 2 * t;
      if (!dk16) store_pair(dkb + int64_t(key) * ostride + c, dK[n][e0] * scale, dK[n][e0 + 1] * scale);
      if (!dv16) store_pair(dvb + int64_t(key) * ostride + c, dV[n][e0], dV[n][e0 + 1]);
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads) flash_dq_mma_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                                               const bf16* __restrict__ v, const BwdWs w, float* dq,
                                                               int T, int NH, int KVH, float scale, float scale_log2,
                                                               Bf16Grads o16) {
  constexpr int P = D + 8, TE = tile_elems<D>();
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Os = Qs + TE;      // dO
  bf16* Ks = Os + TE;      // two stages
  bf16* Vs = Ks + 2 * TE;  // two stages
  const int qt = int(gridDim.x) - 1 - int(blockIdx.x);
  const int h = int(blockIdx.y), b = int(blockIdx.z), kvh = h / (NH / KVH);
  const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31, g = lane >> 2, t = lane & 3;
  const int q0 = qt * kRows, r0 = q0 + 16 * warp + g, r1 = r0 + 8;
  const int64_t qstride = int64_t(NH) * D, kstride = int64_t(KVH) * D;
  const int64_t qoff = int64_t(b) * T * qstride + int64_t(h) * D;
  const bf16* kb = k + int64_t(b) * T * kstride + int64_t(kvh) * D;
  const bf16* vb = v + int64_t(b) * T * kstride + int64_t(kvh) * D;
  load_tile<D>(Qs, q + qoff, qstride, q0, T);
  load_tile<D>(Os, w.dob + qoff, qstride, q0, T);
  load_tile<D>(Ks, kb, kstride, 0, T);
  load_tile<D>(Vs, vb, kstride, 0, T);
  cp_async_commit();
  // This lane's rows: lse in base 2 and Dv.
  const int64_t row = (int64_t(b) * NH + h) * w.Tp;
  const float l2a = r0 < T ? w.lse2[row + r0] : 0.0f, l2b = r1 < T ? w.lse2[row + r1] : 0.0f;
  const float dva = r0 < T ? w.dvec[row + r0] : 0.0f, dvb = r1 < T ? w.dvec[row + r1] : 0.0f;
  float dQ[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dQ[n][0] = dQ[n][1] = dQ[n][2] = dQ[n][3] = 0.0f;

  // With bf16 dq rotated back: the table rows of the block's queries, in the stages the last key tile
  // leaves free.
  const bool stage = o16.dq && o16.cs;
  float* const tab_a = reinterpret_cast<float*>(Ks + ((qt + 1) & 1) * TE);
  float* const tab_b = reinterpret_cast<float*>(Vs + ((qt + 1) & 1) * TE);
  for (int j = 0; j <= qt; ++j) {
    const int k0 = j * kKeys;
    kv_pipeline_step<D>(Ks, Vs, kb, vb, kstride, j, qt, T);
    if (j == qt && stage) stage_table<D>(tab_a, tab_b, o16.cs, q0, T);
    const bf16* Kc = Ks + (j & 1) * TE;
    const bf16* Vc = Vs + (j & 1) * TE;
    float s[kKeys / 8][4], dp[kKeys / 8][4];  // S = Q K^T, dP = dO V^T
    mma_pair<D>(s, dp, Qs, Os, Kc, Vc, P, 16 * warp, 0, lane);
    const bool diag = j == qt || k0 + kKeys > T;
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + 8 * n + 2 * t + (e & 1), r = e < 2 ? r0 : r1;
        const float p = exp2_ftz(s[n][e] * scale_log2 - (e < 2 ? l2a : l2b));
        const bool dead = diag && (key > r || key >= T);
        s[n][e] = dead ? 0.0f : p * (dp[n][e] - (e < 2 ? dva : dvb));  // dS
      }
    // dQ += dS K, 16 keys per k-step.
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      uint32_t da[4];
      acc_to_a(da, s, kk);
      mma_rows_kn<D>(dQ, da, Kc, P, 16 * kk, lane);
    }
    __syncthreads();
  }
  if (o16.dq) {  // bf16, rotated back where o16.cs (by the staged table)
    if (stage) cp_async_wait<0>(), __syncthreads();
    bf16* dqh = o16.dq + int64_t(b) * T * o16.ldq + int64_t(h) * D;
    const float* c0 = stage ? staged_row<D>(tab_a, tab_b, r0 - q0) : nullptr;
    const float* c1 = stage ? staged_row<D>(tab_a, tab_b, r1 - q0) : nullptr;
    if (r0 < T) store_row_bf16<D>(dqh + int64_t(r0) * o16.ldq, dQ, 0, scale, t, c0, o16.neox);
    if (r1 < T) store_row_bf16<D>(dqh + int64_t(r1) * o16.ldq, dQ, 2, scale, t, c1, o16.neox);
    return;
  }
  float* dqb = dq + qoff;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = 8 * n + 2 * t;
    if (r0 < T) store_pair(dqb + int64_t(r0) * qstride + c, dQ[n][0] * scale, dQ[n][1] * scale);
    if (r1 < T) store_pair(dqb + int64_t(r1) * qstride + c, dQ[n][2] * scale, dQ[n][3] * scale);
  }
}

// Opts a kernel in to more than 48 KB of dynamic shared memory (once per instantiation).
template <class K>
void allow_smem(K kernel, size_t bytes) {
  PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <int D, class OutT, class DIn>
void backward(float* dq, float* dk, float* dv, const DIn* dout, const OutT* out, const bf16* q, const bf16* k,
              const bf16* v, const float* lse, int64_t B, int64_t T, int64_t NH, int64_t KVH, float* ws,
              size_t ws_floats, cudaStream_t s, cudaStream_t side, const Bf16Grads& o16) {
  const float scale = float(1.0 / std::sqrt(double(D))), scale_log2 = float(1.4426950408889634 / std::sqrt(double(D)));
  const int64_t rows = B * T * NH, nq = rows * D, base = ws_base_floats(B, T, NH, D);
  DeviceBuffer own;  // the caller gave no room: the workspace's required part here (tests)
  if (!ws || ws_floats < size_t(base)) {
    own = DeviceBuffer(size_t(base) * sizeof(float));
    ws = own.as<float>(), ws_floats = size_t(base);
  }
  BwdWs w = carve(ws, B, T, NH, D);
  if constexpr (std::is_same_v<DIn, bf16>) w.dob = const_cast<bf16*>(dout);  // (read only)
  bwd_prep_kernel<OutT, D, DIn><<<unsigned(std::min<int64_t>((rows + 7) / 8, 16 * int64_t(sm_count()))), 256, 0, s>>>(
      dout, out, lse, w, rows, int(T), int(NH));
  PRIMAL_CUDA_CHECK_LAUNCH();
  constexpr size_t s1 = dkdv_smem<D>(), s2 = dq_smem<D>();
  allow_smem(flash_dkdv_mma_kernel<D, true>, s1);
  allow_smem(flash_dkdv_mma_kernel<D, false>, s1);
  allow_smem(flash_dq_mma_kernel<D>, s2);
  const unsigned tiles = unsigned((T + kRows - 1) / kRows);
  // With a side stream dq's kernel runs there, beside dk/dv's: both read only what bwd_prep and the
  // forward left, and each alone leaves multiprocessors idle (causal blocks end at different times).
  static cudaEvent_t ev[2] = {nullptr, nullptr};  // prep done; dq done (ordering only)
  if (side && !ev[0])
    for (cudaEvent_t& e : ev) PRIMAL_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  cudaStream_t sq = side && !own.data() ? side : s;
  if (sq != s) {
    PRIMAL_CUDA_CHECK(cudaEventRecord(ev[0], s));
    PRIMAL_CUDA_CHECK(cudaStreamWaitEvent(sq, ev[0], 0));
  }
  flash_dq_mma_kernel<D><<<dim3(tiles, unsigned(NH), unsigned(B)), kThreads, s2, sq>>>(
      q, k, v, w, dq, int(T), int(NH), int(KVH), scale, scale_log2, o16);
  PRIMAL_CUDA_CHECK_LAUNCH();
  if (sq != s) PRIMAL_CUDA_CHECK(cudaEventRecord(ev[1], sq));
  // A block per (key tile, query head) when the group has several heads and the workspace holds
  // their shares: a block per KV head walks all G heads of its group in turn (a 6-head group at T
  // 1024 gave 256 blocks, the first ones with 96 query tiles to walk).
  const bool per_head = NH > KVH && ws_floats >= size_t(base + 2 * nq);
  if (per_head) {
    float *sk = ws + base, *sv = ws + base + nq;
    flash_dkdv_mma_kernel<D, true><<<dim3(tiles, unsigned(NH), unsigned(B)), kThreads, s1, s>>>(
        q, k, v, w, sk, sv, int(T), int(NH), int(KVH), scale, scale_log2, o16);
    PRIMAL_CUDA_CHECK_LAUNCH();
    const int64_t kv_rows = B * T * KVH;
    const int blocks = int(std::min<int64_t>((kv_rows * D / 4 + 255) / 256, 16 * int64_t(sm_count())));
    const int G = int(NH / KVH);
    sum_group_kernel<D><<<blocks, 256, 0, s>>>(sk, dk, o16.dk, o16.ldkv, kv_rows, G, int(KVH), int(T), o16.cs,
                                               o16.neox);
    PRIMAL_CUDA_CHECK_LAUNCH();
    sum_group_kernel<D><<<blocks, 256, 0, s>>>(sv, dv, o16.dv, o16.ldkv, kv_rows, G, int(KVH), int(T), nullptr, false);
  } else {
    flash_dkdv_mma_kernel<D, false><<<dim3(tiles, unsigned(KVH), unsigned(B)), kThreads, s1, s>>>(
        q, k, v, w, dk, dv, int(T), int(NH), int(KVH), scale, scale_log2, o16);
  }
  PRIMAL_CUDA_CHECK_LAUNCH();
  if (sq != s) PRIMAL_CUDA_CHECK(cudaStreamWaitEvent(s, ev[1], 0));
  if (own.data()) PRIMAL_CUDA_CHECK(cudaStreamSynchronize(s));  // before `own` is freed
}

}  // namespace

bool attention_mma_supports(int64_t HS) { return HS == 32 || HS == 64 || HS == 96 || HS == 128; }

size_t attention_backward_mma_workspace(int64_t B, int64_t T, int64_t NH, int64_t HS, bool gqa_shares) {
  return size_t(ws_base_floats(B, T, NH, HS) + (gqa_shares ? 2 * B * T * NH * HS : 0));
}

namespace {

void check_args(const void* a, const void* b, const void* c, const void* d, const void* e, int64_t B, int64_t T,
                int64_t NH, int64_t KVH, int64_t HS, const char* what) {
  PRIMAL_CHECK(a && b && c && d && e, "{}: a null pointer", what);
  PRIMAL_CHECK(B > 0 && T > 0 && KVH > 0 && NH % KVH == 0, "{}: B {} T {} NH {} KVH {}", what, B, T, NH, KVH);
  PRIMAL_CHECK(attention_mma_supports(HS), "{}: head size {} (32, 64, 96, 128)", what, HS);
  PRIMAL_CHECK(T < (int64_t(1) << 30) && B < 65536 && NH < 65536, "{}: B {} T {} NH {} too large", what, B, T, NH);
}
// cp.async copies 16 bytes: the bf16 tensors' bases must be 16-byte aligned (rows are: HS % 8 == 0).
void check_aligned(const void* p, const char* what) {
  PRIMAL_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "{}: a bf16 tensor not 16-byte aligned", what);
}

// Queries per forward block: 128 (8 warps) where that still gives every multiprocessor two waves
// of blocks, else 64; PRIMAL_ATTN_ROWS=64 or 128 fixes it (comparisons, tests: the same bits).
int forward_rows(int64_t B, int64_t T, int64_t NH) {
  const char* e = std::getenv("PRIMAL_ATTN_ROWS");
  if (e && (std::string(e) == "64" || std::string(e) == "128")) return std::atoi(e);
  const int64_t blocks128 = (T + 127) / 128 * NH * B;
  return blocks128 >= 4 * int64_t(sm_count()) ? 128 : 64;
}

template <class Out>
void forward(Out* out, float* lse, const bf16* q, const bf16* k, const bf16* v, int64_t B, int64_t T, int64_t NH,
             int64_t KVH, int64_t HS, cudaStream_t s) {
  check_args(out, lse, q, k, v, B, T, NH, KVH, HS, "attention_forward_mma");
  check_aligned(q, "attention_forward_mma"), check_aligned(k, "attention_forward_mma");
  check_aligned(v, "attention_forward_mma");
  const int rows = forward_rows(B, T, NH);
  const dim3 grid(unsigned((T + rows - 1) / rows), unsigned(NH), unsigned(B));
  const float scale_log2 = float(1.4426950408889634 / std::sqrt(double(HS)));
#define PRIMAL_LAUNCH_W(D, W)                                                                               \
  allow_smem(flash_forward_mma_kernel<D, W, Out>, forward_smem<D, W>());                                    \
  flash_forward_mma_kernel<D, W, Out><<<grid, 32 * W, forward_smem<D, W>(), s>>>(q, k, v, out, lse, int(T), \
                                                                                int(NH), int(KVH), scale_log2)
#define PRIMAL_LAUNCH(D)        \
  if (rows == 128) {            \
    PRIMAL_LAUNCH_W(D, 8);      \
  } else {                      \
    PRIMAL_LAUNCH_W(D, 4);      \
  }
  switch (HS) {
    case 32: PRIMAL_LAUNCH(32); break;
    case 64: PRIMAL_LAUNCH(64); break;
    case 96: PRIMAL_LAUNCH(96); break;
    default: PRIMAL_LAUNCH(128); break;
  }
#undef PRIMAL_LAUNCH
#undef PRIMAL_LAUNCH_W
  PRIMAL_CUDA_CHECK_LAUNCH();
}

template <class OutT, class DIn>
void backward_any(float* dq, float* dk, float* dv, const DIn* dout, const OutT* out, const bf16* q, const bf16* k,
                  const bf16* v, const float* lse, int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS,
                  cudaStream_t s, float* ws, size_t ws_floats, cudaStream_t side = nullptr,
                  const Bf16Grads& o16 = Bf16Grads()) {
  check_args(dq, dk, dv, dout, lse, B, T, NH, KVH, HS, "attention_backward_mma");
  check_args(out, q, k, v, lse, B, T, NH, KVH, HS, "attention_backward_mma");
  check_aligned(q, "attention_backward_mma"), check_aligned(k, "attention_backward_mma");
  check_aligned(v, "attention_backward_mma"), check_aligned(ws, "attention_backward_mma (workspace)");
  if constexpr (std::is_same_v<DIn, bf16>) check_aligned(dout, "attention_backward_mma (bf16 dout)");
  switch (HS) {
    case 32: backward<32>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s, side, o16); break;
    case 64: backward<64>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s, side, o16); break;
    case 96: backward<96>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s, side, o16); break;
    default: backward<128>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, ws, ws_floats, s, side, o16); break;
  }
}

const bf16* bf(const uint16_t* p) { return reinterpret_cast<const bf16*>(p); }

// fp32 inputs: rounded to bf16 copies first (the values the kernels would round them to).
DeviceBuffer bf16_copy(const float* x, int64_t n, cudaStream_t s) {
  DeviceBuffer b(size_t(n) * 2);
  to_bf16(b.as<uint16_t>(), x, n, s);
  return b;
}

}  // namespace

void attention_forward_mma(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                           int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s) {
  check_args(out, lse, q, k, v, B, T, NH, KVH, HS, "attention_forward_mma");
  const DeviceBuffer qb = bf16_copy(q, B * T * NH * HS, s), kb = bf16_copy(k, B * T * KVH * HS, s),
                     vb = bf16_copy(v, B * T * KVH * HS, s);
  forward(out, lse, qb.as<bf16>(), kb.as<bf16>(), vb.as<bf16>(), B, T, NH, KVH, HS, s);
  PRIMAL_CUDA_CHECK(cudaStreamSynchronize(s));  // the copies are freed on return
}

void attention_forward_mma(uint16_t* out, float* lse, const uint16_t* q, const uint16_t* k, const uint16_t* v,
                           int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s) {
  forward(reinterpret_cast<bf16*>(out), lse, bf(q), bf(k), bf(v), B, T, NH, KVH, HS, s);
}

void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* q,
                            const float* k, const float* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                            int64_t KVH, int64_t HS, cudaStream_t s, float* ws, size_t ws_floats) {
  check_args(dq, dk, dv, dout, lse, B, T, NH, KVH, HS, "attention_backward_mma");
  check_args(out, q, k, v, lse, B, T, NH, KVH, HS, "attention_backward_mma");
  const DeviceBuffer qb = bf16_copy(q, B * T * NH * HS, s), kb = bf16_copy(k, B * T * KVH * HS, s),
                     vb = bf16_copy(v, B * T * KVH * HS, s);
  backward_any(dq, dk, dv, dout, out, qb.as<bf16>(), kb.as<bf16>(), vb.as<bf16>(), lse, B, T, NH, KVH, HS, s, ws,
               ws_floats);
  PRIMAL_CUDA_CHECK(cudaStreamSynchronize(s));
}

namespace {

Bf16Grads bf16_grads(const AttentionGradsBf16* grads_bf16, int64_t NH, int64_t KVH, int64_t HS) {
  Bf16Grads o16;
  if (grads_bf16) {
    const AttentionGradsBf16& g = *grads_bf16;
    const int64_t ld = g.ld;
    PRIMAL_CHECK(ld == 0 || (ld >= NH * HS && ld % 2 == 0),
                 "attention_backward_mma: bf16 row stride {} for {} values a token", ld, NH * HS);
    for (const uint16_t* p : {g.dq, g.dk, g.dv})
      PRIMAL_CHECK(reinterpret_cast<uintptr_t>(p) % 4 == 0,
                   "attention_backward_mma: a bf16 gradient not 4-byte aligned");
    o16.dq = reinterpret_cast<bf16*>(g.dq), o16.dk = reinterpret_cast<bf16*>(g.dk);
    o16.dv = reinterpret_cast<bf16*>(g.dv);
    o16.ldq = ld > 0 ? ld : NH * HS, o16.ldkv = ld > 0 ? ld : KVH * HS;
    o16.cs = g.rope_cs, o16.neox = g.neox;
  }
  return o16;
}

}  // namespace

void attention_backward_mma(float* dq, float* dk, float* dv, const float* dout, const uint16_t* out, const uint16_t* q,
                            const uint16_t* k, const uint16_t* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                            int64_t KVH, int64_t HS, cudaStream_t s, float* ws, size_t ws_floats, cudaStream_t side,
                            const AttentionGradsBf16* grads_bf16) {
  backward_any(dq, dk, dv, dout, bf(out), bf(q), bf(k), bf(v), lse, B, T, NH, KVH, HS, s, ws, ws_floats, side,
               bf16_grads(grads_bf16, NH, KVH, HS));
}

void attention_backward_mma(float* dq, float* dk, float* dv, const uint16_t* dout, const uint16_t* out,
                            const uint16_t* q, const uint16_t* k, const uint16_t* v, const float* lse, int64_t B,
                            int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s, float* ws, size_t ws_floats,
                            cudaStream_t side, const AttentionGradsBf16* grads_bf16) {
  backward_any(dq, dk, dv, bf(dout), bf(out), bf(q), bf(k), bf(v), lse, B, T, NH, KVH, HS, s, ws, ws_floats, side,
               bf16_grads(grads_bf16, NH, KVH, HS));
}

}  // namespace primal::cuda
