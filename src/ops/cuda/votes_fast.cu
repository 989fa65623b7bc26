// The bf16 mode's vote kernels (votes.h): the momentum cast with its column statistic, and the
// apply of every matrix in one launch. Same rule as votes.cu's bf16 branch; what differs is where
// the work goes.
//
// The cast (cast_rows_kernel): a block per row, each thread owning CPT chunks of 8 consecutive
// weights (8 gradient values, fp32 or bf16 as the GEMM wrote them, one word of packed indices, one
// 64-bit word of int8 votes), read once into registers: the dscale sums, the row statistic and the
// votes come from those registers. The column statistic of a backward call (the sum over rows of
// g^2 / O per column), which votes.cu's col_part_kernel re-read the whole gradient for, is summed
// here by each block over its rows (a column belongs to one thread of the block: in its registers
// or shared memory, no atomics) and written once per block; a fold (fold_columns) adds the blocks'
// sums in block order, and after the call's last rows forms col_sq's EMA and col_norm in the same
// launch (the last block to finish takes the mean): right after the cast (col_fold_kernel), or,
// for whole-matrix casts with a queue (votes.h CastFoldQueue), a layer's folds in one launch
// (col_fold_batch_kernel). Run-to-run deterministic: fixed grids, fixed orders. The rounding draws:
// floor(x + u), two 16-bit uniforms per hash. Where the time goes (H100, seed-500m step, 7cf7669):
// the cast ~3.1 ms, the folds ~0.7 ms (40 launches), against 8.6 ms for votes.cu's cast + col_part
// + col_sq + col_stats.
//
// The apply (apply_batch_kernel): every matrix of one index width in one launch (a matrix per
// range of blocks), four vote words in flight per thread; a launch per matrix (170 on seed-500m,
// 5-9 us each for a 1280 x 1280 matrix) was mostly launch and latency.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/lut_train.cuh"
#include "ops/cuda/rng.cuh"
#include "ops/cuda/votes.h"
#include "ops/cuda/votes_common.cuh"

namespace primal::cuda {
namespace {

using vk::CastArgs;
using vk::FastArgs;
using vk::Mat;

// Rows of up to 2 chunks a thread take at most 256 threads (cast_chunks_per_thread), held to 64
// registers for 4 blocks of 256 a multiprocessor: seed-500m's casts at 31% / 22% occupancy (76 / 84
// registers) went to 47% / 44%, 2.83 -> 2.66 ms and 37 -> 32 us a down-projection cast (H100).
constexpr int kCastMaxThreads = 256;
// With 4 chunks a thread (rows of 8K+ weights) the registers would allow one block of 288 threads
// per multiprocessor (125 registers): capped for two blocks of up to 320.
constexpr int kCast4MaxThreads = 320;
constexpr int kFoldSlices = 32;  // warps of a fold block, each summing every 32nd block's partials

// The 8 packed indices of chunk c of a row (B bytes at row + B c; 4- and 8-bit rows are 4- and
// 8-byte aligned because I % 8 == 0).
template <int B>
__device__ __forceinline__ uint64_t chunk_indices(const uint8_t* row, int c) {
  if constexpr (B == 4) {
    return *reinterpret_cast<const uint32_t*>(row + 4 * c);
  } else if constexpr (B == 8) {
    const uint2 w = *reinterpret_cast<const uint2*>(row + 8 * c);
    return uint64_t(w.x) | uint64_t(w.y) << 32;
  } else {
    uint64_t x = 0;
#pragma unroll
    for (int b = 0; b < B; ++b) x |= uint64_t(row[B * c + b]) << (8 * b);
    return x;
  }
}

// The 8 gradient values of chunk c of a row: two float4, or one 16-byte word of bf16 values.
__device__ __forceinline__ void load_chunk(const float* row, int c, float4& x0, float4& x1) {
  const float4* p = reinterpret_cast<const float4*>(row) + 2 * c;
  x0 = p[0], x1 = p[1];
}
__device__ __forceinline__ float4 bf16x4(uint32_t lo, uint32_t hi) {
  return make_float4(__uint_as_float(lo << 16), __uint_as_float(lo & 0xffff0000u), __uint_as_float(hi << 16),
                     __uint_as_float(hi & 0xffff0000u));
}
__device__ __forceinline__ void load_chunk(const uint16_t* row, int c, float4& x0, float4& x1) {
  const uint4 u = reinterpret_cast<const uint4*>(row)[c];
  x0 = bf16x4(u.x, u.y), x1 = bf16x4(u.z, u.w);
}

// Sum over the block in warp order (run-to-run deterministic); red: 32 floats of shared memory.
// Two barriers: a thread's shared-memory writes before the call are visible to every thread after.
__device__ __forceinline__ float block_sum_ordered(float x, float* red) {
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5), n_warps = int(blockDim.x >> 5);
  x = warp_sum(x);
  __syncthreads();  // red may still be read from the previous call
  if (lane == 0) red[warp] = x;
  __syncthreads();
  float t = 0.0f;
  for (int w = 0; w < n_warps; ++w) t += red[w];
  return t;
}

// Rows o0 + r of dW (rows, I; fp32, or bf16 as the bf16 mode's GEMM writes it), r = blockIdx.x,
// + gridDim.x, ... (each block's rows in increasing order): dscale (when non-null), and with
// a.cast the momentum votes: x = (-lr U) g / ((sqrt(rhat) sqrt(chat_i) + eps) s gap),
// stochastically rounded. part (non-null with a.cast && a.sm): (gridDim.x, I) the block's column
// sums of g^2 / O over its rows. Dynamic shared memory (CPT > 1): I floats for those sums (when
// part), I floats of sqrt(col_norm) (when a.cast && a.sm). Per row the only serial chain is the
// loads, one block reduction and the arithmetic: the rounding key and row_sq are fetched with the
// loads, and every thread forms the row statistic itself (the same fp32 operations, same bits).
template <class GT, int B, int CPT>
__global__ void __launch_bounds__(CPT < 4 ? kCastMaxThreads : kCast4MaxThreads, CPT < 4 ? 4 : 2)
    cast_rows_kernel(const Mat m, int8_t* votes, const CastArgs a, const FastArgs f, const GT* dW, int64_t o0,
                     int64_t rows, float* dscale, float* part) {
  extern __shared__ float4 dyn[];
  __shared__ float grid_sh[256], inv_sh[512];  // inv_sh[256 up + q]: 1 / the gap in the change's direction
  __shared__ float red[32];
  __shared__ uint32_t key_sh[2];  // by iteration parity: written before a reduction, read after it
  constexpr uint32_t kMask = (1u << B) - 1u;
  const int T = int(blockDim.x), tid = int(threadIdx.x), I = int(m.I), chunks = I >> 3, K = int(m.K);
  const int per = int(m.G) >> 3, lshift = __ffs(per) - 1;  // chunks per scale group (a power of two)
  const bool sm_cast = a.cast && a.sm;
  const float c0 = f.dyn ? f.dyn->c0 : f.c0, inv_bc = f.dyn ? f.dyn->inv_bc : f.inv_bc;
  const uint64_t prefix = f.dyn ? f.dyn->prefix : a.prefix;
  // A thread's columns are the same in every row: with one chunk a thread (kRegs) their column sums
  // and sqrt(col_norm) live in its registers (no shared-memory set-up before the first row, no
  // barrier); with more, in shared memory.
  constexpr bool kRegs = CPT == 1;
  float* colsum = reinterpret_cast<float*>(dyn);              // (I) when part && !kRegs
  float* scn = colsum + (part && !kRegs ? I : 0);             // (I) when sm_cast && !kRegs
  float creg[CPT][8], sreg[CPT][8];                           // kRegs: the column sums, sqrt(col_norm)
  if constexpr (kRegs) {
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      const int c = tid + k * T;
      float4 n0 = make_float4(1.f, 1.f, 1.f, 1.f), n1 = n0;
      if (sm_cast && c < chunks) load_chunk(a.col_norm, c, n0, n1);
      const float n[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) creg[k][e] = 0.0f, sreg[k][e] = sqrtf(n[e]);
    }
  }
  vk::gap_tables(m.grid, K, grid_sh, inv_sh, tid, T);
  if (part && !kRegs)
    for (int i = tid; i < I; i += T) colsum[i] = 0.0f;
  if (sm_cast && !kRegs)
    for (int i = tid; i < I; i += T) scn[i] = sqrtf(a.col_norm[i]);
  __syncthreads();
  const bool cast = a.cast && c0 != 0.0f;

  int parity = 0;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x, parity ^= 1) {
    const int64_t o = o0 + r;
    const GT* grow = dW + r * I;
    const uint8_t* irow = m.idx + o * m.row_bytes;
    const float* sc = m.scale + o * m.groups;
    uint2* vrow = reinterpret_cast<uint2*>(votes + o * I);
    const float old = sm_cast ? a.row_sq[o] : 0.0f;
    if (tid == 0 && cast) {
      const CounterRng rng = CounterRng::from_prefix(prefix, uint64_t(o));
      key_sh[parity] = uint32_t(rng.s0) ^ uint32_t(rng.s0 >> 32);
    }
    float g[CPT][8], s[CPT], ds_old[CPT], sq = 0.0f;
    uint64_t qi[CPT];
    uint2 vw[CPT];
    // Pass 1: every load of the row, dscale, sum g^2, the column sums.
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      const int c = tid + k * T;
      const bool in = c < chunks;
      float4 x0 = make_float4(0.f, 0.f, 0.f, 0.f), x1 = x0;
      qi[k] = 0, vw[k] = make_uint2(0u, 0u), s[k] = 0.0f, ds_old[k] = 0.0f;
      if (in) {
        load_chunk(grow, c, x0, x1);
        qi[k] = chunk_indices<B>(irow, c);
        if (cast) vw[k] = vrow[c], s[k] = sc[c >> lshift];
        // The scale gradient's running value with the row's loads (its read-add-write after the
        // group sum was a dependent load in every row's critical path).
        if (dscale && (c & (per - 1)) == 0) ds_old[k] = dscale[o * m.groups + (c >> lshift)];
      }
      float* gk = g[k];
      gk[0] = x0.x, gk[1] = x0.y, gk[2] = x0.z, gk[3] = x0.w, gk[4] = x1.x, gk[5] = x1.y, gk[6] = x1.z, gk[7] = x1.w;
      float ds = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        sq += gk[e] * gk[e];
        if (dscale) ds += gk[e] * grid_sh[(qi[k] >> (B * e)) & kMask];
      }
      if (kRegs && part) {
#pragma unroll
        for (int e = 0; e < 8; ++e) creg[k][e] += gk[e] * gk[e] * f.inv_o;
      } else if (part && in) {
        float4* cs = reinterpret_cast<float4*>(colsum) + 2 * c;
        float4 p0 = cs[0], p1 = cs[1];
        p0.x += gk[0] * gk[0] * f.inv_o, p0.y += gk[1] * gk[1] * f.inv_o;
        p0.z += gk[2] * gk[2] * f.inv_o, p0.w += gk[3] * gk[3] * f.inv_o;
        p1.x += gk[4] * gk[4] * f.inv_o, p1.y += gk[5] * gk[5] * f.inv_o;
        p1.z += gk[6] * gk[6] * f.inv_o, p1.w += gk[7] * gk[7] * f.inv_o;
        cs[0] = p0, cs[1] = p1;
      }
      if (dscale) {  // a group is `per` consecutive chunks, held by consecutive lanes (T % 32 == 0)
        ds = group_sum(ds, per);
        if (in && (c & (per - 1)) == 0) dscale[o * m.groups + (c >> lshift)] = ds_old[k] + ds;
      }
    }
    if (!cast) continue;
    // The row statistic: r = b2 row_sq + (1 - b2) g2 / I, rhat = r / (1 - b2^(events + 1)).
    float sqs = 0.0f;
    if (a.sm) {
      const float rs = f.b2 * old + f.c1 * block_sum_ordered(sq, red);
      if (tid == 0) a.row_sq[o] = rs;
      sqs = sqrtf(rs * inv_bc);
    } else {
      __syncthreads();  // the key
    }
    const uint32_t key = key_sh[parity];
    // Pass 2: the votes, from registers.
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      const int c = tid + k * T;
      if (c >= chunks || s[k] == 0.0f) continue;
      const float cs = c0 / s[k];
      const bool s_pos = s[k] > 0;
      int8_t* v = reinterpret_cast<int8_t*>(&vw[k]);
      uint32_t h = 0;  // two 16-bit draws per hash
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float denom = a.sm ? sqs * (kRegs ? sreg[k][e] : scn[8 * c + e]) + f.eps : 1.0f;
        const uint32_t q = uint32_t(qi[k] >> (B * e)) & kMask;
        if ((e & 1) == 0) h = vk::fast_hash(key, uint32_t(4 * c + (e >> 1)));
        v[e] = vk::momentum_vote(v[e], g[k][e], cs, s_pos, inv_sh, q, denom, vk::unit16(e & 1 ? h >> 16 : h), f.ilim,
                                 f.vmax);
      }
      vrow[c] = vw[k];
    }
  }
  if (part) {  // a thread wrote only its own chunks' sums: no barrier before reading them back
    float4* dst = reinterpret_cast<float4*>(part + int64_t(blockIdx.x) * I);
    const float4* src = reinterpret_cast<const float4*>(colsum);
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      const int c = tid + k * T;
      if (c >= chunks) continue;
      if constexpr (kRegs) {
        dst[2 * c] = make_float4(creg[k][0], creg[k][1], creg[k][2], creg[k][3]);
        dst[2 * c + 1] = make_float4(creg[k][4], creg[k][5], creg[k][6], creg[k][7]);
      } else {
        dst[2 * c] = src[2 * c], dst[2 * c + 1] = src[2 * c + 1];
      }
    }
  }
}

// acc[i] = (first ? 0 : acc[i]) + sum_b part[b, i] (b = 0 .. nb-1 in order, fp64); with `final`
// instead col_sq[i] = float(b2 col_sq[i] + (1 - b2) total), then the last block to finish forms
// mean(col_sq) from the blocks' sums (in block order) and col_norm = col_sq / mean (1 where the
// mean is not positive). A block (bx of n_bx) per 32 columns; warp w sums every 32nd block's
// partials from w (a warp reads 128 consecutive bytes of a partial row; 32 warps keep enough loads
// in flight). acc is read only without `first`, written only without `final`.
__device__ __forceinline__ void fold_columns(const float* part, int64_t nb, int64_t I, bool first, bool final,
                                             double b2, double* acc, double* block_sums, unsigned* counter,
                                             float* col_sq, float* col_norm, int bx, int n_bx) {
  __shared__ double sh[kFoldSlices][33];  // 33: warp 0's column reads avoid bank conflicts
  __shared__ double bsum[kFoldSlices];
  __shared__ bool last_sh;
  const int lane = int(threadIdx.x & 31), w = int(threadIdx.x >> 5);
  const int64_t i = int64_t(bx) * 32 + lane;
  double t = 0.0;
  if (i < I) {
    int64_t b = w;
    for (; b + 3 * kFoldSlices < nb; b += 4 * kFoldSlices) {  // four loads in flight
      const float x0 = part[b * I + i], x1 = part[(b + kFoldSlices) * I + i];
      const float x2 = part[(b + 2 * kFoldSlices) * I + i], x3 = part[(b + 3 * kFoldSlices) * I + i];
      t += double(x0), t += double(x1), t += double(x2), t += double(x3);
    }
    for (; b < nb; b += kFoldSlices) t += double(part[b * I + i]);
  }
  sh[w][lane] = t;
  __syncthreads();
  if (w == 0) {
    double c = 0.0;
    for (int k = 0; k < kFoldSlices; ++k) c += sh[k][lane];
    if (!first && i < I) c += acc[i];
    double x = 0.0;
    if (i < I) {
      if (!final) {
        acc[i] = c;
      } else {
        const float xs = float(b2 * double(col_sq[i]) + (1.0 - b2) * c);
        col_sq[i] = xs;
        x = double(xs);
      }
    }
    if (final) {
      x = warp_sum(x);
      if (lane == 0) block_sums[bx] = x;
      __threadfence();  // every lane's col_sq and the block's sum are visible before the ticket
      __syncwarp();
      if (lane == 0) last_sh = atomicAdd(counter, 1u) == unsigned(n_bx - 1);
    }
  }
  if (!final) return;
  __syncthreads();
  if (!last_sh) return;
  __threadfence();
  double tot = 0.0;
  for (int b = int(threadIdx.x); b < n_bx; b += 32 * kFoldSlices) tot += __ldcg(&block_sums[b]);
  tot = warp_sum(tot);
  if (lane == 0) bsum[w] = tot;
  __syncthreads();
  double all = 0.0;
  for (int k = 0; k < kFoldSlices; ++k) all += bsum[k];
  const double mean = all / double(I);
  for (int64_t j = threadIdx.x; j < I; j += 32 * kFoldSlices)
    col_norm[j] = mean > 0 ? float(double(__ldcg(&col_sq[j])) / mean) : 1.0f;
  if (threadIdx.x == 0) *counter = 0;
}

// One call's fold, right after its cast.
__global__ void __launch_bounds__(32 * kFoldSlices) col_fold_kernel(const float* part, int nb, int64_t I, bool first,
                                                                   bool final, double b2, CastWorkspace ws,
                                                                   float* col_sq, float* col_norm) {
  fold_columns(part, nb, I, first, final, b2, ws.acc, ws.block_sums, ws.counter, col_sq, col_norm, int(blockIdx.x),
               int(gridDim.x));
}

// The queued folds (whole-matrix calls: first and final), a range of blocks each, by value.
struct FoldBatch {
  struct Item {
    const float* part;
    int64_t nb, I;
    double b2;
    float *col_sq, *col_norm;
    double* block_sums;
    unsigned* counter;
    int block0, blocks;
  } item[kFoldBatchMax];
  int count;
};
__global__ void __launch_bounds__(32 * kFoldSlices) col_fold_batch_kernel(const FoldBatch fb) {
  int k = 0;
  while (k + 1 < fb.count && int(blockIdx.x) >= fb.item[k + 1].block0) ++k;
  const FoldBatch::Item& t = fb.item[k];
  fold_columns(t.part, t.nb, t.I, true, true, t.b2, nullptr, t.block_sums, t.counter, t.col_sq, t.col_norm,
               int(blockIdx.x) - t.block0, t.blocks);
}

// The apply of many matrices of one index width: descriptors in block order.
struct ApplyDesc {
  uint8_t* idx;                     // packed rows of B I / 8 bytes: word k8's indices at idx + B k8
  int8_t* votes;
  int64_t K, words;                 // words: O I / 8
  int64_t block0, nb;               // the matrix's launch blocks
};
// A thread takes kApplyWords vote words at a time (their loads in flight together), kApplyTiles
// times: a block covers kApplyThreads * kApplyWords * kApplyTiles words (a block per 1024 words
// made ~74K blocks a seed-500m step).
constexpr int kApplyThreads = 256, kApplyWords = 4, kApplyTiles = 4;

template <int B>
__global__ void __launch_bounds__(kApplyThreads) apply_batch_kernel(const ApplyDesc* d, int count,
                                                                    unsigned long long* flips) {
  const ApplyDesc& t = d[owner_of(d, count, blockIdx.x)];
  uint2* vw = reinterpret_cast<uint2*>(t.votes);
  unsigned long long local = 0;
  for (int tile = 0; tile < kApplyTiles; ++tile) {
    const int64_t first =
        ((int64_t(blockIdx.x) - t.block0) * kApplyTiles + tile) * kApplyThreads * kApplyWords + threadIdx.x;
    uint2 w[kApplyWords];
#pragma unroll
    for (int u = 0; u < kApplyWords; ++u) {
      const int64_t k8 = first + int64_t(u) * kApplyThreads;
      w[u] = k8 < t.words ? vw[k8] : make_uint2(0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kApplyWords; ++u) {
      const int64_t k8 = first + int64_t(u) * kApplyThreads;
      if (k8 >= t.words || !vk::any_unit(w[u])) continue;
      // (rows of I / 8 words and B I / 8 bytes: word k8's B bytes at B k8, no 64-bit division)
      local += unsigned(vk::apply8<B>(w[u], t.idx + k8 * B, t.K));
      vw[k8] = w[u];
    }
  }
  vk::add_count(local, flips);
}

bool apply_batch_ok(const LutTrainView& w, const VoteParams& p) {
  return p.rule == VoteRule::Momentum && p.noise == 0 && p.cooldown == 0 && p.vote_bits == 8 && w.I % 8 == 0 &&
         w.bits() <= 8;
}

// The cast's chunks per thread for rows of `chunks` chunks: the fewest (1, 2, 4) that need at most
// 256 threads, or 4 with up to kCast4MaxThreads; 0 when a row is longer (votes.cu's kernel).
int cast_chunks_per_thread(int64_t chunks) {
  // (Two chunks a thread for qwen2.5-1.5b's 1536-long rows, 96 threads a row: 55.2 against 53.9 us
  // a 13.8M-weight cast, H100.)
  for (int cpt : {1, 2, 4})
    if ((chunks + cpt - 1) / cpt <= 256) return cpt;
  return (chunks + 3) / 4 <= kCast4MaxThreads ? 4 : 0;
}

// Rows per cast block (kCastRowsPerBlock, cast_workspace.h): below it the grid shrinks (each block
// adds a row of partial sums for the fold to read). Measured on seed-500m (H100): 2 rows 61.6-62.0K
// tok/s, 1 row 61.3-61.8K, 4 rows 61.0-61.5K, 8 rows 53.4-57.6K.

template <class GT, int B, int CPT>
void launch_cast(const Mat& m, int8_t* votes, const CastArgs& a, const FastArgs& f, const GT* dW, int64_t o0,
                 int64_t rows, float* dscale, float* part, int threads, size_t smem, int64_t* nb_out, cudaStream_t s) {
  if constexpr (B > 8) {
    fail("cast_rows_fast: no {}-bit kernel", B);  // (excluded by cast_rows_fast's preconditions)
  } else {
    auto kern = cast_rows_kernel<GT, B, CPT>;
    // Per instantiation: the shared-memory limit raised as needed, the blocks per multiprocessor
    // of the last (threads, smem) asked.
    static size_t smem_set = 48 << 10;
    static int occ_threads = 0, occ_blocks = 0;
    static size_t occ_smem = 0;
    if (smem > smem_set) {
      PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      smem_set = smem;
    }
    if (threads != occ_threads || smem != occ_smem) {
      PRIMAL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ_blocks, kern, threads, smem));
      occ_threads = threads, occ_smem = smem;
    }
    int64_t nb = std::max<int64_t>(1, int64_t(occ_blocks) * sm_count());
    nb = std::min({nb, kCastBlocksMax, (rows + kCastRowsPerBlock - 1) / kCastRowsPerBlock});
    kern<<<unsigned(nb), unsigned(threads), smem, s>>>(m, votes, a, f, dW, o0, rows, dscale, part);
    PRIMAL_CUDA_CHECK_LAUNCH();
    *nb_out = nb;
  }
}

template <int B>
void launch_apply(const ApplyDesc* d, int count, int64_t blocks, unsigned long long* flips, cudaStream_t s) {
  if constexpr (B > 8) {
    fail("lut_votes_apply_batch: no {}-bit kernel", B);  // (excluded by apply_batch_ok)
  } else {
    apply_batch_kernel<B><<<unsigned(blocks), kApplyThreads, 0, s>>>(d, count, flips);
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

bool votes_v1() {
  static const bool v = [] {
    const char* e = std::getenv("PRIMAL_VOTES_V1");
    return e && *e && *e != '0';
  }();
  return v;
}

CastWorkspace cast_workspace_at(void* mem, int64_t I_max, int64_t part_floats, cudaStream_t s, bool floor) {
  PRIMAL_CHECK(mem && I_max > 0, "cast_workspace_at: no memory or I_max {}", I_max);
  auto at = reinterpret_cast<uintptr_t>(mem);
  auto take = [&](int64_t bytes) {
    at = (at + 15) & ~uintptr_t(15);
    void* p = reinterpret_cast<void*>(at);
    at += uintptr_t(bytes);
    return p;
  };
  CastWorkspace ws;
  ws.I_max = I_max;
  ws.part_floats = floor ? std::max(part_floats, kCastBlocksMax * I_max) : part_floats;
  const int64_t sums = (I_max + 31) / 32 + 1;
  ws.part = static_cast<float*>(take(ws.part_floats * 4));
  ws.acc = static_cast<double*>(take(I_max * 8));
  ws.block_sums = static_cast<double*>(take(sums * 8));
  ws.counter = static_cast<unsigned*>(take(4));
  ws.batch_sums = static_cast<double*>(take(kFoldBatchMax * sums * 8));
  ws.batch_counters = static_cast<unsigned*>(take(kFoldBatchMax * 4));
  PRIMAL_CHECK(at <= reinterpret_cast<uintptr_t>(mem) + uintptr_t(cast_workspace_bytes(I_max, part_floats, floor)),
               "cast_workspace_at: layout exceeds cast_workspace_bytes");
  fill_bytes_async(ws.counter, 0, 4, s);
  fill_bytes_async(ws.batch_counters, 0, kFoldBatchMax * 4, s);
  return ws;
}

void cast_fold_flush(const CastWorkspace& ws, cudaStream_t s) {
  if (!ws.queue || ws.queue->items.empty()) return;
  std::vector<CastFoldItem>& q = ws.queue->items;
  PRIMAL_CHECK(int64_t(q.size()) <= kFoldBatchMax, "cast_fold_flush: {} queued folds", q.size());
  const int64_t sums = (ws.I_max + 31) / 32 + 1;
  FoldBatch fb{};
  int blocks = 0;
  for (size_t k = 0; k < q.size(); ++k) {
    const int n = int((q[k].I + 31) / 32);
    fb.item[k] = {q[k].part, q[k].nb,          q[k].I, q[k].beta2, q[k].col_sq, q[k].col_norm,
                  ws.batch_sums + int64_t(k) * sums, ws.batch_counters + k, blocks, n};
    blocks += n;
  }
  fb.count = int(q.size());
  col_fold_batch_kernel<<<unsigned(blocks), 32 * kFoldSlices, 0, s>>>(fb);
  PRIMAL_CUDA_CHECK_LAUNCH();
  q.clear();
  ws.queue->used = 0;
}

namespace {
CastRecorder* g_recorder = nullptr;
}  // namespace
void set_cast_recorder(CastRecorder* r) { g_recorder = r; }
CastRecorder* cast_recorder() { return g_recorder; }

bool cast_rows_fast_ok(const LutTrainView& w, const CastArgs& a, const VoteState* st, const VoteParams* p) {
  if (votes_v1() || !a.fast || !cast_fast_serves(w.I, w.G, w.bits())) return false;
  if (a.cast && (a.seed_rule || p->vote_bits != 8)) return false;
  return !(a.cast && a.sm) || (st->ws && w.I <= st->ws->I_max);
}

FastArgs fast_args(const LutTrainView& w, const CastArgs& a, VoteState* st, const VoteParams* p) {
  FastArgs f{};
  const CastDyn d = vk::cast_dyn_of(a);
  f.c0 = d.c0;
  f.eps = float(a.eps);
  f.vmax = a.cast ? int(p->vmax()) : 0;
  f.ilim = 2 * f.vmax;
  f.b2 = float(a.beta2);
  f.c1 = float((1.0 - a.beta2) / double(w.I));
  f.inv_bc = d.inv_bc;
  f.inv_o = 1.0f / float(w.O);
  if (CastRecorder* r = cast_recorder(); r && a.cast) {  // a graph's cast: the scalars from a slot
    const int64_t k = int64_t(r->slots.size());
    PRIMAL_CHECK(k < r->capacity, "cast recorder: more than {} casts in one graph", r->capacity);
    r->slots.push_back({st, st->events, st->events_this_step});
    r->host[k] = d;
    f.dyn = r->device + k;
  }
  return f;
}

float* cast_part_reserve(const LutTrainView& w, const CastArgs& a, VoteState* st, int64_t o0, int64_t rows,
                         int64_t reserve, bool* queued, cudaStream_t s) {
  *queued = false;
  if (!(a.cast && a.sm)) return nullptr;
  CastFoldQueue* queue = st->ws->queue;
  *queued = queue && o0 == 0 && rows == w.O;
  if (queue) {
    bool flush = !*queued || int64_t(queue->items.size()) == kFoldBatchMax ||
                 queue->used + reserve > st->ws->part_floats;
    for (const CastFoldItem& it : queue->items) flush = flush || it.col_sq == st->col_sq;
    if (flush) cast_fold_flush(*st->ws, s);
  }
  float* part = st->ws->part + (*queued ? queue->used : 0);
  if (*queued) queue->used += reserve;
  return part;
}

void cast_part_finish(const LutTrainView& w, const CastArgs& a, VoteState* st, float* part, bool queued, int64_t nb,
                      int64_t o0, int64_t rows, cudaStream_t s) {
  if (queued) {
    st->ws->queue->items.push_back({part, nb, w.I, a.beta2, st->col_sq, st->col_norm});
    st->folded = true;
  } else if (a.cast && a.sm) {
    const bool first = o0 == 0, final = o0 + rows == w.O;
    col_fold_kernel<<<unsigned((w.I + 31) / 32), 32 * kFoldSlices, 0, s>>>(part, int(nb), w.I, first, final, a.beta2,
                                                                          *st->ws, st->col_sq, st->col_norm);
    PRIMAL_CUDA_CHECK_LAUNCH();
    if (final) st->folded = true;
  }
}

bool cast_rows_fast(const LutTrainView& w, const CastArgs& a, VoteState* st, const VoteParams* p, const float* dW,
                    const uint16_t* dWb, int64_t o0, int64_t rows, float* dscale, cudaStream_t s) {
  if (!cast_rows_fast_ok(w, a, st, p)) return false;
  const int64_t chunks = w.I / 8;
  const bool sm_cast = a.cast && a.sm;
  const int cpt = cast_chunks_per_thread(chunks);  // (1, 2 or 4: cast_fast_serves bounds the row)
  const int threads = int(((chunks + cpt - 1) / cpt + 31) / 32 * 32);
  // One chunk a thread keeps its columns' sums and sqrt(col_norm) in registers (cast_rows_kernel).
  const size_t smem = size_t(sm_cast && cpt > 1 ? 2 : 0) * size_t(w.I) * sizeof(float);
  const Mat m = vk::mat_of(w);
  // A whole matrix with a queue: its block sums in the next free region of part, its fold queued.
  bool queued = false;
  float* part = cast_part_reserve(w, a, st, o0, rows, cast_part_floats(rows, w.I), &queued, s);
  int8_t* votes = a.cast ? st->v8 : nullptr;
  const FastArgs f = fast_args(w, a, st, p);
  int64_t nb = 0;
#define PRIMAL_CAST(B_, CPT_)                                                                                    \
  if (dWb) launch_cast<uint16_t, B_, CPT_>(m, votes, a, f, dWb, o0, rows, dscale, part, threads, smem, &nb, s); \
  else launch_cast<float, B_, CPT_>(m, votes, a, f, dW, o0, rows, dscale, part, threads, smem, &nb, s)
#define PRIMAL_LAUNCH(B_)  \
  if (cpt == 1) {          \
    PRIMAL_CAST(B_, 1);    \
  } else if (cpt == 2) {   \
    PRIMAL_CAST(B_, 2);    \
  } else {                 \
    PRIMAL_CAST(B_, 4);    \
  }
  PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
#undef PRIMAL_CAST
  cast_part_finish(w, a, st, part, queued, nb, o0, rows, s);
  return true;
}

size_t apply_batch_desc_bytes(size_t items) { return std::max<size_t>(1, items) * sizeof(ApplyDesc); }

void lut_votes_apply_batch(const std::vector<ApplyItem>& items, const VoteParams& p, unsigned long long* flips,
                           void* desc, cudaStream_t s) {
  PRIMAL_CHECK(flips, "lut_votes_apply_batch: no flip counter");
  const bool one_by_one = votes_v1();
  std::vector<ApplyDesc> d;
  std::vector<int> bits;
  for (const ApplyItem& it : items) {
    check_lut_view(it.w, "lut_votes_apply_batch");
    PRIMAL_CHECK(it.st, "lut_votes_apply_batch: an item without votes");
    if (one_by_one || !apply_batch_ok(it.w, p) || !it.st->v8) {
      lut_votes_apply(it.w, *it.st, p, flips, s);
      continue;
    }
    const int64_t words = it.w.O * it.w.I / 8;
    if (words == 0) continue;
    PRIMAL_CHECK(it.w.row_bytes() == int64_t(it.w.bits()) * (it.w.I / 8), "lut_votes_apply_batch: rows not packed");
    d.push_back({it.w.idx, it.st->v8, it.w.K(), words, 0,
                 (words + kApplyThreads * kApplyWords * kApplyTiles - 1) / (kApplyThreads * kApplyWords * kApplyTiles)});
    bits.push_back(it.w.bits());
  }
  if (d.empty()) return;
  PRIMAL_CHECK(desc, "lut_votes_apply_batch: no descriptor memory");
  // One launch per index width: the descriptors grouped by width, each group's blocks from 0.
  std::vector<size_t> order(d.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return bits[x] < bits[y]; });
  std::vector<ApplyDesc> sorted;
  std::vector<std::pair<int, size_t>> groups;  // (bits, first descriptor)
  int64_t b0 = 0;
  for (size_t k : order) {
    if (groups.empty() || groups.back().first != bits[k]) groups.push_back({bits[k], sorted.size()}), b0 = 0;
    ApplyDesc x = d[k];
    x.block0 = b0;
    b0 += x.nb;
    sorted.push_back(x);
  }
  copy_to_device_async(desc, sorted.data(), sorted.size() * sizeof(ApplyDesc), s);
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const size_t first = groups[gi].second, end = gi + 1 < groups.size() ? groups[gi + 1].second : sorted.size();
    const int64_t blocks = sorted[end - 1].block0 + sorted[end - 1].nb;
    PRIMAL_CHECK(blocks < (int64_t(1) << 31), "lut_votes_apply_batch: {} blocks", blocks);
    const ApplyDesc* dd = static_cast<const ApplyDesc*>(desc) + first;
#define PRIMAL_LAUNCH(B_) launch_apply<B_>(dd, int(end - first), blocks, flips, s)
    PRIMAL_LUT_BITS_SWITCH(groups[gi].first, PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  }
}

}  // namespace primal::cuda
