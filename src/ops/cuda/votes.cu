// Integer votes on the GPU (votes.h): the cast of a gradient tile (with dscale), the end of a
// backward call, and the optimizer step of both rules, each kernel a transcription of the
// corresponding lines of train/votes.cpp and train/linear.cpp.
//
// Floating-point discipline: nvcc contracts a * b + c into an FMA, which rounds once where the
// CPU (x86-64, no FMA in the baseline ISA) rounds twice. Every operation whose result must equal
// the CPU's is therefore written with an explicitly rounded intrinsic (__dmul_rn, __dadd_rn,
// __ddiv_rn, __dsqrt_rn, __fmul_rn, __fadd_rn, __fsub_rn) in the CPU's evaluation order.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cuda/check.cuh"
#include "ops/cuda/lut_train.cuh"
#include "ops/cuda/rng.cuh"
#include "ops/cuda/votes.h"
#include "ops/cuda/votes_common.cuh"

namespace primal::cuda {
namespace {

using vk::add_count;
using vk::CastArgs;
using vk::fast_uniform;
using vk::Mat;
using vk::mat_of;

// Purposes of the random streams (votes.cpp).
constexpr uint64_t kRound = 1, kNoise = 2, kFlip = 3;

// The votes and cooldowns of one matrix (absent members null).
struct Votes {
  int8_t* v8;
  int16_t* v16;
  uint8_t* cool;   // null: no cooldown
  int64_t vmax;    // saturation
  int64_t U;       // votes per bucket (momentum)
  __device__ int32_t get(int64_t k) const { return v8 ? int32_t(v8[k]) : int32_t(v16[k]); }
  __device__ void set(int64_t k, int32_t v) const {
    if (v8) v8[k] = int8_t(v);
    else v16[k] = int16_t(v);
  }
};

Votes votes_of(const VoteState* st, const VoteParams* p) {
  if (!st) return {nullptr, nullptr, nullptr, 0, 0};
  return {st->v8, st->v16, st->cool, p->vmax(), p->units()};
}

// votes.cpp sat(): std::clamp to [-vmax, vmax].
__device__ __forceinline__ int32_t sat(int64_t v, int64_t vmax) {
  return int32_t(v < -vmax ? -vmax : vmax < v ? vmax : v);
}

// Exclusive prefix sum of x over the block (blockDim.x a multiple of 32); *total: the block's
// sum. Every thread of the block must call it. warp_tot: 32 ints of shared memory.
__device__ int block_exclusive_scan(int x, int* warp_tot, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  int inc = x;
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inc, d);
    if (lane >= d) inc += y;
  }
  __syncthreads();  // warp_tot may still be read from the previous call
  if (lane == 31) warp_tot[warp] = inc;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < n_warps; ++w) {
    const int t = warp_tot[w];
    if (w < warp) before += t;
    all += t;
  }
  *total = all;
  return before + inc - x;
}

// ---- the cast of a tile (VoteEngine::tile and linear.cpp's dscale) ------------------------------

// A warp per row o = o0 + r of the tile(s) dW (rows, I), kRowsPerBlock rows per block:
//  - dscale[o, g] += float(sum_{i in g} double(dW[o, i]) * double(grid[idx[o, i]])), a lane per
//    group (the sum in index order as linear.cpp);
//  - the row statistic (seed: the threshold mean + k std of |g|; momentum: row_sq's EMA and rhat)
//    from fp64 sums in the warp's order that votes.cpp's warp_order_sums writes down: lane j sums
//    i = j, j + 32, ..., then a butterfly of shuffles (every lane ends with the same bits);
//  - then every lane casts the votes of its columns (cast_seed / cast_momentum). The rounding
//    draw of weight i is draw i + 1 of the row's stream: the CPU draws once per weight in order.
constexpr int kRowsPerBlock = lut::kThreads / 32;

template <int B>
__global__ void grad_rows_kernel(const Mat m, const Votes v, const CastArgs a, const float* dW, int64_t o0,
                                 int64_t rows, float* dscale) {
  const int lane = int(threadIdx.x & 31);
  const int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // the whole warp leaves together
  const int64_t I = m.I, o = o0 + r;
  const float* g = dW + r * I;
  const uint8_t* row = m.idx + o * m.row_bytes;
  const float* sc = m.scale + o * m.groups;

  if (dscale && a.fast && m.G % 32 == 0) {
    // The bf16 mode: lane j adds g grid over i = j, j + 32, ... (fp32) and the warp sums a group
    // by shuffles when its last 32 columns are in: coalesced, where a lane per group reads 32
    // scattered rows of memory per instruction.
    const int per = int(m.G / 32);
    float acc = 0.0f;
    int cnt = 0;
    int64_t gi = 0;
    for (int64_t i = lane; i < I; i += 32) {
      acc += g[i] * m.grid[lut::get_index<B>(row, i)];
      if (++cnt < per) continue;
      for (int d = 16; d > 0; d /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, d);
      if (lane == 0) dscale[o * m.groups + gi] += acc;
      acc = 0.0f, cnt = 0, ++gi;
    }
  } else if (dscale) {
    for (int64_t gi = lane; gi < m.groups; gi += 32) {
      double s = 0;
      for (int64_t i = gi * m.G; i < (gi + 1) * m.G; ++i)
        s = __dadd_rn(s, __dmul_rn(double(g[i]), double(m.grid[lut::get_index<B>(row, i)])));
      dscale[o * m.groups + gi] = __fadd_rn(dscale[o * m.groups + gi], float(s));
    }
  }
  if (!a.cast) return;

  double stat = 1.0;
  if (a.seed_rule || a.sm) {
    double x = 0, y = 0;  // seed: sum |g|, sum g^2; momentum: sum g^2
    for (int64_t i = lane; i < I; i += 32) {
      const double gi = double(g[i]);
      if (a.seed_rule) {
        const double ag = fabs(gi);
        x = __dadd_rn(x, ag);
        y = __dadd_rn(y, __dmul_rn(ag, ag));
      } else {
        x = __dadd_rn(x, __dmul_rn(gi, gi));
      }
    }
    for (int d = 16; d > 0; d /= 2) {
      x = __dadd_rn(x, __shfl_xor_sync(0xffffffffu, x, d));
      y = __dadd_rn(y, __shfl_xor_sync(0xffffffffu, y, d));
    }
    if (a.seed_rule) {
      const double mean = __ddiv_rn(x, double(I));
      double var = __dsub_rn(__ddiv_rn(y, double(I)), __dmul_rn(mean, mean));
      var = 0.0 < var ? var : 0.0;  // std::max(0.0, var)
      stat = __dadd_rn(mean, __dmul_rn(a.sensitivity, __dsqrt_rn(var)));
    } else {
      // r = float(b2 row_sq + (1 - b2) g2 / I); rhat = r / (1 - b2^(events + 1))
      const double b2 = a.beta2;
      const float old = a.row_sq[o];
      const float rs = float(__dadd_rn(__dmul_rn(b2, double(old)), __ddiv_rn(__dmul_rn(__dsub_rn(1.0, b2), x), double(I))));
      __syncwarp();  // every lane has read row_sq[o]
      if (lane == 0) a.row_sq[o] = rs;
      stat = __ddiv_rn(double(rs), a.bc);
    }
  }

  if (a.seed_rule) {  // |g| > thr  =>  v += -sign(g s)
    for (int64_t i = lane; i < I; i += 32) {
      const float gi = g[i];
      if (!(fabs(double(gi)) > stat)) continue;
      const float s = sc[int(i) / int(m.G)];
      if (s == 0.0f) continue;
      const int dir = ((gi > 0) == (s > 0)) ? -1 : 1;
      const int64_t k = o * I + i;
      v.set(k, sat(int64_t(v.get(k)) + dir, v.vmax));
    }
    return;
  }

  // Momentum: x = -lr g / (sqrt(rhat chat_i) + eps) / s / gap * U, stochastically rounded.
  const CounterRng rng = CounterRng::from_prefix(a.prefix, uint64_t(o));
  const double lim = double(2 * v.vmax), neg_lr = -a.lr;
  const int64_t K = m.K;
  if (a.fast) {
    // The bf16 mode (gradients from bf16 GEMMs, not held to the CPU's bits): the same rule with
    // one fp32 division per weight, x = (-lr U) g / ((sqrt(rhat chat_i) + eps) s gap), instead
    // of four fp64 divisions and a square root (fp64 runs at half the fp32 rate on an H100 and
    // its division is a software sequence: this loop was the cast's cost).
    const float c = float(__dmul_rn(neg_lr, double(v.U))), statf = float(stat), epsf = float(a.eps);
    const float limf = float(lim);
    const uint32_t key = uint32_t(rng.s0) ^ uint32_t(rng.s0 >> 32);
    for (int64_t i = lane; i < I; i += 32) {
      const float s = sc[int(i) / int(m.G)], gi = g[i];
      const float u01 = fast_uniform(key, uint32_t(i));
      if (s == 0.0f || gi == 0.0f || c == 0.0f) continue;
      const float denom = a.sm ? sqrtf(statf * a.col_norm[i]) + epsf : 1.0f;
      const bool up = (gi > 0) != (s > 0);  // the sign of the index change -lr g / s
      const int64_t q = lut::get_index<B>(row, i);
      float gap;
      if (up) gap = q < K - 1 ? m.grid[q + 1] - m.grid[q] : m.grid[K - 1] - m.grid[K - 2];
      else gap = q > 0 ? m.grid[q] - m.grid[q - 1] : m.grid[1] - m.grid[0];
      float x = c * gi / (denom * s * gap);
      x = x < -limf ? -limf : limf < x ? limf : x;
      const float fl = floorf(x);
      const int64_t add = int64_t(fl) + (u01 < x - fl ? 1 : 0);
      const int64_t k = o * I + i;
      v.set(k, sat(int64_t(v.get(k)) + add, v.vmax));
    }
    return;
  }
  for (int64_t i = lane; i < I; i += 32) {
    const float s = sc[int(i) / int(m.G)];
    const double denom = a.sm ? __dadd_rn(__dsqrt_rn(__dmul_rn(stat, double(a.col_norm[i]))), a.eps) : 1.0;
    const double dw = __ddiv_rn(__dmul_rn(neg_lr, double(g[i])), denom);
    const float u01 = rng.uniform_at(uint64_t(i) + 1);
    if (s == 0.0f || dw == 0.0) continue;
    const double di = __ddiv_rn(dw, double(s));
    const int64_t q = lut::get_index<B>(row, i);
    float gap;  // fp32 difference of two grid values, as the CPU's float expression
    if (di > 0) gap = q < K - 1 ? __fsub_rn(m.grid[q + 1], m.grid[q]) : __fsub_rn(m.grid[K - 1], m.grid[K - 2]);
    else gap = q > 0 ? __fsub_rn(m.grid[q], m.grid[q - 1]) : __fsub_rn(m.grid[1], m.grid[0]);
    double x = __dmul_rn(__ddiv_rn(di, double(gap)), double(v.U));
    x = x < -lim ? -lim : lim < x ? lim : x;  // std::clamp
    const double fl = floor(x);
    const int64_t add = int64_t(fl) + (double(u01) < __dsub_rn(x, fl) ? 1 : 0);
    const int64_t k = o * I + i;
    v.set(k, sat(int64_t(v.get(k)) + add, v.vmax));
  }
}

// The bf16 mode's momentum cast (with dscale), a block of kFastThreads per row: the same rule as
// grad_rows_kernel's `a.fast` branch, written for throughput (that kernel, a warp per row, was
// instruction- and latency-bound: a warp per 8960-long row of w_down left most of the GPU idle,
// and each weight paid a division, three grid loads from global memory and byte-wise vote and
// index accesses). Here each thread takes 4 consecutive columns at a time (one float4 of the
// gradient, of col_norm, one 32-bit word of int8 votes), the grid and the reciprocals of its
// gaps sit in shared memory, and the row statistic is a block reduction in fp32. Two passes over
// the row (its gradient is re-read from L1/L2): dscale and sum g^2, then the votes.
// Preconditions (fast_cast_ok): momentum rule with int8 votes (or dscale alone), K <= 256,
// I % 4 == 0, G / 4 a power of two up to 32.
constexpr int kFastThreads = 128;
constexpr int kFastMaxK = 256;

bool fast_cast_ok(const LutTrainView& w, const CastArgs& a, const VoteParams* p) {
  if (!a.fast || (a.cast && a.seed_rule)) return false;
  if (a.cast && p->vote_bits != 8) return false;
  const int64_t per = w.G / 4;  // chunks per scale group: a power of two up to a warp
  return w.K() <= kFastMaxK && w.I % 4 == 0 && w.G % 4 == 0 && per <= 32 && (per & (per - 1)) == 0;
}

__device__ __forceinline__ float block_sum(float x, float* sh) {
  for (int d = 16; d > 0; d /= 2) x += __shfl_xor_sync(0xffffffffu, x, d);
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  __syncthreads();  // sh may still be read from a previous call
  if (lane == 0) sh[warp] = x;
  __syncthreads();
  float t = 0.0f;
  for (int w = 0; w < kFastThreads / 32; ++w) t += sh[w];  // warp order: run-to-run deterministic
  return t;
}

template <int B>
__global__ void __launch_bounds__(kFastThreads) grad_rows_fast_kernel(const Mat m, const Votes v, const CastArgs a,
                                                                       const float* dW, int64_t o0, int64_t rows,
                                                                       float* dscale) {
  __shared__ float grid[kFastMaxK], inv_up[kFastMaxK], inv_dn[kFastMaxK];
  __shared__ float red[kFastThreads / 32];
  if constexpr (B > 8) return;  // never launched (fast_cast_ok): LUT16's grid does not fit
  const int K = int(m.K), I = int(m.I), G = int(m.G), chunks = I / 4, per = G / 4;
  for (int q = int(threadIdx.x); q < K; q += kFastThreads) {
    const float gq = m.grid[q];
    grid[q] = gq;
    // The gap in the direction of the change (the end of the grid takes its last gap).
    inv_up[q] = 1.0f / (q < K - 1 ? m.grid[q + 1] - gq : gq - m.grid[q - 1]);
    inv_dn[q] = 1.0f / (q > 0 ? gq - m.grid[q - 1] : m.grid[1] - gq);
  }
  __syncthreads();
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t o = o0 + r;
    const float4* g4 = reinterpret_cast<const float4*>(dW + r * I);
    const uint8_t* row = m.idx + o * m.row_bytes;
    const float* sc = m.scale + o * m.groups;
    // Pass 1: dscale (a group is `per` consecutive chunks, held by `per` consecutive lanes) and
    // sum g^2.
    float sq = 0.0f;
    for (int base = 0; base < chunks; base += kFastThreads) {
      const int c = base + int(threadIdx.x);
      float part = 0.0f;
      if (c < chunks) {
        const float4 g = g4[c];
        sq += g.x * g.x + g.y * g.y + g.z * g.z + g.w * g.w;
        if (dscale) {
          const int i = 4 * c;
          part = g.x * grid[lut::get_index<B>(row, i)] + g.y * grid[lut::get_index<B>(row, i + 1)] +
                 g.z * grid[lut::get_index<B>(row, i + 2)] + g.w * grid[lut::get_index<B>(row, i + 3)];
        }
      }
      if (dscale) {  // every lane shuffles (groups lie wholly inside or outside the row)
        for (int d = per / 2; d > 0; d /= 2) part += __shfl_xor_sync(0xffffffffu, part, d);
        if (c < chunks && c % per == 0) dscale[o * m.groups + c / per] += part;
      }
    }
    if (!a.cast) continue;
    float stat = 1.0f;
    if (a.sm) {
      const float tot = block_sum(sq, red);
      // r = float(b2 row_sq + (1 - b2) g2 / I); rhat = r / (1 - b2^(events + 1))
      const float rs = float(a.beta2 * double(a.row_sq[o]) + (1.0 - a.beta2) * double(tot) / double(I));
      __syncthreads();  // every thread has read row_sq[o]
      if (threadIdx.x == 0) a.row_sq[o] = rs;
      stat = float(double(rs) / a.bc);
    }
    // Pass 2: x = (-lr U) g / ((sqrt(rhat chat_i) + eps) s gap), stochastically rounded.
    const float c0 = float(-a.lr * double(v.U)), epsf = float(a.eps), limf = float(2 * v.vmax);
    if (c0 == 0.0f) continue;
    const uint32_t key = [&] {
      const CounterRng rng = CounterRng::from_prefix(a.prefix, uint64_t(o));
      return uint32_t(rng.s0) ^ uint32_t(rng.s0 >> 32);
    }();
    const float4* cn4 = reinterpret_cast<const float4*>(a.col_norm);
    char4* v4 = reinterpret_cast<char4*>(v.v8 + o * I);
    // (pass 2 re-reads the row from L1/L2: holding it in registers between the passes measured
    // slower on seed-500m, more registers per thread leaving fewer resident blocks)
    for (int c = int(threadIdx.x); c < chunks; c += kFastThreads) {
      const int i = 4 * c;
      const float s = sc[i / G];
      if (s == 0.0f) continue;
      const float4 g = g4[c];
      const float4 cn = a.sm ? cn4[c] : make_float4(0.f, 0.f, 0.f, 0.f);
      char4 vv = v4[c];
      const float gs[4] = {g.x, g.y, g.z, g.w}, cns[4] = {cn.x, cn.y, cn.z, cn.w};
      int8_t* vp = reinterpret_cast<int8_t*>(&vv);
      const float cs = c0 / s;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float gi = gs[e];
        if (gi == 0.0f) continue;
        const float denom = a.sm ? sqrtf(stat * cns[e]) + epsf : 1.0f;
        const int q = int(lut::get_index<B>(row, i + e));
        const bool up = (gi > 0) != (s > 0);  // the sign of the index change -lr g / s
        float x = __fdividef(cs * gi * (up ? inv_up[q] : inv_dn[q]), denom);
        x = x < -limf ? -limf : limf < x ? limf : x;
        const float fl = floorf(x);
        const int add = int(fl) + (fast_uniform(key, uint32_t(i + e)) < x - fl ? 1 : 0);
        const int nv = int(vp[e]) + add;
        vp[e] = int8_t(nv < -v.vmax ? -v.vmax : v.vmax < nv ? v.vmax : nv);
      }
      v4[c] = vv;
    }
  }
}

// The column sums of g^2 / O of each tile in dW (rows, I), rows in order within the tile, in
// fp32 as votes.cpp: part[t, i] = sum_{r in tile t} (g[r, i] g[r, i]) inv_o. A thread per (t, i).
// The rows' values are loaded 8 at a time before they are added (in order): 8 loads in flight per
// thread instead of a load-add chain (few threads: one per column of a tile).
__global__ void col_part_kernel(const float* dW, int64_t rows, int64_t I, int64_t R, float inv_o, float* part) {
  constexpr int kBatch = 8;
  const int64_t n_t = (rows + R - 1) / R, total = n_t * I;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = k / I, i = k - t * I, r1 = (t + 1) * R < rows ? (t + 1) * R : rows;
    float p = 0.0f;
    int64_t r = t * R;
    for (; r + kBatch <= r1; r += kBatch) {
      float x[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) x[u] = dW[(r + u) * I + i];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) p = __fadd_rn(p, __fmul_rn(__fmul_rn(x[u], x[u]), inv_o));
    }
    for (; r < r1; ++r) {
      const float x = dW[r * I + i];
      p = __fadd_rn(p, __fmul_rn(__fmul_rn(x, x), inv_o));
    }
    part[k] = p;
  }
}

// ---- the end of a backward call (VoteEngine::done, update_col_norm) -----------------------------

// col_sq[i] = float(b2 col_sq[i] + (1 - b2) sum_t part[t, i]), the sum in fp64 in tile order.
// A thread per column; the tile values are loaded 16 at a time before they are added (in
// order), so 16 loads are in flight instead of one per dependent addition (the head has
// thousands of tiles: a load-add chain took a millisecond).
__global__ void col_sq_kernel(const float* part, int64_t n_tiles, int64_t I, double b2, float* col_sq) {
  constexpr int kBatch = 16;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < I; i += int64_t(gridDim.x) * blockDim.x) {
    double c = 0;
    int64_t t = 0;
    for (; t + kBatch <= n_tiles; t += kBatch) {
      float x[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) x[u] = part[(t + u) * I + i];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) c = __dadd_rn(c, double(x[u]));
    }
    for (; t < n_tiles; ++t) c = __dadd_rn(c, double(part[t * I + i]));
    col_sq[i] = float(__dadd_rn(__dmul_rn(b2, double(col_sq[i])), __dmul_rn(__dsub_rn(1.0, b2), c)));
  }
}

// col_norm = col_sq / mean(col_sq) (1 where the mean is not positive); one block, the mean by
// thread 0 in index order as the CPU, from chunks the whole block stages in shared memory (a
// lone thread reading global memory value after value took over a millisecond for I = 8960).
constexpr int kNormChunk = 4096;

__global__ void col_norm_kernel(const float* col_sq, int64_t I, float* col_norm) {
  __shared__ double mean_sh;
  __shared__ float chunk[kNormChunk];
  double s = 0;
  for (int64_t c0 = 0; c0 < I; c0 += kNormChunk) {
    const int n = int(I - c0 < kNormChunk ? I - c0 : kNormChunk);
    for (int k = int(threadIdx.x); k < n; k += int(blockDim.x)) chunk[k] = col_sq[c0 + k];
    __syncthreads();
    if (threadIdx.x == 0)
      for (int k = 0; k < n; ++k) s = __dadd_rn(s, double(chunk[k]));
    __syncthreads();
  }
  if (threadIdx.x == 0) mean_sh = __ddiv_rn(s, double(I));
  __syncthreads();
  const double mean = mean_sh;
  for (int64_t i = threadIdx.x; i < I; i += blockDim.x)
    col_norm[i] = mean > 0 ? float(__ddiv_rn(double(col_sq[i]), mean)) : 1.0f;
}

// The bf16 mode's end of a backward call in one block of kNormThreads: with `fold`, each thread
// first folds its columns' tile sums into col_sq's EMA (col_sq_kernel's job, for matrices whose
// tile sums are few: n_tiles I <= kColStatsMax, at most 64 loads a thread; one block reading
// seed-500m's w_down partials, 249K values, was slower than col_sq_kernel's many blocks); then
// col_norm = col_sq / mean(col_sq), the mean by a block reduction (every thread sums a strided
// share in fp64, the warps' totals added in warp order: run-to-run deterministic, not the CPU's
// order) instead of one thread's chain, which took 7-20 us per backward call.
constexpr int kNormThreads = 1024;
constexpr int64_t kColStatsMax = int64_t(1) << 16;

__global__ void __launch_bounds__(kNormThreads) col_stats_fast_kernel(bool fold, const float* part, int64_t n_tiles,
                                                                      int64_t I, double b2, float* col_sq,
                                                                      float* col_norm) {
  __shared__ double red[kNormThreads / 32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < I; i += kNormThreads) {
    float x = col_sq[i];
    if (fold) {
      double c = 0;
      int64_t t = 0;
      for (; t + 16 <= n_tiles; t += 16) {  // 16 loads in flight, then their sum
        float y[16];
#pragma unroll
        for (int u = 0; u < 16; ++u) y[u] = part[(t + u) * I + i];
#pragma unroll
        for (int u = 0; u < 16; ++u) c += double(y[u]);
      }
      for (; t < n_tiles; ++t) c += double(part[t * I + i]);
      x = float(b2 * double(x) + (1.0 - b2) * c);
      col_sq[i] = x;
    }
    s += double(x);
  }
  for (int d = 16; d > 0; d /= 2) s += __shfl_xor_sync(0xffffffffu, s, d);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  double tot = 0;
  for (int w = 0; w < kNormThreads / 32; ++w) tot += red[w];
  const double mean = tot / double(I);
  for (int64_t i = threadIdx.x; i < I; i += kNormThreads)  // the columns this thread read (and wrote)
    col_norm[i] = mean > 0 ? float(double(col_sq[i]) / mean) : 1.0f;
}

__global__ void fill_kernel(float* p, int64_t n, float value) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x)
    p[k] = value;
}

// ---- the optimizer step (VoteEngine::apply_momentum / apply_seed) -------------------------------

// Momentum: a thread per packing group of kGroup<B> indices (it owns their bytes). Weight i of
// row o takes draw i + 1 of the row's noise stream (the CPU draws once per weight when noise > 0).
template <int B>
__global__ void apply_momentum_kernel(const Mat m, const Votes v, int noise, int cooldown, uint64_t noise_prefix,
                                      unsigned long long* flips) {
  // A block per row (grid-stride), a thread per packing group along it: no 64-bit division per
  // group, and the row's noise stream is set up once per thread and row.
  constexpr int P = lut::kGroup<B>;
  const int64_t I = m.I, per_row = I / P, U = v.U;
  unsigned long long local = 0;
  for (int64_t o = blockIdx.x; o < m.O; o += gridDim.x) {
    uint8_t* row = m.idx + o * m.row_bytes;
    const CounterRng rng = CounterRng::from_prefix(noise_prefix, uint64_t(o));
    for (int64_t u = threadIdx.x; u < per_row; u += blockDim.x) {
      const int64_t i0 = u * P;
      for (int e = 0; e < P; ++e) {
        const int64_t i = i0 + e, k = o * I + i;
        int64_t x = v.get(k);
        if (noise > 0) x = sat(x + rng.range_at(uint64_t(i) + 1, -noise, noise), v.vmax);
        if (v.cool && v.cool[k] > 0) {
          v.cool[k] = uint8_t(v.cool[k] - 1);
          v.set(k, int32_t(x));
          continue;
        }
        const int64_t q = int32_t(x) / int32_t(U);  // truncates toward zero, as C++ on the CPU (32-bit: |x| <= vmax)
        if (q != 0) {
          const int64_t cur = lut::get_index<B>(row, i), want = cur + q;
          const int64_t next = want < 0 ? 0 : m.K - 1 < want ? m.K - 1 : want, moved = next - cur;
          x -= moved * U;
          if (moved != q) x = x < -(U - 1) ? -(U - 1) : U - 1 < x ? U - 1 : x;  // held at the end of the grid
          if (moved != 0) {
            lut::set_index<B>(row, i, uint32_t(next));
            if (v.cool) v.cool[k] = uint8_t(cooldown);
            ++local;
          }
        }
        v.set(k, int32_t(x));
      }
    }
  }
  add_count(local, flips);
}

// Momentum without noise or cooldown, int8 votes, I % 8 == 0 (apply_fast_ok): the same integer
// steps as apply_momentum_kernel, so the same indices, votes and flip count, but a thread per 8
// consecutive weights reads their votes as one 64-bit word and leaves at once when none of them
// reaches a unit (|v| < U = 64): the common case, which the byte-wise kernel paid a division and
// an index read for. 8 weights are whole packing groups for every width up to 8 bits.
bool apply_fast_ok(const LutTrainView& w, const VoteParams& p) {
  return p.rule == VoteRule::Momentum && p.noise == 0 && p.cooldown == 0 && p.vote_bits == 8 && w.I % 8 == 0 &&
         w.bits() <= 8;
}

template <int B>
__global__ void apply_momentum_fast_kernel(const Mat m, int8_t* votes, unsigned long long* flips) {
  if constexpr (B <= 8) {  // (LUT16 is never launched: apply_fast_ok)
    const int64_t I8 = m.I / 8, total = m.O * I8;
    unsigned long long local = 0;
    for (int64_t k8 = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k8 < total; k8 += int64_t(gridDim.x) * blockDim.x) {
      uint2 word = reinterpret_cast<const uint2*>(votes)[k8];
      if (!vk::any_unit(word)) continue;
      const int64_t o = k8 / I8, i0 = (k8 - o * I8) * 8;
      local += unsigned(vk::apply8<B>(word, m.idx + o * m.row_bytes + i0 / 8 * B, m.K));
      reinterpret_cast<uint2*>(votes)[k8] = word;
    }
    add_count(local, flips);
  }
}

// Seed rule, pass 1 (a thread per weight): the jitter (draw i + 1 of the row's noise stream)
// and the tensor's sums of |v| and v^2, exact in 64-bit integers.
__global__ void seed_noise_kernel(const Mat m, const Votes v, int noise, uint64_t noise_prefix,
                                  unsigned long long* sums) {
  const int64_t I = m.I, total = m.O * I;
  unsigned long long a = 0, a2 = 0;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    int64_t x = v.get(k);
    if (noise > 0) {
      const int64_t o = k / I, i = k - o * I;
      x = sat(x + CounterRng::from_prefix(noise_prefix, uint64_t(o)).range_at(uint64_t(i) + 1, -noise, noise), v.vmax);
      v.set(k, int32_t(x));
    }
    const unsigned long long ax = static_cast<unsigned long long>(x < 0 ? -x : x);
    a += ax;
    a2 += ax * ax;
  }
  add_count(a, sums);
  add_count(a2, sums + 1);
}

// Seed rule, pass 2: a block per row, a thread per packing group. The CPU draws a flip uniform
// only for weights that are not cooling and have |v| >= consensus, in index order, so the draw
// number of such a weight is 1 + the number of such weights before it in the row: a block scan
// over the row's groups, chunk by chunk.
template <int B>
__global__ void seed_flip_kernel(const Mat m, const Votes v, int consensus, int cooldown, double pscale,
                                 uint64_t flip_prefix, const unsigned long long* sums, unsigned long long* flips) {
  constexpr int P = lut::kGroup<B>;
  __shared__ int warp_tot[32];
  const int64_t I = m.I, o = blockIdx.x, per_row = I / P;
  // The tensor's z-score statistics, as the CPU: mean = sum / n, sd = sqrt(max(0, sum2 / n - mean^2)).
  const double n = double(m.O * I), mean = __ddiv_rn(double(sums[0]), n);
  const double var = __dsub_rn(__ddiv_rn(double(sums[1]), n), __dmul_rn(mean, mean));
  const double sd = __dsqrt_rn(0.0 < var ? var : 0.0);
  const CounterRng rng = CounterRng::from_prefix(flip_prefix, uint64_t(o));
  uint8_t* row = m.idx + o * m.row_bytes;
  unsigned long long local = 0;
  uint64_t offset = 0;  // draws taken by the row's earlier chunks
  for (int64_t base = 0; base < per_row; base += blockDim.x) {
    const int64_t u = base + threadIdx.x;
    const bool mine = u < per_row;
    int cnt = 0;
    if (mine) {
      for (int e = 0; e < P; ++e) {
        const int64_t k = o * I + u * P + e;
        const int32_t x = v.get(k);
        if (!(v.cool && v.cool[k] > 0) && (x < 0 ? -x : x) >= consensus) ++cnt;
      }
    }
    int chunk_total = 0;
    const int before = block_exclusive_scan(cnt, warp_tot, &chunk_total);
    if (mine) {
      uint64_t draw = offset + uint64_t(before);
      for (int e = 0; e < P; ++e) {
        const int64_t i = u * P + e, k = o * I + i;
        if (v.cool && v.cool[k] > 0) {
          v.cool[k] = uint8_t(v.cool[k] - 1);
          continue;
        }
        const int32_t x = v.get(k), ax = x < 0 ? -x : x;
        if (ax < consensus) continue;
        ++draw;
        const double z = sd > 0 ? __ddiv_rn(__dsub_rn(double(ax), mean), sd) : 0.0;
        const double q = __ddiv_rn(pscale, __dadd_rn(1.0, exp(-z)));
        const double p = q < 1.0 ? q : 1.0;  // std::min(1.0, q)
        if (!(double(rng.uniform_at(draw)) < p)) continue;
        const int64_t cur = lut::get_index<B>(row, i), next = cur + (x > 0 ? 1 : -1);
        v.set(k, 0);
        if (next < 0 || next >= m.K) continue;  // a vote against the end of the grid is dropped
        lut::set_index<B>(row, i, uint32_t(next));
        if (v.cool) v.cool[k] = uint8_t(cooldown);
        ++local;
      }
    }
    offset += uint64_t(chunk_total);
  }
  add_count(local, flips);
}

void check_state(const LutTrainView& w, const VoteState& st, const VoteParams& p, const char* what) {
  PRIMAL_CHECK(p.vote_bits == 8 || p.vote_bits == 16, "{}: vote bits {}", what, p.vote_bits);
  PRIMAL_CHECK(p.vote_bits == 8 ? (st.v8 != nullptr) : (st.v16 != nullptr), "{}: no int{} votes", what, p.vote_bits);
  PRIMAL_CHECK(p.cooldown == 0 || st.cool, "{}: a cooldown of {} without cooldown counters", what, p.cooldown);
  PRIMAL_CHECK(!p.moments() || (st.row_sq && st.col_sq && st.col_norm && (st.col_part || st.ws)),
               "{}: second moments without their buffers", what);
  PRIMAL_CHECK(p.consensus >= 1 && p.noise >= 0 && p.noise <= p.vmax() && p.cooldown >= 0 && p.cooldown <= 255,
               "{}: consensus {} noise {} cooldown {}", what, p.consensus, p.noise, p.cooldown);
}

}  // namespace

DeviceVotes make_device_votes(const LutTrainView& w, const VoteParams& p, int64_t id, cudaStream_t s,
                              bool column_workspace) {
  check_lut_view(w, "make_device_votes");
  PRIMAL_CHECK(p.vote_bits == 8 || p.vote_bits == 16, "make_device_votes: vote bits {}", p.vote_bits);
  DeviceVotes d;
  const size_t n = size_t(w.O * w.I);
  d.state.id = id;
  d.votes = DeviceBuffer(n * size_t(p.vote_bits / 8));
  fill_bytes_async(d.votes.data(), 0, d.votes.size(), s);
  if (p.vote_bits == 8) d.state.v8 = d.votes.as<int8_t>();
  else d.state.v16 = d.votes.as<int16_t>();
  if (p.cooldown > 0) {
    d.cool = DeviceBuffer(n);
    fill_bytes_async(d.cool.data(), 0, n, s);
    d.state.cool = d.cool.as<uint8_t>();
  }
  if (p.moments()) {
    const int64_t R = lut_train_tile_rows(w.I), n_tiles = (w.O + R - 1) / R;
    d.row_sq = DeviceBuffer(size_t(w.O) * sizeof(float));
    d.col_sq = DeviceBuffer(size_t(w.I) * sizeof(float));
    d.col_norm = DeviceBuffer(size_t(w.I) * sizeof(float));
    const bool no_part = column_workspace && p.vote_bits == 8 && cast_fast_serves(w.I, w.G, w.bits());
    if (!no_part) d.col_part = DeviceBuffer(size_t(n_tiles * w.I) * sizeof(float));
    fill_bytes_async(d.row_sq.data(), 0, d.row_sq.size(), s);
    fill_bytes_async(d.col_sq.data(), 0, d.col_sq.size(), s);
    if (!no_part) fill_bytes_async(d.col_part.data(), 0, d.col_part.size(), s);
    fill_kernel<<<lut::blocks_for(w.I), lut::kThreads, 0, s>>>(d.col_norm.as<float>(), w.I, 1.0f);
    PRIMAL_CUDA_CHECK_LAUNCH();
    d.state.row_sq = d.row_sq.as<float>();
    d.state.col_sq = d.col_sq.as<float>();
    d.state.col_norm = d.col_norm.as<float>();
    d.state.col_part = no_part ? nullptr : d.col_part.as<float>();
  }
  d.sums = DeviceBuffer(2 * sizeof(unsigned long long));
  fill_bytes_async(d.sums.data(), 0, d.sums.size(), s);
  d.state.sums = d.sums.as<unsigned long long>();
  return d;
}

namespace {

// The scalars of a cast on state st under p with the counters (events, events_this_step): the
// learning rate, the bias correction (on the host: the CPU's pow) and the rounding key prefix.
void step_scalars(const VoteParams& p, const VoteState& st, int64_t events, int64_t events_this_step, double& lr,
                  double& bc, uint64_t& prefix) {
  lr = p.lr * p.sched * p.lr_mult;  // votes.cpp: cfg_.lr * sched_ * gov_.lr_mult
  bc = 1 - std::pow(p.beta2, double(events + 1));
  prefix = rng_key_prefix(p.seed, uint64_t(p.step), uint64_t(st.id), kRound << 32 | uint64_t(events_this_step));
}

// lut_grad_tiles' scalars (CastArgs) of a call on (votes, params), formed with the CPU's expressions.
CastArgs cast_args(const LutTrainView& w, VoteState* votes, const VoteParams* params) {
  PRIMAL_CHECK(!votes || params, "lut_grad_tiles: votes without their parameters");
  CastArgs a{};
  a.cast = votes != nullptr;
  a.fast = train_math() == TrainMath::Bf16;
  if (votes) {
    const VoteParams& p = *params;
    check_state(w, *votes, p, "lut_grad_tiles");
    a.seed_rule = p.rule == VoteRule::Seed;
    a.sm = p.moments();
    step_scalars(p, *votes, votes->events, votes->events_this_step, a.lr, a.bc, a.prefix);
    a.beta2 = p.beta2;
    a.eps = p.eps;
    a.sensitivity = p.sensitivity;
    a.row_sq = votes->row_sq;
    a.col_norm = votes->col_norm;
  }
  return a;
}

void check_tiles(const LutTrainView& w, const void* dW, int64_t o0, int64_t rows) {
  const int64_t O = w.O, R = lut_train_tile_rows(w.I);
  PRIMAL_CHECK(dW && o0 >= 0 && rows > 0 && o0 + rows <= O && o0 % R == 0 && (rows % R == 0 || o0 + rows == O),
               "lut_grad_tiles: rows {}..{} of {} are not whole tiles of {} rows", o0, o0 + rows, O, R);
}

}  // namespace

vk::CastArgs cast_args_of(const LutTrainView& w, VoteState* votes, const VoteParams* params) {
  return cast_args(w, votes, params);
}

CastDyn cast_dyn(const VoteParams& p, const VoteState& st, int64_t events, int64_t events_this_step) {
  CastArgs a{};
  step_scalars(p, st, events, events_this_step, a.lr, a.bc, a.prefix);
  return vk::cast_dyn_of(a);
}

bool lut_grad_tiles_bf16_ok(const LutTrainView& w, VoteState* votes, const VoteParams* params) {
  check_lut_view(w, "lut_grad_tiles_bf16_ok");
  return train_math() == TrainMath::Bf16 && cast_rows_fast_ok(w, cast_args(w, votes, params), votes, params);
}

void lut_grad_tiles_bf16(const LutTrainView& w, const uint16_t* dW, int64_t o0, int64_t rows, float* dscale,
                         VoteState* votes, const VoteParams* params, cudaStream_t s) {
  check_lut_view(w, "lut_grad_tiles_bf16");
  check_tiles(w, dW, o0, rows);
  if (!dscale && !votes) return;
  PRIMAL_CHECK(cast_rows_fast(w, cast_args(w, votes, params), votes, params, nullptr, dW, o0, rows, dscale, s),
               "lut_grad_tiles_bf16: the bf16 cast does not serve this matrix (lut_grad_tiles_bf16_ok)");
}

void lut_grad_tiles(const LutTrainView& w, const float* dW, int64_t o0, int64_t rows, float* dscale, VoteState* votes,
                    const VoteParams* params, cudaStream_t s) {
  check_lut_view(w, "lut_grad_tiles");
  const int64_t O = w.O, I = w.I, R = lut_train_tile_rows(I);
  check_tiles(w, dW, o0, rows);
  if (!dscale && !votes) return;
  const CastArgs a = cast_args(w, votes, params);
  if (cast_rows_fast(w, a, votes, params, dW, nullptr, o0, rows, dscale, s)) return;
  if (cast_recorder() && a.cast) cast_recorder()->unsafe = true;  // these kernels take the scalars as arguments
  const Mat m = mat_of(w);
  const Votes v = votes_of(votes, params);
  if (fast_cast_ok(w, a, params)) {
    const unsigned blocks = unsigned(std::min<int64_t>(rows, 16 * int64_t(sm_count())));
#define PRIMAL_LAUNCH(B) grad_rows_fast_kernel<B><<<blocks, kFastThreads, 0, s>>>(m, v, a, dW, o0, rows, dscale)
    PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  } else {
    const unsigned blocks = unsigned((rows + kRowsPerBlock - 1) / kRowsPerBlock);
#define PRIMAL_LAUNCH(B) grad_rows_kernel<B><<<blocks, lut::kThreads, 0, s>>>(m, v, a, dW, o0, rows, dscale)
    PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  }
  PRIMAL_CUDA_CHECK_LAUNCH();
  if (a.sm) {
    PRIMAL_CHECK(votes->col_part, "lut_grad_tiles: no per-tile column sums (the matrix was set up for the bf16 "
                                  "cast's workspace, which does not serve this call)");
    const int64_t n_t = (rows + R - 1) / R;
    col_part_kernel<<<lut::blocks_for(n_t * I), lut::kThreads, 0, s>>>(dW, rows, I, R, 1.0f / float(O),
                                                                       votes->col_part + (o0 / R) * I);
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
}

void lut_votes_done(const LutTrainView& w, VoteState& st, const VoteParams& p, cudaStream_t s) {
  check_lut_view(w, "lut_votes_done");
  check_state(w, st, p, "lut_votes_done");
  if (p.moments() && st.folded) {  // the bf16 cast's fold formed col_sq and col_norm
    st.folded = false;
    ++st.events;
  } else if (p.moments()) {
    const int64_t R = lut_train_tile_rows(w.I), n_tiles = (w.O + R - 1) / R;
    const bool fast = train_math() == TrainMath::Bf16, fold = fast && n_tiles * w.I <= kColStatsMax;
    if (!fold) {
      col_sq_kernel<<<lut::blocks_for(w.I), lut::kThreads, 0, s>>>(st.col_part, n_tiles, w.I, p.beta2, st.col_sq);
      PRIMAL_CUDA_CHECK_LAUNCH();
    }
    if (fast)
      col_stats_fast_kernel<<<1, kNormThreads, 0, s>>>(fold, st.col_part, n_tiles, w.I, p.beta2, st.col_sq, st.col_norm);
    else col_norm_kernel<<<1, lut::kThreads, 0, s>>>(st.col_sq, w.I, st.col_norm);
    PRIMAL_CUDA_CHECK_LAUNCH();
    ++st.events;
  }
  ++st.events_this_step;
}

void lut_votes_apply(const LutTrainView& w, VoteState& st, const VoteParams& p, unsigned long long* flips,
                     cudaStream_t s) {
  check_lut_view(w, "lut_votes_apply");
  check_state(w, st, p, "lut_votes_apply");
  PRIMAL_CHECK(flips, "lut_votes_apply: no flip counter");
  const Mat m = mat_of(w);
  const Votes v = votes_of(&st, &p);
  const uint64_t step = uint64_t(p.step), id = uint64_t(st.id);
  const uint64_t noise_prefix = rng_key_prefix(p.seed, step, id, kNoise);
  if (apply_fast_ok(w, p)) {
    const int blocks = lut::blocks_for(w.O * w.I / 8);
#define PRIMAL_LAUNCH(B) apply_momentum_fast_kernel<B><<<blocks, lut::kThreads, 0, s>>>(m, st.v8, flips)
    PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
    PRIMAL_CUDA_CHECK_LAUNCH();
    return;
  }
  if (p.rule == VoteRule::Momentum) {
#define PRIMAL_LAUNCH(B)                                                                                      \
  apply_momentum_kernel<B><<<unsigned(std::min<int64_t>(w.O, 32 * int64_t(sm_count()))), lut::kThreads, 0, s>>>( \
      m, v, p.noise, p.cooldown, noise_prefix, flips)
    PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
    PRIMAL_CUDA_CHECK_LAUNCH();
    return;
  }
  PRIMAL_CHECK(st.sums, "lut_votes_apply: the seed rule needs its sums buffer");
  PRIMAL_CHECK(w.O < (int64_t(1) << 31), "lut_votes_apply: {} rows", w.O);
  fill_bytes_async(st.sums, 0, 2 * sizeof(unsigned long long), s);
  seed_noise_kernel<<<lut::blocks_for(w.O * w.I), lut::kThreads, 0, s>>>(m, v, p.noise, noise_prefix, st.sums);
  PRIMAL_CUDA_CHECK_LAUNCH();
  const double pscale = p.flip_lr * p.sched * p.lr_mult;  // votes.cpp: cfg_.flip_lr * sched_ * gov_.lr_mult
  const uint64_t flip_prefix = rng_key_prefix(p.seed, step, id, kFlip);
#define PRIMAL_LAUNCH(B)                                                                                  \
  seed_flip_kernel<B><<<unsigned(w.O), lut::kThreads, 0, s>>>(m, v, p.consensus, p.cooldown, pscale, \
                                                              flip_prefix, st.sums, flips)
  PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
