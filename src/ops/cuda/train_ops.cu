// The trainer's row-wise and element-wise ops (train_ops.h). Where the CPU twin's expression has
// a product feeding a sum, the kernels spell the roundings out (__fmul_rn, __fadd_rn...) so that
// nvcc does not contract them into fused multiply-adds the CPU does not use: the values then
// differ from the CPU's only through summation order (fp64 sums), the GPU's expf (2 ulps against
// glibc's < 1) and its fp64 cos/sin/exp/log (an fp64 ulp or two, hidden by fp32 rounding).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <math_constants.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/train_ops.h"

namespace primal::cuda {
namespace {

constexpr int kRowThreads = 256;    // one block per row of an (N, C) activation
constexpr int kLossThreads = 512;   // one block per row of logits (V up to ~150k: ~300 per thread)
constexpr int kDwRowGroups = 32;    // warps of an rmsnorm weight-gradient block, one row group each
constexpr int64_t kDwSlabRows = 256;  // rows of a slab of the weight gradient (8 a warp)
constexpr int kEmbBuckets = 64;     // vocabulary buckets (id mod 64) of the embedding backward
constexpr int kEmbWarps = 8;        // buckets (warps) per block of the embedding backward
constexpr int32_t kNoBadToken = 0x7f7f7f7f;  // the flag's start value: what memset(0x7f) writes

// Blocks for a grid-stride loop over n items, 256 threads each.
int grid_for(int64_t n) {
  return int(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 16 * int64_t(sm_count()))));
}

__device__ __forceinline__ float max_of(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_of(double a, double b) { return fmax(a, b); }

// Maximum over the whole block (blockDim.x a multiple of 32); every thread gets it. `scratch`
// holds 32 values of shared memory; the leading barrier lets calls reuse it (as block_sum).
template <class T>
__device__ __forceinline__ T block_max(T v, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  for (int o = 16; o > 0; o /= 2) v = max_of(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T t = lane < n_warps ? scratch[lane] : T(-INFINITY);
  for (int o = 16; o > 0; o /= 2) t = max_of(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

// ---- RMSNorm ----------------------------------------------------------------------------------

// One block per row t. Each thread reads and writes only its columns c = tid + k*blockDim, and all
// reads of the sum pass end at block_sum's barrier, so out may alias inp.
// (Out = __nv_bfloat16: the bf16 mode's GEMM operand, the fp32 value rounded once more.)
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Rows of up to kRowRegs * kRowThreads values are held in registers with their weights from the
// first pass (the second pass re-read them after the reduction's barrier, a dependent load in every
// row's path); the same operations in the same order either way.
constexpr int kRowRegs = 8;

// RMSNorm forward of row t, and with kAdd first x_out = x_in + y (the add of add_inplace_kernel,
// __fadd_rn, of y widened from Y; x_out may be x_in: a thread reads back only the x values it
// wrote). x_out is written only with kAdd.
template <bool kAdd, class Out, class Y = float>
__global__ void __launch_bounds__(kRowThreads) rmsnorm_rows_kernel(Out* out, float* rstd, const float* x_in,
                                                                   float* x_out, const Y* y_in, const float* w,
                                                                   int64_t C, float eps) {
  __shared__ double scratch[32];
  const int64_t t = blockIdx.x;
  const float* xi = x_in + t * C;
  float* x = kAdd ? x_out + t * C : const_cast<float*>(xi);
  const Y* y = kAdd ? y_in + t * C : nullptr;
  Out* o = out + t * C;
  auto value = [&](int64_t c) {
    if constexpr (!kAdd) return xi[c];
    const float v = __fadd_rn(xi[c], to_f(y[c]));
    x[c] = v;
    return v;
  };
  double ss = 0;
  // x*x is exact in fp64 (two 24-bit significands), so a contraction into fma changes nothing.
  if (C <= kRowRegs * kRowThreads) {
    float v[kRowRegs], wv[kRowRegs];
#pragma unroll
    for (int j = 0; j < kRowRegs; ++j) {
      const int64_t c = threadIdx.x + j * kRowThreads;
      v[j] = wv[j] = 0.0f;
      if (c < C) v[j] = value(c), wv[j] = w[c], ss += double(v[j]) * double(v[j]);
    }
    const float r = rms_scale(block_sum(ss, scratch), C, eps);
    if (threadIdx.x == 0) rstd[t] = r;
#pragma unroll
    for (int j = 0; j < kRowRegs; ++j) {
      const int64_t c = threadIdx.x + j * kRowThreads;
      if (c < C) store(o + c, (v[j] * r) * wv[j]);
    }
    return;
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = value(c);
    ss += double(v) * double(v);
  }
  const float r = rms_scale(block_sum(ss, scratch), C, eps);
  if (threadIdx.x == 0) rstd[t] = r;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) store(o + c, (x[c] * r) * w[c]);
}

// swiglu_f32's expression (elementwise.cu) on bf16 gate and up, rounded to bf16.
__global__ void swiglu_forward_bf16_kernel(__nv_bfloat16* out, const __nv_bfloat16* gate, const __nv_bfloat16* up,
                                           int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_f(gate[i]);
    out[i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * to_f(up[i]));
  }
}

// One block per row t:  dx[c] += a (dy[c] w[c]) - b x[c],  a = r,  b = r^3 dot / C,
// dot = sum_j dy_j w_j x_j in fp64 (each term rounded as the CPU rounds it).
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_backward_dx_kernel(float* dinp, const float* dout, const float* inp, const float* w, const float* rstd,
                               int64_t C, __nv_bfloat16* dinp_bf16) {
  __shared__ double scratch[32];
  const int64_t t = blockIdx.x;
  const float* x = inp + t * C;
  const float* dy = dout + t * C;
  float* dx = dinp + t * C;
  double dot = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
    dot = __dadd_rn(dot, __dmul_rn(__dmul_rn(double(dy[c]), double(w[c])), double(x[c])));
  dot = block_sum(dot, scratch);
  const double r = double(rstd[t]);
  const float a = float(r), b = float(r * r * r * dot / double(C));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = __fadd_rn(dx[c], __fsub_rn(__fmul_rn(a, __fmul_rn(dy[c], w[c])), __fmul_rn(b, x[c])));
    dx[c] = v;
    if (dinp_bf16) dinp_bf16[t * C + c] = __float2bfloat16_rn(v);
  }
}

// rmsnorm_backward_dx_kernel and the weight gradient's slab sums in one pass (the bf16 mode, C <=
// kFusedCols * kRowThreads, enough rows): a block per kFusedRows rows, each thread its columns
// c = tid + j * kRowThreads as in the dx kernel (the same dot, so the same dx bits), adding dy x r
// of its columns over the block's rows in fp64 registers, in row order, written once to
// slab_out[blockIdx.x, c] for rmsnorm_slab_fold_kernel. The separate weight-gradient pass re-read dy
// and x (qwen2.5-1.5b: 40 of 128 us a norm backward, 56 a step).
constexpr int kFusedRows = 16, kFusedCols = 8;

__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_backward_fused_kernel(float* dinp, const float* dout, const float* inp, const float* w, const float* rstd,
                                  int64_t N, int64_t C, __nv_bfloat16* dinp_bf16, double* slab_out) {
  __shared__ double scratch[64];
  const int64_t t0 = int64_t(blockIdx.x) * kFusedRows, t1 = t0 + kFusedRows < N ? t0 + kFusedRows : N;
  const int tid = int(threadIdx.x);
  float wr[kFusedCols];
  double acc[kFusedCols];
#pragma unroll
  for (int j = 0; j < kFusedCols; ++j) {
    const int64_t c = tid + j * kRowThreads;
    wr[j] = c < C ? w[c] : 0.0f, acc[j] = 0.0;
  }
  // Two rows at a time: their loads in flight together and their dots reduced in one block_sum2 (the
  // same tree for each: the same bits), halving the chain of load-reduce-store round trips a block
  // walks. (Loading row t + 1 while row t's dot was reduced made it slower: 136 against 100 us a
  // qwen2.5-1.5b norm, H100.)
  for (int64_t t = t0; t < t1; t += 2) {
    const bool two = t + 1 < t1;  // (uniform over the block)
    float dy[2][kFusedCols], x[2][kFusedCols], dx0[2][kFusedCols];  // dx0: dinp's value before
    double dot[2] = {0, 0};
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int j = 0; j < kFusedCols; ++j) {
        const int64_t c = tid + j * kRowThreads, row = t + k;
        dy[k][j] = x[k][j] = dx0[k][j] = 0.0f;
        if (c < C && (k == 0 || two)) {
          dy[k][j] = dout[row * C + c], x[k][j] = inp[row * C + c], dx0[k][j] = dinp[row * C + c];
          dot[k] = __dadd_rn(dot[k], __dmul_rn(__dmul_rn(double(dy[k][j]), double(wr[j])), double(x[k][j])));
        }
      }
    block_sum2(dot[0], dot[1], scratch);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      if (k == 1 && !two) break;
      const int64_t row = t + k;
      const double r = double(rstd[row]);
      const float a = float(r), b = float(r * r * r * dot[k] / double(C));
#pragma unroll
      for (int j = 0; j < kFusedCols; ++j) {
        const int64_t c = tid + j * kRowThreads;
        if (c >= C) continue;
        const float v =
            __fadd_rn(dx0[k][j], __fsub_rn(__fmul_rn(a, __fmul_rn(dy[k][j], wr[j])), __fmul_rn(b, x[k][j])));
        dinp[row * C + c] = v;
        if (dinp_bf16) dinp_bf16[row * C + c] = __float2bfloat16_rn(v);
        acc[j] = __dadd_rn(acc[j], __dmul_rn(__dmul_rn(double(dy[k][j]), double(x[k][j])), r));
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kFusedCols; ++j) {
    const int64_t c = tid + j * kRowThreads;
    if (c < C) slab_out[int64_t(blockIdx.x) * C + c] = acc[j];
  }
}

// Block (32, kDwRowGroups) per 32 columns and slab of rows [t0, t1) (t0 = blockIdx.y * R): lane =
// column, warp g = the rows t0 + g, t0 + g + 32, ... summed in fp64 in increasing order; then warp 0
// adds the partial sums of g = 0..31 in order: rounded once into dw (one slab, slab_out null) or
// written to slab_out[blockIdx.y, c] for rmsnorm_dw_fold_kernel. Loads are coalesced (a warp reads
// 32 consecutive floats of a row) and no atomics are used: the order is fixed by the shape alone.
// The term of row t is dout * inp * rstd (kNorm: the norm's weight gradient) or dout alone (a bias
// gradient: column_sums_add).
// (A bias gradient's dout may be bf16 with rows ld apart: column_sums_bf16_add.)
__device__ __forceinline__ double to_double(float x) { return double(x); }
__device__ __forceinline__ double to_double(__nv_bfloat16 x) { return double(__bfloat162float(x)); }
template <bool kNorm, class T = float>
__global__ void __launch_bounds__(32 * kDwRowGroups)
    rmsnorm_backward_dw_kernel(float* dw, const T* dout, const float* inp, const float* rstd, int64_t N,
                               int64_t C, int64_t R, double* slab_out, int64_t ld) {
  __shared__ double part[kDwRowGroups][33];  // 33: the column reads of warp 0 avoid bank conflicts
  const int lane = threadIdx.x, g = threadIdx.y;
  const int64_t c = int64_t(blockIdx.x) * 32 + lane, t0 = int64_t(blockIdx.y) * R, t1 = t0 + R < N ? t0 + R : N;
  double s = 0;
  if (c < C)
    for (int64_t t = t0 + g; t < t1; t += kDwRowGroups)
      s = kNorm ? __dadd_rn(s, __dmul_rn(__dmul_rn(to_double(dout[t * ld + c]), double(inp[t * C + c])),
                                         double(rstd[t])))
                : __dadd_rn(s, to_double(dout[t * ld + c]));
  part[g][lane] = s;
  __syncthreads();
  if (g == 0 && c < C) {
    double total = 0;
    for (int k = 0; k < kDwRowGroups; ++k) total += part[k][lane];
    if (slab_out) slab_out[int64_t(blockIdx.y) * C + c] = total;
    else dw[c] += float(total);
  }
}

// Column sums of a bf16 matrix in slabs of kBf16SlabRows rows: a thread per 8 consecutive columns
// (one 16-byte load a row, fp64 sums in row order), slab_out[blockIdx.y, c] for
// rmsnorm_slab_fold_kernel (column_sums_bf16_add; the dout-only rmsnorm_backward_dw_kernel read
// 2 bytes a lane and took ~45 us for qwen's 8192 x 2048 q, k, v gradient).
constexpr int64_t kBf16SlabRows = 64;
__global__ void __launch_bounds__(128)
    column_slabs_bf16x8_kernel(const uint4* x, int64_t ld8, int64_t N, int64_t C8, double* slab_out) {
  const int64_t c8 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c8 >= C8) return;
  const int64_t t0 = int64_t(blockIdx.y) * kBf16SlabRows, t1 = t0 + kBf16SlabRows < N ? t0 + kBf16SlabRows : N;
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll 4
  for (int64_t t = t0; t < t1; ++t) {
    const uint4 u = x[t * ld8 + c8];
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      acc[2 * k] += double(__uint_as_float(w[k] << 16));
      acc[2 * k + 1] += double(__uint_as_float(w[k] & 0xffff0000u));
    }
  }
  double* o = slab_out + int64_t(blockIdx.y) * 8 * C8 + 8 * c8;
#pragma unroll
  for (int e = 0; e < 8; ++e) o[e] = acc[e];
}

// dw[c] += float(sum over the slabs of slab[s, c]) for the fused backward's many slabs: a block
// (32, kDwRowGroups) per 32 columns, warp g summing the slabs g, g + 32, ... in order, then warp 0
// the 32 partial sums in order (a fixed order). rmsnorm_dw_fold_kernel's thread per column, summing
// 512 slabs in turn, took 62 us for qwen2.5-1.5b's norm.
__global__ void __launch_bounds__(32 * kDwRowGroups)
    rmsnorm_slab_fold_kernel(float* dw, const double* slab, int64_t S, int64_t C, int64_t ld) {
  __shared__ double part[kDwRowGroups][33];
  const int lane = int(threadIdx.x), g = int(threadIdx.y);
  const int64_t c = int64_t(blockIdx.x) * 32 + lane;
  double s = 0;
  if (c < C)
    for (int64_t k = g; k < S; k += kDwRowGroups) s += slab[k * ld + c];
  part[g][lane] = s;
  __syncthreads();
  if (g == 0 && c < C) {
    double total = 0;
    for (int k = 0; k < kDwRowGroups; ++k) total += part[k][lane];
    dw[c] += float(total);
  }
}

// dw[c] += float(sum over the slabs s = 0 .. S-1 of slab[s, c]), in order.
__global__ void rmsnorm_dw_fold_kernel(float* dw, const double* slab, int64_t S, int64_t C) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    double total = 0;
    for (int64_t k = 0; k < S; ++k) total += slab[k * C + c];
    dw[c] += float(total);
  }
}

// ---- RoPE -------------------------------------------------------------------------------------

// One thread per (sequence and token bt, pair i), looping over the heads: the fp64 cos/sin of
// the angle are formed once for n_heads rotations. Pair i: elements (i, i + half) under NeoX,
// (2i, 2i + 1) otherwise; a warp covers consecutive pairs of one token (coalesced).
// float(cos), float(sin) of the angle pos * inv_freq[i] in fp64 (the CPU's values).
__device__ __forceinline__ void rope_cs(const double* inv_freq, int64_t pos, int64_t i, float* c, float* s) {
  const double ang = double(pos) * inv_freq[i];
  *c = float(cos(ang)), *s = float(sin(ang));
}

__global__ void rope_table_kernel(float* cs, int64_t T, int64_t half, const double* inv_freq) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < T * half; k += int64_t(gridDim.x) * blockDim.x)
    rope_cs(inv_freq, k / half, k % half, cs + 2 * k, cs + 2 * k + 1);
}

__global__ void rope_rotate_kernel(float* x, int64_t BT, int64_t T, int64_t n_heads, int64_t HS, int64_t half,
                                   bool neox, const double* inv_freq, const float* table, int64_t pos0, bool inverse,
                                   __nv_bfloat16* xb, bool write_f32, int64_t ldb, const float* bias, int64_t ldx) {
  const int64_t step = neox ? 1 : 2, other = neox ? half : 1;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < BT * half;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bt = k / half, i = k % half, pos = pos0 + bt % T;
    float c, sn;
    if (table) c = table[2 * (pos * half + i)], sn = table[2 * (pos * half + i) + 1];
    else rope_cs(inv_freq, pos, i, &c, &sn);
    const float s = inverse ? -sn : sn;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + bt * ldx + h * HS + i * step;
      float a = v[0], b = v[other];
      if (bias) a = __fadd_rn(a, bias[h * HS + i * step]), b = __fadd_rn(b, bias[h * HS + i * step + other]);
      float r0, r1;
      rope_rotate_pair(a, b, c, s, r0, r1);
      if (write_f32) v[0] = r0, v[other] = r1;
      if (xb) {
        const int64_t ob = bt * ldb + h * HS + i * step;
        xb[ob] = __float2bfloat16_rn(r0), xb[ob + other] = __float2bfloat16_rn(r1);
      }
    }
  }
}

// rope_rotate_kernel with the cos/sin table, two consecutive frequencies i, i + 1 a thread (half
// even): 16- or 8-byte loads and stores instead of 4-byte ones, the same products (same bits).
// Layout: neox pairs (i, i + half), else adjacent pairs (2 i, 2 i + 1).
__device__ __forceinline__ uint32_t bf16x2(float lo, float hi) {
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16;
}
// 8 bf16 values of a 16-byte word as floats (exact), and back (each rounded once).
__device__ __forceinline__ void unpack_bf16x8(uint4 u, float v[8]) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) v[2 * k] = __uint_as_float(w[k] << 16), v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
}
__device__ __forceinline__ uint4 pack_bf16x8(const float v[8]) {
  return make_uint4(bf16x2(v[0], v[1]), bf16x2(v[2], v[3]), bf16x2(v[4], v[5]), bf16x2(v[6], v[7]));
}

__global__ void rope_rotate2_kernel(float* x, int64_t BT, int64_t T, int64_t n_heads, int64_t HS, int64_t half,
                                    bool neox, const float* table, int64_t pos0, bool inverse, __nv_bfloat16* xb,
                                    bool write_f32, int64_t ldb, const float* bias, int64_t ldx) {
  const int64_t h2 = half / 2, per_bt = n_heads * h2;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < BT * per_bt;
       k += int64_t(gridDim.x) * blockDim.x) {
    // A thread per (token, head, frequency pair): every head in parallel (a thread looping over the
    // heads left the kernel latency-bound).
    const int64_t bt = k / per_bt, h = k / h2 - bt * n_heads, i = 2 * (k % h2), pos = pos0 + bt % T;
    const float4 cs = *reinterpret_cast<const float4*>(table + 2 * (pos * half + i));  // c_i s_i c_i+1 s_i+1
    const float s0 = inverse ? -cs.y : cs.y, s1 = inverse ? -cs.w : cs.w;
    {
      float* v = x + bt * ldx + h * HS;
      float r0, r1, r2, r3;  // the rotated pairs (r0, r1) of i and (r2, r3) of i + 1
      if (neox) {
        float2 a = *reinterpret_cast<const float2*>(v + i), b = *reinterpret_cast<const float2*>(v + half + i);
        if (bias) {  // (scalar loads: a bias need not be 8-byte aligned)
          const float* bh = bias + h * HS;
          a.x = __fadd_rn(a.x, bh[i]), a.y = __fadd_rn(a.y, bh[i + 1]);
          b.x = __fadd_rn(b.x, bh[half + i]), b.y = __fadd_rn(b.y, bh[half + i + 1]);
        }
        rope_rotate_pair(a.x, b.x, cs.x, s0, r0, r1);
        rope_rotate_pair(a.y, b.y, cs.z, s1, r2, r3);
        if (write_f32) {
          *reinterpret_cast<float2*>(v + i) = make_float2(r0, r2);
          *reinterpret_cast<float2*>(v + half + i) = make_float2(r1, r3);
        }
        if (xb) {
          uint32_t* o = reinterpret_cast<uint32_t*>(xb + bt * ldb + h * HS);
          o[i / 2] = bf16x2(r0, r2), o[(half + i) / 2] = bf16x2(r1, r3);
        }
      } else {
        float4 a = *reinterpret_cast<const float4*>(v + 2 * i);
        if (bias) {
          const float* bh = bias + h * HS + 2 * i;
          a.x = __fadd_rn(a.x, bh[0]), a.y = __fadd_rn(a.y, bh[1]);
          a.z = __fadd_rn(a.z, bh[2]), a.w = __fadd_rn(a.w, bh[3]);
        }
        rope_rotate_pair(a.x, a.y, cs.x, s0, r0, r1);
        rope_rotate_pair(a.z, a.w, cs.z, s1, r2, r3);
        if (write_f32) *reinterpret_cast<float4*>(v + 2 * i) = make_float4(r0, r1, r2, r3);
        if (xb)
          *reinterpret_cast<uint2*>(xb + bt * ldb + h * HS + 2 * i) = make_uint2(bf16x2(r0, r1), bf16x2(r2, r3));
      }
    }
  }
}

// rope_rotate2_kernel on bf16 values in place (the bf16 mode's q and k straight out of their GEMMs
// as bf16, as PyTorch's autocast keeps them): the same fp32 rotation of the widened values, rounded
// to bf16. A thread reads and writes only its own two pairs.
__global__ void rope_rotate2_bf16_kernel(__nv_bfloat16* xb, int64_t BT, int64_t T, int64_t n_heads, int64_t HS,
                                         int64_t half, bool neox, const float* table, int64_t pos0, int64_t ld,
                                         bool inverse) {
  const int64_t h2 = half / 2, per_bt = n_heads * h2;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < BT * per_bt;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bt = k / per_bt, h = k / h2 - bt * n_heads, i = 2 * (k % h2), pos = pos0 + bt % T;
    float4 cs = *reinterpret_cast<const float4*>(table + 2 * (pos * half + i));
    if (inverse) cs.y = -cs.y, cs.w = -cs.w;  // (rotation by -angle: rope_rotate's inverse)
    __nv_bfloat16* v = xb + bt * ld + h * HS;
    float r0, r1, r2, r3;
    if (neox) {
      uint32_t* pa = reinterpret_cast<uint32_t*>(v + i);
      uint32_t* pb = reinterpret_cast<uint32_t*>(v + half + i);
      const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(pa));
      const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(pb));
      rope_rotate_pair(a.x, b.x, cs.x, cs.y, r0, r1);
      rope_rotate_pair(a.y, b.y, cs.z, cs.w, r2, r3);
      *pa = bf16x2(r0, r2), *pb = bf16x2(r1, r3);
    } else {
      uint2* p = reinterpret_cast<uint2*>(v + 2 * i);
      const uint2 w = *p;
      const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.x));
      const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.y));
      rope_rotate_pair(a.x, a.y, cs.x, cs.y, r0, r1);
      rope_rotate_pair(b.x, b.y, cs.z, cs.w, r2, r3);
      *p = make_uint2(bf16x2(r0, r1), bf16x2(r2, r3));
    }
  }
}

// ---- SwiGLU -----------------------------------------------------------------------------------

// The bf16 mode's SwiGLU, 8 values a thread through 16-byte words (n % 8 == 0, 16-byte aligned
// pointers: swiglu_vec_ok): the same expressions as swiglu_forward_bf16_kernel and
// swiglu_backward_kernel<bf, bf, bf>, so the same bits. The scalar kernels' 2-byte accesses left
// qwen2.5-1.5b's (8192, 8960) forward at 283 us, half the bandwidth (H100, ncu).
__global__ void swiglu_forward_bf16x8_kernel(uint4* out, const uint4* gate, const uint4* up, int64_t n8) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    float g[8], u[8];
    unpack_bf16x8(gate[i], g);
    unpack_bf16x8(up[i], u);
#pragma unroll
    for (int e = 0; e < 8; ++e) g[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
    out[i] = pack_bf16x8(g);
  }
}

template <bool kH>
__global__ void swiglu_backward_bf16x8_kernel(uint4* dgate, uint4* dup, const uint4* dout, const uint4* gate,
                                              const uint4* up, int64_t n8, uint4* hout) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    float g[8], u[8], d[8];  // all read before dgate/dup (which may be dout) are written
    unpack_bf16x8(gate[i], g);
    unpack_bf16x8(up[i], u);
    unpack_bf16x8(dout[i], d);
    if constexpr (kH) {  // the forward's expression (swiglu_forward_bf16x8_kernel)
      float h[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) h[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
      hout[i] = pack_bf16x8(h);
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float sg = 1.0f / (1.0f + expf(-g[e]));
      const float phi = __fadd_rn(1.0f, __fmul_rn(g[e], __fsub_rn(1.0f, sg)));
      const float dg = __fmul_rn(__fmul_rn(__fmul_rn(d[e], u[e]), sg), phi);
      u[e] = __fmul_rn(__fmul_rn(d[e], g[e]), sg);  // du
      g[e] = dg;
    }
    dgate[i] = pack_bf16x8(g);
    dup[i] = pack_bf16x8(u);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class Out, class In = float, class DIn = float>
__global__ void swiglu_backward_kernel(Out* dgate, Out* dup, const DIn* dout, const In* gate, const In* up,
                                       int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_f(gate[i]), u = to_f(up[i]), d = to_f(dout[i]);  // all read before dgate/dup (which may be dout) are written
    const float sg = 1.0f / (1.0f + expf(-g));
    const float phi = __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, sg)));  // silu'(g) / sg
    const float dg = __fmul_rn(__fmul_rn(__fmul_rn(d, u), sg), phi);
    const float du = __fmul_rn(__fmul_rn(d, g), sg);
    if constexpr (std::is_same_v<Out, float>) {
      dgate[i] = dg;
      dup[i] = du;
    } else {
      dgate[i] = __float2bfloat16_rn(dg);
      dup[i] = __float2bfloat16_rn(du);
    }
  }
}

// ---- Token embedding --------------------------------------------------------------------------

// One block per token t. A bad id records t (the lowest wins: integer atomicMin) and the row is
// skipped.
__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* table, int64_t V, int64_t C,
                                         int32_t* flag) {
  const int64_t t = blockIdx.x;
  const int32_t id = tokens[t];
  if (id < 0 || id >= V) {
    if (threadIdx.x == 0) atomicMin(flag, int32_t(t));
    return;
  }
  const float* row = table + int64_t(id) * C;
  float* o = out + t * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = row[c];
}

// Grid (column tiles of 32, kEmbBuckets / kEmbWarps); warp w of block y owns the ids of bucket
// k = y * kEmbWarps + w, lane = column. The warp reads the tokens 32 at a time (one coalesced load),
// ballots those of its bucket and applies them in increasing position, lane by lane of the ballot:
// every element dtable[v, c] is touched by this one thread, in the CPU's order. The ballot, the
// loop count and the shuffle are uniform across the warp, so the full-mask intrinsics are safe.
__global__ void __launch_bounds__(32 * kEmbWarps)
    embedding_backward_kernel(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t V,
                              int64_t C) {
  const int lane = threadIdx.x % 32;
  const int bucket = int(blockIdx.y) * kEmbWarps + int(threadIdx.x / 32);
  const int64_t c = int64_t(blockIdx.x) * 32 + lane;
  for (int64_t t0 = 0; t0 < N; t0 += 32) {
    const int32_t id = t0 + lane < N ? tokens[t0 + lane] : -1;
    unsigned mine = __ballot_sync(0xffffffffu, id >= 0 && id < V && id % kEmbBuckets == bucket);
    while (mine) {
      const int b = __ffs(mine) - 1;  // the lowest position first
      mine &= mine - 1;
      const int32_t v = __shfl_sync(0xffffffffu, id, b);
      if (c < C) dtable[int64_t(v) * C + c] += dout[(t0 + b) * C + c];
    }
  }
}

// ---- Losses -----------------------------------------------------------------------------------

// One block per row. Cross-entropy as cpu::cross_entropy_row / cross_entropy_backward_row:
// max, sum of fp32 exp(x - max) in fp64, nll = log(sum) + max - x_y; with kBackward the row
// (grad, the same memory as logits) becomes scale * exp(x - max) * float(scale / sum) minus scale
// at the target, each thread recomputing its own exps (the same bits as the sum pass). A thread
// writes only its own columns, after the barriers of the reductions that read the row.
// (gbf non-null: the gradient row is written there as bf16 instead, the fast mode's GEMM operand;
// In = __nv_bfloat16: bf16 logits, read as floats, gbf may then be the logits themselves.)

template <bool kBackward, class In = float>
__global__ void __launch_bounds__(kLossThreads)
    cross_entropy_kernel(const In* logits, float* grad, const int32_t* targets, int64_t V, double scale,
                         double* loss, __nv_bfloat16* gbf = nullptr, int64_t ld = 0) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  const int64_t row = blockIdx.x, stride = ld > 0 ? ld : V;  // row stride of logits and gradient
  const In* x = logits + row * stride;
  float* gx = kBackward && !gbf ? grad + row * stride : nullptr;
  __nv_bfloat16* gb = kBackward && gbf ? gbf + row * stride : nullptr;
  const int32_t y = targets[row];
  if (y < 0 || y >= V) {  // the same for the whole block: it leaves before any barrier
    const bool bad = y >= V;
    if (kBackward)
      for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
        if (gb) gb[c] = __float2bfloat16_rn(bad ? CUDART_NAN_F : 0.0f);
        else gx[c] = bad ? CUDART_NAN_F : 0.0f;
      }
    if (threadIdx.x == 0) loss[row] = bad ? CUDART_NAN : 0.0;
    return;
  }
  const double xt = double(to_f(x[y]));  // before block_max's barrier, hence before x[y] is overwritten
  float mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) mx = fmaxf(mx, to_f(x[c]));
  mx = block_max(mx, fscratch);
  double sum = 0;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) sum += double(expf(to_f(x[c]) - mx));
  sum = block_sum(sum, dscratch);
  if (kBackward) {
    const float k = float(scale / sum), sc = float(scale);
    for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
      float g = __fmul_rn(expf(to_f(x[c]) - mx), k);
      if (c == y) g = __fsub_rn(g, sc);
      if (gb) gb[c] = __float2bfloat16_rn(g);
      else gx[c] = g;
    }
  }
  if (threadIdx.x == 0) loss[row] = log(sum) + double(mx) - xt;
}

// cross_entropy_kernel for bf16 logits whose rows start 16-byte aligned (ld % 8 == 0, the engine's
// padded stride): 8 values a 16-byte load in each of the three passes (the scalar kernel's 2-byte
// loads left the qwen2.5-1.5b head's loss at 8 ms a step). Each thread sums its own chunks in fp64,
// so the loss may differ from the scalar kernel's in the last bits of its fp64 sum; the gradient
// (in place, kBackward) is the same expression. Padding columns (V .. ld-1) are neither read into
// the sums nor written.

// A chunk's share of a row's max and of its fp64 sum of exp(x - mx), values in order: whole chunks
// without a bounds test per value (the same operations as the tested loop).
__device__ __forceinline__ float ce_chunk_max(const float v[8], int64_t c, int64_t V, float mx) {
  if (8 * c + 8 <= V) {
#pragma unroll
    for (int e = 0; e < 8; ++e) mx = fmaxf(mx, v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (8 * c + e < V) mx = fmaxf(mx, v[e]);
  }
  return mx;
}
__device__ __forceinline__ double ce_chunk_expsum(const float v[8], int64_t c, int64_t V, float mx, double sum) {
  if (8 * c + 8 <= V) {
#pragma unroll
    for (int e = 0; e < 8; ++e) sum += double(expf(v[e] - mx));
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e)
      if (8 * c + e < V) sum += double(expf(v[e] - mx));
  }
  return sum;
}

// Chunk c (8 logits, u) of a row replaced by its loss gradient as bf16: scale exp(x - mx) / sum
// (k = scale / sum), minus scale at the target y; padding columns (V ..) keep their bits.
// A whole chunk (8 c + 8 <= V, every chunk but a row's last) takes no bounds test and no 64-bit
// compare per value, the target's correction a select, and its values rounded two at a time: the
// same expressions and bits as the general path (which took ~60 SASS instructions a logit with the
// other passes).
__device__ __forceinline__ uint4 ce_grad_chunk(uint4 u, int64_t c, int64_t V, int32_t y, float mx, float k, float sc) {
  float v[8];
  unpack_bf16x8(u, v);
  if (8 * c + 8 <= V) {
    const int ye = int64_t(y >> 3) == c ? (y & 7) : 8;  // the target's place in the chunk, or none
    uint32_t w[4];
#pragma unroll
    for (int k2 = 0; k2 < 4; ++k2) {
      float g[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        g[h] = __fmul_rn(expf(v[2 * k2 + h] - mx), k);
        if (2 * k2 + h == ye) g[h] = __fsub_rn(g[h], sc);
      }
      const __nv_bfloat162 b = __floats2bfloat162_rn(g[0], g[1]);  // .x (g[0]) in the low half
      w[k2] = *reinterpret_cast<const uint32_t*>(&b);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
  uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k2 = 0; k2 < 4; ++k2) {
    uint32_t out = w[k2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = 8 * c + 2 * k2 + h;
      if (i >= V) continue;
      float g = __fmul_rn(expf(v[2 * k2 + h] - mx), k);
      if (i == y) g = __fsub_rn(g, sc);
      const uint32_t b = __bfloat16_as_ushort(__float2bfloat16_rn(g));
      out = h == 0 ? (out & 0xffff0000u) | b : (out & 0x0000ffffu) | (b << 16);
    }
    w[k2] = out;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

template <bool kBackward>
__global__ void __launch_bounds__(kLossThreads)
    cross_entropy_bf16x8_kernel(__nv_bfloat16* logits, const int32_t* targets, int64_t V, int64_t ld, double scale,
                                double* loss) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  const int64_t row = blockIdx.x, chunks = (V + 7) / 8;
  __nv_bfloat16* x = logits + row * ld;
  uint4* x8 = reinterpret_cast<uint4*>(x);
  const int32_t y = targets[row];
  if (y < 0 || y >= V) {  // the same for the whole block: it leaves before any barrier
    const bool bad = y >= V;
    if (kBackward)
      for (int64_t c = threadIdx.x; c < V; c += blockDim.x) x[c] = __float2bfloat16_rn(bad ? CUDART_NAN_F : 0.0f);
    if (threadIdx.x == 0) loss[row] = bad ? CUDART_NAN : 0.0;
    return;
  }
  const double xt = double(__bfloat162float(x[y]));  // before block_max's barrier, hence before x[y] is overwritten
  float v[8], mx = -INFINITY;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    unpack_bf16x8(x8[c], v);
    mx = ce_chunk_max(v, c, V, mx);
  }
  mx = block_max(mx, fscratch);
  double sum = 0;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
    unpack_bf16x8(x8[c], v);
    sum = ce_chunk_expsum(v, c, V, mx, sum);
  }
  sum = block_sum(sum, dscratch);
  if (kBackward) {
    const float k = float(scale / sum), sc = float(scale);
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) x8[c] = ce_grad_chunk(x8[c], c, V, y, mx, k, sc);
  }
  if (threadIdx.x == 0) loss[row] = log(sum) + double(mx) - xt;
}

// cross_entropy_bf16x8_kernel with the row read from device memory once: a cluster of kCeBlocks
// blocks per row, each holding its share of the 16-byte chunks in shared memory (qwen2.5-1.5b's
// 151,936 logits: 37 KiB a block, five blocks a multiprocessor, so that one block's loads overlap
// another's arithmetic), the maxima and the fp64 sums exchanged through the cluster's shared memory
// and combined in rank order (the same values in every block). The three passes over a row that no
// cache held (a 2048-row chunk is 622 MB) become one read and one write (763 against 922 us, still
// 1.6 TB/s: a block's phases do not overlap its own loads). The same max and per-element
// expressions as the single-block kernel; the fp64 sum in another order. (Clusters of 2 blocks of
// 1024 threads, one 148 KiB block a multiprocessor: 990 us; of 4 blocks of 512: 767 us.)
constexpr int kCeBlocks = 8, kCeThreads = 256;

template <bool kBackward>
__global__ void __cluster_dims__(kCeBlocks, 1, 1) __launch_bounds__(kCeThreads)
    cross_entropy_bf16_cluster_kernel(__nv_bfloat16* logits, const int32_t* targets, int64_t V, int64_t ld,
                                      double scale, double* loss) {
  extern __shared__ uint4 part[];  // (share) this block's chunks
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  __shared__ float part_max;
  __shared__ double part_sum;
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank();
  const int64_t row = blockIdx.x / kCeBlocks, chunks = (V + 7) / 8, share = (chunks + kCeBlocks - 1) / kCeBlocks;
  const int64_t c0 = std::min(chunks, rank * share), c1 = std::min(chunks, c0 + share);
  __nv_bfloat16* x = logits + row * ld;
  uint4* x8 = reinterpret_cast<uint4*>(x);
  const int32_t y = targets[row];
  if (y < 0 || y >= V) {  // the same for the cluster's blocks: they leave before any cluster barrier
    const bool bad = y >= V;
    if (kBackward)
      for (int64_t c = 8 * c0 + threadIdx.x; c < std::min(V, 8 * c1); c += blockDim.x)
        x[c] = __float2bfloat16_rn(bad ? CUDART_NAN_F : 0.0f);
    if (rank == 0 && threadIdx.x == 0) loss[row] = bad ? CUDART_NAN : 0.0;
    return;
  }
  // x[y] before the first cluster barrier, hence before any block writes the row.
  const double xt = rank == 0 ? double(__bfloat162float(x[y])) : 0.0;
  float v[8], mx = -INFINITY;
#pragma unroll 4
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    const uint4 u = x8[c];
    part[c - c0] = u;
    unpack_bf16x8(u, v);
    mx = ce_chunk_max(v, c, V, mx);
  }
  mx = block_max(mx, fscratch);
  if (threadIdx.x == 0) part_max = mx;
  cluster.sync();
  for (unsigned r = 0; r < kCeBlocks; ++r) mx = fmaxf(mx, *cluster.map_shared_rank(&part_max, r));
  double sum = 0;
  for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
    unpack_bf16x8(part[c - c0], v);
    sum = ce_chunk_expsum(v, c, V, mx, sum);
  }
  sum = block_sum(sum, dscratch);
  if (threadIdx.x == 0) part_sum = sum;
  cluster.sync();
  sum = 0;
  for (unsigned r = 0; r < kCeBlocks; ++r) sum += *cluster.map_shared_rank(&part_sum, r);
  if (kBackward) {
    const float k = float(scale / sum), sc = float(scale);
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) x8[c] = ce_grad_chunk(part[c - c0], c, V, y, mx, k, sc);
  }
  if (rank == 0 && threadIdx.x == 0) loss[row] = log(sum) + double(mx) - xt;
  cluster.sync();  // no block leaves while another may still read its shared memory
}

// The cluster kernel's shared memory for V logits, or 0 where it does not serve: rows of up to 64K
// logits keep the single-block kernel, whose re-reads then mostly hit the L2 cache (seed-500m's
// 50,257: 285 us against 310 a 2048-row chunk; qwen2.5-1.5b's 151,936: 922 against 763, H100), and
// where a share does not fit.
size_t cluster_smem(int64_t V) {
  const size_t bytes = size_t(((V + 7) / 8 + kCeBlocks - 1) / kCeBlocks) * 16;
  return V > (int64_t(1) << 16) && bytes <= size_t(160) << 10 ? bytes : 0;
}

template <bool kBackward>
void launch_cluster(__nv_bfloat16* x, const int32_t* targets, int64_t n, int64_t V, int64_t ld, double scale,
                    double* loss, size_t smem, cudaStream_t s) {
  PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(cross_entropy_bf16_cluster_kernel<kBackward>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  cross_entropy_bf16_cluster_kernel<kBackward><<<unsigned(kCeBlocks * n), kCeThreads, smem, s>>>(x, targets, V, ld,
                                                                                                scale, loss);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

// One block per row. KL as cpu::kl_row / kl_backward_row, in fp64: the two log-normalizers
// (max, then log sum exp), then sum_j p_j (lp_j - lq_j) and, with kBackward, the row (grad, the
// same memory as logits) = scale * (q - p), each thread writing its own columns after the last
// reads of other columns (the reductions' barriers).
template <bool kBackward>
__global__ void __launch_bounds__(kLossThreads)
    kl_kernel(const float* logits, float* grad, const float* teacher, int64_t V, double scale, double* loss) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const float* x = logits + row * V;
  const float* tx = teacher + row * V;
  float* gx = kBackward ? grad + row * V : nullptr;
  double ms = -INFINITY, mt = -INFINITY;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) ms = fmax(ms, double(x[c])), mt = fmax(mt, double(tx[c]));
  ms = block_max(ms, scratch);
  mt = block_max(mt, scratch);
  double ss = 0, st = 0;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) ss += exp(double(x[c]) - ms), st += exp(double(tx[c]) - mt);
  ss = block_sum(ss, scratch);
  st = block_sum(st, scratch);
  const double ls = ms + log(ss), lt = mt + log(st);
  double kl = 0;
  for (int64_t c = threadIdx.x; c < V; c += blockDim.x) {
    const double lp = double(tx[c]) - lt, lq = double(x[c]) - ls;
    const double p = exp(lp);
    kl += p * (lp - lq);
    if (kBackward) gx[c] = float(scale * (exp(lq) - p));
  }
  kl = block_sum(kl, scratch);
  if (threadIdx.x == 0) loss[row] = fmax(kl, 0.0);  // >= 0 mathematically; rounding may leave -1e-17
}

void check_rows(const char* op, int64_t n, int64_t V) {
  PRIMAL_CHECK(n >= 0 && n <= INT_MAX && V > 0, "{}: invalid shape ({}, {})", op, n, V);
}

}  // namespace

void rmsnorm_forward_train(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                           float eps, cudaStream_t s) {
  check_rows("rmsnorm", N, C);
  if (N == 0) return;
  rmsnorm_rows_kernel<false, float><<<unsigned(N), kRowThreads, 0, s>>>(out, rstd, inp, nullptr,
                                                                        static_cast<const float*>(nullptr),
                                                                        weight, C, eps);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void rmsnorm_forward_train_bf16(uint16_t* out, float* rstd, const float* inp, const float* weight, int64_t N,
                                int64_t C, float eps, cudaStream_t s) {
  check_rows("rmsnorm", N, C);
  if (N == 0) return;
  rmsnorm_rows_kernel<false, __nv_bfloat16><<<unsigned(N), kRowThreads, 0, s>>>(
      reinterpret_cast<__nv_bfloat16*>(out), rstd, inp, nullptr, static_cast<const float*>(nullptr), weight, C, eps);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void add_rmsnorm_forward_train(float* out, uint16_t* out_bf16, float* rstd, float* x, const float* y,
                               const float* weight, int64_t N, int64_t C, float eps, cudaStream_t s) {
  check_rows("add + rmsnorm", N, C);
  PRIMAL_CHECK((out != nullptr) != (out_bf16 != nullptr) && x && y, "add + rmsnorm: one output, x and y");
  if (N == 0) return;
  if (out_bf16)
    rmsnorm_rows_kernel<true, __nv_bfloat16><<<unsigned(N), kRowThreads, 0, s>>>(
        reinterpret_cast<__nv_bfloat16*>(out_bf16), rstd, x, x, y, weight, C, eps);
  else
    rmsnorm_rows_kernel<true, float><<<unsigned(N), kRowThreads, 0, s>>>(out, rstd, x, x, y, weight, C, eps);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void add_rmsnorm_forward_train(float* out, uint16_t* out_bf16, float* rstd, float* sum, const float* x,
                               const uint16_t* y, const float* weight, int64_t N, int64_t C, float eps,
                               cudaStream_t s) {
  check_rows("add + rmsnorm", N, C);
  PRIMAL_CHECK((out != nullptr) != (out_bf16 != nullptr) && sum && x && y, "add + rmsnorm: one output, sum, x and y");
  if (N == 0) return;
  const auto* yb = reinterpret_cast<const __nv_bfloat16*>(y);
  if (out_bf16)
    rmsnorm_rows_kernel<true, __nv_bfloat16, __nv_bfloat16><<<unsigned(N), kRowThreads, 0, s>>>(
        reinterpret_cast<__nv_bfloat16*>(out_bf16), rstd, x, sum, yb, weight, C, eps);
  else
    rmsnorm_rows_kernel<true, float, __nv_bfloat16><<<unsigned(N), kRowThreads, 0, s>>>(out, rstd, x, sum, yb, weight,
                                                                                         C, eps);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void swiglu_forward_train_bf16(uint16_t* out, const uint16_t* gate, const uint16_t* up, int64_t N, cudaStream_t s) {
  if (N <= 0) return;
  using bf = __nv_bfloat16;
  if (N % 8 == 0 && aligned16(out) && aligned16(gate) && aligned16(up))
    swiglu_forward_bf16x8_kernel<<<grid_for(N / 8), 256, 0, s>>>(
        reinterpret_cast<uint4*>(out), reinterpret_cast<const uint4*>(gate), reinterpret_cast<const uint4*>(up), N / 8);
  else
    swiglu_forward_bf16_kernel<<<grid_for(N), 256, 0, s>>>(
        reinterpret_cast<bf*>(out), reinterpret_cast<const bf*>(gate), reinterpret_cast<const bf*>(up), N);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

namespace {

// With a scratch the rows are summed in slabs of kDwSlabRows by blocks of their own, then the
// slabs in order (a block per 32 columns alone, 40 blocks on seed-500m, was latency-bound).
template <bool kNorm>
void launch_column_sums(float* dw, const float* dout, const float* inp, const float* rstd, int64_t N, int64_t C,
                        double* scratch, cudaStream_t s) {
  const int64_t S = scratch ? (N + kDwSlabRows - 1) / kDwSlabRows : 1, R = scratch ? kDwSlabRows : N;
  rmsnorm_backward_dw_kernel<kNorm><<<dim3(unsigned((C + 31) / 32), unsigned(S)), dim3(32, kDwRowGroups), 0, s>>>(
      dw, dout, inp, rstd, N, C, R, scratch, C);
  PRIMAL_CUDA_CHECK_LAUNCH();
  if (!scratch) return;
  rmsnorm_dw_fold_kernel<<<grid_for(C), 256, 0, s>>>(dw, scratch, S, C);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C, cudaStream_t s, uint16_t* dinp_bf16,
                      double* dw_scratch) {
  check_rows("rmsnorm backward", N, C);
  if (N == 0) return;
  // The fused pass where its blocks still fill the device twice over (seed-500m's 2048 rows would
  // make 128 blocks of 16 rows in turn: slower than the two passes).
  const int64_t S = (N + kFusedRows - 1) / kFusedRows;
  if (dweight && dw_scratch && C <= kFusedCols * kRowThreads && S >= 2 * int64_t(sm_count())) {
    rmsnorm_backward_fused_kernel<<<unsigned(S), kRowThreads, 0, s>>>(
        dinp, dout, inp, weight, rstd, N, C, reinterpret_cast<__nv_bfloat16*>(dinp_bf16), dw_scratch);
    PRIMAL_CUDA_CHECK_LAUNCH();
    rmsnorm_slab_fold_kernel<<<unsigned((C + 31) / 32), dim3(32, kDwRowGroups), 0, s>>>(dweight, dw_scratch, S, C, C);
    PRIMAL_CUDA_CHECK_LAUNCH();
    return;
  }
  rmsnorm_backward_dx_kernel<<<unsigned(N), kRowThreads, 0, s>>>(dinp, dout, inp, weight, rstd, C,
                                                                 reinterpret_cast<__nv_bfloat16*>(dinp_bf16));
  PRIMAL_CUDA_CHECK_LAUNCH();
  if (!dweight) return;
  launch_column_sums<true>(dweight, dout, inp, rstd, N, C, dw_scratch, s);
}

void column_sums_add(float* dst, const float* x, int64_t N, int64_t C, double* slabs, cudaStream_t s) {
  check_rows("column sums", N, C);
  PRIMAL_CHECK(dst && x && slabs, "column_sums_add: a null pointer");
  if (N > 0) launch_column_sums<false>(dst, x, nullptr, nullptr, N, C, slabs, s);
}

void column_sums_bf16_add(const std::vector<ColumnSumOut>& outs, const uint16_t* x, int64_t ld, int64_t N,
                          double* slabs, int64_t slab_doubles, cudaStream_t s) {
  int64_t C = 0;
  for (const ColumnSumOut& o : outs) C += o.cols;
  check_rows("column sums", N, C);
  PRIMAL_CHECK(x && slabs && ld >= C, "column_sums_bf16_add: a null pointer or rows {} apart for {} columns", ld, C);
  if (N == 0 || C == 0) return;
  // 16-byte rows of 8 columns where the layout allows (the engine's), else the 2-byte kernel.
  const bool x8 = C % 8 == 0 && ld % 8 == 0 && aligned16(x);
  const int64_t R = x8 ? kBf16SlabRows : kDwSlabRows, S = (N + R - 1) / R;
  PRIMAL_CHECK(S * C <= slab_doubles, "column_sums_bf16_add: {} slab values for {}", slab_doubles, S * C);
  if (x8) {
    column_slabs_bf16x8_kernel<<<dim3(unsigned((C / 8 + 127) / 128), unsigned(S)), 128, 0, s>>>(
        reinterpret_cast<const uint4*>(x), ld / 8, N, C / 8, slabs);
  } else {
    rmsnorm_backward_dw_kernel<false, __nv_bfloat16>
        <<<dim3(unsigned((C + 31) / 32), unsigned(S)), dim3(32, kDwRowGroups), 0, s>>>(
            nullptr, reinterpret_cast<const __nv_bfloat16*>(x), nullptr, nullptr, N, C, R, slabs, ld);
  }
  PRIMAL_CUDA_CHECK_LAUNCH();
  int64_t c0 = 0;
  for (const ColumnSumOut& o : outs) {
    if (o.dst && o.cols > 0) {
      rmsnorm_slab_fold_kernel<<<unsigned((o.cols + 31) / 32), dim3(32, kDwRowGroups), 0, s>>>(o.dst, slabs + c0, S,
                                                                                              o.cols, C);
      PRIMAL_CUDA_CHECK_LAUNCH();
    }
    c0 += o.cols;
  }
}

// The fused backward's slabs (kFusedRows rows) or the column sums' (kDwSlabRows), whichever is more.
int64_t rmsnorm_dw_scratch_doubles(int64_t N, int64_t C) {
  static_assert(kFusedRows <= kDwSlabRows);
  return (N + kFusedRows - 1) / kFusedRows * C;
}

void rope_table(float* cos_sin, int64_t T, const RopeTrainParams& p, cudaStream_t s) {
  PRIMAL_CHECK(p.n_rot > 0 && p.n_rot % 2 == 0 && p.inv_freq && cos_sin && T >= 0, "rope_table: bad arguments");
  const int64_t half = p.n_rot / 2;
  if (T == 0) return;
  rope_table_kernel<<<grid_for(T * half), 256, 0, s>>>(cos_sin, T, half, p.inv_freq);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void rope_rotate(float* x, int64_t B, int64_t T, int64_t n_heads, int64_t pos0, const RopeTrainParams& p,
                 bool inverse, cudaStream_t s, uint16_t* out_bf16, bool write_f32, int64_t ld_bf16,
                 const float* bias, int64_t ld_f32) {
  PRIMAL_CHECK(p.n_rot > 0 && p.n_rot % 2 == 0 && p.n_rot <= p.head_dim && p.inv_freq,
               "rope: inconsistent parameters (HS {}, n_rot {})", p.head_dim, p.n_rot);
  PRIMAL_CHECK(B >= 0 && T >= 0 && n_heads >= 0 && pos0 >= 0, "rope: invalid shape ({}, {}, {}) at {}", B, T,
               n_heads, pos0);
  PRIMAL_CHECK(!out_bf16 || p.n_rot == p.head_dim, "rope: a bf16 copy needs every dimension rotated (n_rot {} of {})",
               p.n_rot, p.head_dim);
  PRIMAL_CHECK(write_f32 || out_bf16, "rope: no output (write_f32 false without a bf16 copy)");
  const int64_t ldb = ld_bf16 > 0 ? ld_bf16 : n_heads * p.head_dim;
  PRIMAL_CHECK(ldb >= n_heads * p.head_dim, "rope: bf16 row stride {} for {} heads of {}", ldb, n_heads, p.head_dim);
  const int64_t ldx = ld_f32 > 0 ? ld_f32 : n_heads * p.head_dim;
  PRIMAL_CHECK(ldx >= n_heads * p.head_dim, "rope: row stride {} for {} heads of {}", ldx, n_heads, p.head_dim);
  const int64_t half = p.n_rot / 2, n = B * T * half;
  if (n == 0 || n_heads == 0) return;
  const float* table = p.cos_sin && pos0 + T <= p.table_len ? p.cos_sin : nullptr;
  if (table && half % 2 == 0 && p.head_dim % 4 == 0 && ldb % 4 == 0 && ldx % 4 == 0) {  // (aligned vector accesses)
    rope_rotate2_kernel<<<grid_for(n / 2 * n_heads), 256, 0, s>>>(x, B * T, T, n_heads, p.head_dim, half, p.neox, table, pos0,
                                                       inverse, reinterpret_cast<__nv_bfloat16*>(out_bf16), write_f32, ldb,
                                                       bias, ldx);
    PRIMAL_CUDA_CHECK_LAUNCH();
    return;
  }
  rope_rotate_kernel<<<grid_for(n), 256, 0, s>>>(x, B * T, T, n_heads, p.head_dim, half, p.neox, p.inv_freq, table,
                                                 pos0, inverse, reinterpret_cast<__nv_bfloat16*>(out_bf16), write_f32, ldb,
                                                 bias, ldx);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

bool rope_bf16_inplace_ok(const RopeTrainParams& p, int64_t T) {
  return p.n_rot == p.head_dim && p.cos_sin && T <= p.table_len && (p.n_rot / 2) % 2 == 0 && p.head_dim % 4 == 0;
}

namespace {
// The bf16 in-place rotation both directions share (rows ld apart a token; 0: n_heads HS).
void rope_bf16_inplace(uint16_t* xb, int64_t B, int64_t T, int64_t n_heads, const RopeTrainParams& p, int64_t ld,
                       bool inverse, cudaStream_t s) {
  // (the kernel moves 4 values as one 8-byte word: rows must start 8-byte aligned)
  PRIMAL_CHECK(rope_bf16_inplace_ok(p, T) && B >= 0 && n_heads >= 0 &&
                   (ld == 0 || (ld >= n_heads * p.head_dim && ld % 4 == 0)),
               "rope (bf16): needs every dimension rotated, a table for {} positions, HS % 4 == 0 and a row stride "
               "of at least n_heads HS, a multiple of 4",
               T);
  const int64_t half = p.n_rot / 2, n = B * T * half;
  if (n == 0 || n_heads == 0) return;
  rope_rotate2_bf16_kernel<<<grid_for(n / 2 * n_heads), 256, 0, s>>>(reinterpret_cast<__nv_bfloat16*>(xb), B * T, T,
                                                                     n_heads, p.head_dim, half, p.neox, p.cos_sin, 0,
                                                                     ld > 0 ? ld : n_heads * p.head_dim, inverse);
  PRIMAL_CUDA_CHECK_LAUNCH();
}
}  // namespace

void rope_forward_train_bf16(uint16_t* xb, int64_t B, int64_t T, int64_t n_heads, const RopeTrainParams& p,
                             cudaStream_t s) {
  rope_bf16_inplace(xb, B, T, n_heads, p, 0, false, s);
}

void rope_backward_train_bf16(uint16_t* xb, int64_t B, int64_t T, int64_t n_heads, const RopeTrainParams& p,
                              int64_t ld, cudaStream_t s) {
  rope_bf16_inplace(xb, B, T, n_heads, p, ld, true, s);
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N,
                     cudaStream_t s) {
  if (N <= 0) return;
  swiglu_backward_kernel<float><<<grid_for(N), 256, 0, s>>>(dgate, dup, dout, gate, up, N);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const float* dout, const uint16_t* gate,
                          const uint16_t* up, int64_t N, cudaStream_t s) {
  if (N <= 0) return;
  using bf = __nv_bfloat16;
  swiglu_backward_kernel<bf, bf><<<grid_for(N), 256, 0, s>>>(reinterpret_cast<bf*>(dgate), reinterpret_cast<bf*>(dup),
                                                             dout, reinterpret_cast<const bf*>(gate),
                                                             reinterpret_cast<const bf*>(up), N);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const uint16_t* dout, const uint16_t* gate,
                          const uint16_t* up, int64_t N, cudaStream_t s, uint16_t* h) {
  if (N <= 0) return;
  using bf = __nv_bfloat16;
  if (N % 8 == 0 && aligned16(dgate) && aligned16(dup) && aligned16(dout) && aligned16(gate) && aligned16(up) &&
      aligned16(h)) {
    auto* dg = reinterpret_cast<uint4*>(dgate);
    auto* du = reinterpret_cast<uint4*>(dup);
    const auto *d = reinterpret_cast<const uint4*>(dout), *g = reinterpret_cast<const uint4*>(gate),
               *u = reinterpret_cast<const uint4*>(up);
    if (h)
      swiglu_backward_bf16x8_kernel<true><<<grid_for(N / 8), 256, 0, s>>>(dg, du, d, g, u, N / 8,
                                                                          reinterpret_cast<uint4*>(h));
    else
      swiglu_backward_bf16x8_kernel<false><<<grid_for(N / 8), 256, 0, s>>>(dg, du, d, g, u, N / 8, nullptr);
    PRIMAL_CUDA_CHECK_LAUNCH();
    return;
  }
  if (h) swiglu_forward_train_bf16(h, gate, up, N, s);  // (from gate and up, which the backward leaves)
  swiglu_backward_kernel<bf, bf, bf><<<grid_for(N), 256, 0, s>>>(
      reinterpret_cast<bf*>(dgate), reinterpret_cast<bf*>(dup), reinterpret_cast<const bf*>(dout),
      reinterpret_cast<const bf*>(gate), reinterpret_cast<const bf*>(up), N);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void embedding_forward_train(float* out, const int32_t* tokens, int64_t N, const float* table, int64_t V, int64_t C,
                             int32_t* flag, cudaStream_t s) {
  PRIMAL_CHECK(N >= 0 && N < kNoBadToken && V > 0 && C > 0 && flag, "embedding: invalid shape ({}, {}, {})", N, V,
               C);
  if (N == 0) return;
  fill_bytes_async(flag, 0x7f, sizeof(int32_t), s);
  embedding_forward_kernel<<<unsigned(N), 128, 0, s>>>(out, tokens, table, V, C, flag);
  PRIMAL_CUDA_CHECK_LAUNCH();
  int32_t first = kNoBadToken;
  copy_to_host_async(&first, flag, sizeof(int32_t), s);
  Stream::sync_stream(s);
  if (first != kNoBadToken) {
    int32_t id = 0;
    copy_to_host(&id, tokens + first, sizeof(int32_t));
    fail("token id {} at position {} is outside the vocabulary (0..{})", id, first, V - 1);
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t V, int64_t C,
                        cudaStream_t s) {
  PRIMAL_CHECK(N >= 0 && V > 0 && C > 0, "embedding backward: invalid shape ({}, {}, {})", N, V, C);
  if (N == 0) return;
  const dim3 grid(unsigned((C + 31) / 32), kEmbBuckets / kEmbWarps);
  embedding_backward_kernel<<<grid, 32 * kEmbWarps, 0, s>>>(dtable, dout, tokens, N, V, C);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void cross_entropy_rows(const float* logits, const int32_t* targets, int64_t n, int64_t V, double* loss,
                        cudaStream_t s) {
  check_rows("cross-entropy", n, V);
  if (n == 0) return;
  cross_entropy_kernel<false><<<unsigned(n), kLossThreads, 0, s>>>(logits, nullptr, targets, V, 0.0, loss);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward_rows(float* logits, const int32_t* targets, int64_t n, int64_t V, double scale,
                                 double* loss, cudaStream_t s) {
  check_rows("cross-entropy", n, V);
  if (n == 0) return;
  cross_entropy_kernel<true><<<unsigned(n), kLossThreads, 0, s>>>(logits, logits, targets, V, scale, loss);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward_rows_bf16(const float* logits, uint16_t* grad, const int32_t* targets, int64_t n,
                                      int64_t V, double scale, double* loss, cudaStream_t s) {
  check_rows("cross-entropy", n, V);
  PRIMAL_CHECK(grad && logits, "cross-entropy: null logits or gradient");
  if (n == 0) return;
  cross_entropy_kernel<true><<<unsigned(n), kLossThreads, 0, s>>>(logits, nullptr, targets, V, scale, loss,
                                                                  reinterpret_cast<__nv_bfloat16*>(grad));
  PRIMAL_CUDA_CHECK_LAUNCH();
}

// The vector kernel's precondition: rows a multiple of 8 values apart from a 16-byte aligned start.
bool g_ce_single = false;  // set_cross_entropy_single_block

bool bf16x8_ok(const uint16_t* logits, int64_t ld) {
  return ld > 0 && ld % 8 == 0 && reinterpret_cast<uintptr_t>(logits) % 16 == 0;
}

void set_cross_entropy_single_block(bool on) { g_ce_single = on; }

void cross_entropy_rows_bf16(const uint16_t* logits, const int32_t* targets, int64_t n, int64_t V, double* loss,
                             cudaStream_t s, int64_t ld) {
  check_rows("cross-entropy", n, V);
  PRIMAL_CHECK(ld == 0 || ld >= V, "cross-entropy: row stride {} below {} columns", ld, V);
  if (n == 0) return;
  if (bf16x8_ok(logits, ld) && cluster_smem(V) && !g_ce_single) {
    launch_cluster<false>(reinterpret_cast<__nv_bfloat16*>(const_cast<uint16_t*>(logits)), targets, n, V, ld, 0.0, loss,
                       cluster_smem(V), s);
    return;
  }
  if (bf16x8_ok(logits, ld)) {
    cross_entropy_bf16x8_kernel<false><<<unsigned(n), kLossThreads, 0, s>>>(
        reinterpret_cast<__nv_bfloat16*>(const_cast<uint16_t*>(logits)), targets, V, ld, 0.0, loss);
    PRIMAL_CUDA_CHECK_LAUNCH();
    return;
  }
  cross_entropy_kernel<false, __nv_bfloat16><<<unsigned(n), kLossThreads, 0, s>>>(
      reinterpret_cast<const __nv_bfloat16*>(logits), nullptr, targets, V, 0.0, loss, nullptr, ld);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward_rows_bf16_inplace(uint16_t* logits, const int32_t* targets, int64_t n, int64_t V,
                                              double scale, double* loss, cudaStream_t s, int64_t ld) {
  check_rows("cross-entropy", n, V);
  PRIMAL_CHECK(ld == 0 || ld >= V, "cross-entropy: row stride {} below {} columns", ld, V);
  if (n == 0) return;
  auto* x = reinterpret_cast<__nv_bfloat16*>(logits);
  if (bf16x8_ok(logits, ld) && cluster_smem(V) && !g_ce_single) {
    launch_cluster<true>(x, targets, n, V, ld, scale, loss, cluster_smem(V), s);
    return;
  }
  if (bf16x8_ok(logits, ld)) {
    cross_entropy_bf16x8_kernel<true><<<unsigned(n), kLossThreads, 0, s>>>(x, targets, V, ld, scale, loss);
    PRIMAL_CUDA_CHECK_LAUNCH();
    return;
  }
  cross_entropy_kernel<true, __nv_bfloat16><<<unsigned(n), kLossThreads, 0, s>>>(x, nullptr, targets, V, scale, loss, x,
                                                                                 ld);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void kl_rows(const float* logits, const float* teacher, int64_t n, int64_t V, double* loss, cudaStream_t s) {
  check_rows("kl", n, V);
  if (n == 0) return;
  kl_kernel<false><<<unsigned(n), kLossThreads, 0, s>>>(logits, nullptr, teacher, V, 0.0, loss);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void kl_backward_rows(float* logits, const float* teacher, int64_t n, int64_t V, double scale, double* loss,
                      cudaStream_t s) {
  check_rows("kl", n, V);
  if (n == 0) return;
  kl_kernel<true><<<unsigned(n), kLossThreads, 0, s>>>(logits, logits, teacher, V, scale, loss);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
