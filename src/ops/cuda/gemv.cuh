// The GEMV kernel template (see gemv.h), instantiated per format in gemv_*.cu.
#pragma once
#include <algorithm>
#include <type_traits>

#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/formats.cuh"
#include "ops/cuda/gemv.h"
#include "ops/cuda/launch.cuh"

namespace primal::cuda::detail {

constexpr int kGemvMaxThreads = 512;  // a block: 128..512 threads (see gemv.cu)
constexpr int kGemvMaxJobs = 2;  // rows one lane group accumulates at once

struct GemvLaunch {
  GemvParams p;
  int64_t seg_end[3] = {0, 0, 0};  // cumulative rows of the segments
  int64_t n_rows = 0;              // logical rows: all segments' rows, or the gate's for SwiGLU
  int lpr = 32;                    // lanes per row group: 8, 16 or 32
  int rps = 1;                     // rows per group: 1 or 2 (SwiGLU: 1, its gate row and its up row)
  int threads = 128;               // per block
  bool deep = false;               // few rows: twice the units per step where the format has a variant
};

// The rows a lane group works on for one row group: segment, row and validity of each job.
struct Jobs {
  int seg[kGemvMaxJobs];
  int64_t row[kGemvMaxJobs];
  bool ok[kGemvMaxJobs];
};

__device__ __forceinline__ Jobs make_jobs(const GemvLaunch& a, int64_t r0, bool paired, int n_jobs) {
  Jobs J;
#pragma unroll
  for (int j = 0; j < kGemvMaxJobs; ++j) {
    const int64_t logical = r0 + (paired ? 0 : j);
    J.ok[j] = j < n_jobs && logical < a.n_rows;
    if (paired) {
      J.seg[j] = j;
      J.row[j] = logical;
    } else {
      J.seg[j] = (logical >= a.seg_end[0]) + (logical >= a.seg_end[1]);
      J.row[j] = logical - (J.seg[j] == 0 ? 0 : a.seg_end[J.seg[j] - 1]);
    }
    // A job past the end reads row 0 of segment 0 (valid memory), so that the loads of all
    // jobs are issued together without branches; its sum is dropped.
    if (!J.ok[j]) J.seg[j] = 0, J.row[j] = 0;
  }
  return J;
}

// Grid values per segment that the GEMV stages in shared memory: Unit::kGrid of the LUT formats,
// 0 for the others.
template <class U, class = void>
struct GridSmem {
  static constexpr int value = 0;
};
template <class U>
struct GridSmem<U, std::void_t<decltype(U::kGrid)>> {
  static constexpr int value = U::kGrid;
};

template <DType T, int NJ, int P>  // NJ jobs: rows per group, or gate + up; P units per step
__global__ void __launch_bounds__(kGemvMaxThreads) gemv_kernel(const __grid_constant__ GemvLaunch a) {
  using U = fmt::Unit<T>;
  // The input, swizzled in 16-byte pieces: float4 j (0..7) of unit u (32 floats) lives at
  // u * 8 + (j ^ (u & 7)), so eight consecutive lanes reading piece j of consecutive units hit
  // eight different bank groups.
  extern __shared__ float4 xs[];
  __shared__ double scratch[32];
  const int64_t I = a.p.seg[0].w.cols, n_units = I / 32;
  const int tid = threadIdx.x;
  const int lane = tid % a.lpr, group = tid / a.lpr, n_groups = int(blockDim.x) / a.lpr;
  const bool paired = a.p.mode == GemvMode::SwiGLU;
  constexpr int n_jobs = NJ;
  const int64_t rows_per_block = int64_t(n_groups) * a.rps, stride = int64_t(gridDim.x) * rows_per_block;
  const int n_iter = int((n_units + P * a.lpr - 1) / (P * a.lpr));  // steps per row group

  // Each lane walks a flat sequence of steps (row group, unit) and always has the next step's
  // weights in flight while it computes the current one: the loads of a row group's first unit
  // are issued before the input is staged, those of the next row group before the reduction.
  int64_t base = blockIdx.x * rows_per_block;
  Jobs J = make_jobs(a, base + int64_t(group) * a.rps, paired, n_jobs);
  fmt::RowPtr rp[NJ];
#pragma unroll
  for (int j = 0; j < NJ; ++j) rp[j] = fmt::row_ptr(a.p.seg[J.seg[j]].w, J.row[j]);
  // Unit p of step k is lane + (k P + p) lpr; one past the end re-reads the last (discarded).
  auto unit = [&](int step, int p) { return min(lane + int64_t(step * P + p) * a.lpr, n_units - 1); };
  typename U::Raw next[P][NJ];
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int j = 0; j < NJ; ++j) next[p][j] = U::load(rp[j], unit(0, p));

  // LUT grids: segment k's at gs + k KG, after the input (I floats, a multiple of 32).
  constexpr int KG = GridSmem<U>::value;
  float* gs = reinterpret_cast<float*>(xs) + I;
  if constexpr (KG > 0)
    for (int i = tid; i < a.p.n_seg * KG; i += blockDim.x) gs[i] = __ldg(a.p.seg[i / KG].w.grid + i % KG);

  // The weights above need nothing from the previous kernel; the input does.
  pdl_trigger();
  pdl_wait();
  float scale = 1.0f;
  if (a.p.norm_w) {
    double ss = 0;
#pragma unroll 4
    for (int64_t i = tid; i < I; i += blockDim.x) {
      const double v = a.p.x[i];
      ss += v * v;
    }
    scale = rms_scale(block_sum(ss, scratch), I, a.p.eps);
  }
  const float4* x4 = reinterpret_cast<const float4*>(a.p.x);
  const float4* n4 = reinterpret_cast<const float4*>(a.p.norm_w);
  // int8 input: codes (n_units, 32) in 16-byte halves, half h of unit u at 2u + (h ^ (u >> 2 & 1))
  // (eight lanes reading one half of eight consecutive units hit eight bank groups), then the
  // code sums over each half (n_units int2, 8-byte aligned as I is a multiple of 32) and the
  // scales dx (n_units).
  uint4* xq = reinterpret_cast<uint4*>(xs);
  int2* xsum = reinterpret_cast<int2*>(reinterpret_cast<uint8_t*>(xs) + I);
  float* xd = reinterpret_cast<float*>(xsum + n_units);
  // Eight consecutive threads hold the eight float4 of a unit (blockDim is a multiple of 8): the
  // whole block steps together so that every lane takes part in the shuffles.
#pragma unroll 4
  for (int64_t b4 = 0; b4 < I / 4; b4 += blockDim.x) {
    const int64_t i4 = b4 + tid;
    const bool in = i4 < I / 4;
    float4 v = in ? x4[i4] : make_float4(0, 0, 0, 0);
    if (n4 && in) {  // (x * scale) * w, two roundings as on the CPU
      const float4 g = n4[i4];
      v.x = __fmul_rn(__fmul_rn(v.x, scale), g.x);
      v.y = __fmul_rn(__fmul_rn(v.y, scale), g.y);
      v.z = __fmul_rn(__fmul_rn(v.z, scale), g.z);
      v.w = __fmul_rn(__fmul_rn(v.w, scale), g.w);
    }
    const int64_t u = i4 / 8;
    const int j = int(i4 % 8);
    if constexpr (U::kInt8) {
      float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
      for (int o = 1; o < 8; o *= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      const int q0 = __float2int_rn(v.x * inv), q1 = __float2int_rn(v.y * inv);
      const int q2 = __float2int_rn(v.z * inv), q3 = __float2int_rn(v.w * inv);
      int sum = q0 + q1 + q2 + q3;
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);  // over the 4 threads of a 16-element half
      if (in) {
        const uint32_t packed = uint32_t(q0 & 0xFF) | uint32_t(q1 & 0xFF) << 8 | uint32_t(q2 & 0xFF) << 16 |
                                uint32_t(q3 & 0xFF) << 24;
        const int64_t chunk = 2 * u + ((j / 4) ^ int((u >> 2) & 1));
        reinterpret_cast<uint32_t*>(xq + chunk)[j % 4] = packed;
        if (j == 0) xd[u] = amax / 127.0f, xsum[u].x = sum;
        if (j == 4) xsum[u].y = sum;
      }
    } else if (in) {
      xs[u * 8 + (j ^ int(u & 7))] = v;
    }
  }
  __syncthreads();

  while (base < a.n_rows) {
    float acc[NJ];
#pragma unroll
    for (int j = 0; j < NJ; ++j) acc[j] = 0.0f;
    const int64_t next_base = base + stride;
    Jobs Jn = J;
    for (int k = 0; k < n_iter; ++k) {
      typename U::Raw cur[P][NJ];
#pragma unroll
      for (int p = 0; p < P; ++p)
#pragma unroll
        for (int j = 0; j < NJ; ++j) cur[p][j] = next[p][j];
      if (k + 1 < n_iter) {  // the next step of this row group
#pragma unroll
        for (int p = 0; p < P; ++p)
#pragma unroll
          for (int j = 0; j < NJ; ++j) next[p][j] = U::load(rp[j], unit(k + 1, p));
      } else if (next_base < a.n_rows) {  // the first step of the next row group
        Jn = make_jobs(a, next_base + int64_t(group) * a.rps, paired, n_jobs);
#pragma unroll
        for (int j = 0; j < NJ; ++j) rp[j] = fmt::row_ptr(a.p.seg[Jn.seg[j]].w, Jn.row[j]);
#pragma unroll
        for (int p = 0; p < P; ++p)
#pragma unroll
          for (int j = 0; j < NJ; ++j) next[p][j] = U::load(rp[j], unit(0, p));
      }
#pragma unroll
      for (int p = 0; p < P; ++p) {
        const int64_t u = lane + int64_t(k * P + p) * a.lpr;
        if (u >= n_units) break;
        if constexpr (U::kInt8) {
          const int sw = int((u >> 2) & 1);
          const uint4 lo = xq[2 * u + sw], hi = xq[2 * u + (1 ^ sw)];
          const uint32_t X[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
          const float dx = xd[u];
          const int2 sx = xsum[u];
#pragma unroll
          for (int j = 0; j < NJ; ++j) acc[j] += U::dot8(cur[p][j], X, dx, sx.x, sx.y);
        } else {
          float xr[32];
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const float4 v = xs[u * 8 + (i ^ int(u & 7))];
            xr[4 * i] = v.x, xr[4 * i + 1] = v.y, xr[4 * i + 2] = v.z, xr[4 * i + 3] = v.w;
          }
#pragma unroll
          for (int j = 0; j < NJ; ++j) {
            if constexpr (KG > 0) acc[j] += U::dot(cur[p][j], xr, gs + J.seg[j] * KG);
            else acc[j] += U::dot(cur[p][j], xr);
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < NJ; ++j) acc[j] = group_sum(J.ok[j] ? acc[j] : 0.0f, a.lpr);
    if (lane == 0) {
      if (paired) {  // job 0 is the gate row, job 1 the same up row
        if (J.ok[0]) a.p.seg[0].out[J.row[0]] = acc[0] / (1.0f + expf(-acc[0])) * acc[NJ - 1];
      } else {
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          if (!J.ok[j]) continue;
          const GemvSegment& sg = a.p.seg[J.seg[j]];
          if (a.p.mode == GemvMode::Accumulate) {
            sg.out[J.row[j]] += acc[j];
          } else {
            sg.out[J.row[j]] = sg.bias ? acc[j] + sg.bias[J.row[j]] : acc[j];
          }
        }
      }
    }
    base = next_base;
    J = Jn;
  }
}

// Shared memory the kernel needs for an input of I floats: fp32, or int8 codes + per-unit scale
// and code sums; LUT formats add the grids of up to 3 segments.
template <DType T>
size_t gemv_smem(int64_t I) {
  return fmt::Unit<T>::kInt8 ? size_t(I) + size_t(I / 32) * (sizeof(float) + sizeof(int2))
                             : size_t(I) * sizeof(float) + 3 * GridSmem<fmt::Unit<T>>::value * sizeof(float);
}

template <DType T, int NJ, int P = fmt::Unit<T>::kPrefetch>
void launch_gemv_nj(const GemvLaunch& a, cudaStream_t s) {
  const size_t smem = gemv_smem<T>(a.p.seg[0].w.cols);
  static const int max_smem = [] {
    int dev = 0, v = 0;
    PRIMAL_CUDA_CHECK(cudaGetDevice(&dev));
    PRIMAL_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(gemv_kernel<T, NJ, P>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           v - int(32 * sizeof(double))));
    return v - int(32 * sizeof(double));
  }();
  PRIMAL_CHECK(smem <= size_t(max_smem), "gemv: an input of {} floats does not fit in shared memory ({} bytes)",
               a.p.seg[0].w.cols, max_smem);
  int per_sm = 0;
  PRIMAL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemv_kernel<T, NJ, P>, a.threads, smem));
  const int64_t rows_per_block = int64_t(a.threads / a.lpr) * a.rps;
  const int64_t blocks = (a.n_rows + rows_per_block - 1) / rows_per_block;
  const int grid = int(std::min<int64_t>(blocks, int64_t(std::max(per_sm, 1)) * sm_count()));
  launch_kernel(gemv_kernel<T, NJ, P>, dim3(grid), dim3(a.threads), smem, s, a);
}

// Units per step for matrices of few rows (GemvLaunch::deep): Unit::kPrefetchDeep where the
// format has it, else kPrefetch. When the rows leave most lane groups of the GPU without work,
// the groups that run are better off with twice the bytes in flight (H100, qwen2.5-1.5B shapes,
// tg128: Q4_0 2 -> 4 units 1009 -> 1041 tok/s, Q8_0 1 -> 2 750 -> 828, F16 1 -> 2 534 -> 555;
// llama2-7B's larger matrices do not take this path).
template <class U, class = void>
struct DeepPrefetch {
  static constexpr int value = U::kPrefetch;
};
template <class U>
struct DeepPrefetch<U, std::void_t<decltype(U::kPrefetchDeep)>> {
  static constexpr int value = U::kPrefetchDeep;
};

template <DType T>
void launch_gemv(const GemvLaunch& a, cudaStream_t s) {
  using U = fmt::Unit<T>;
  constexpr int PD = DeepPrefetch<U>::value;
  if (a.p.mode == GemvMode::SwiGLU || a.rps == 2) {
    launch_gemv_nj<T, 2>(a, s);
  } else if constexpr (PD != U::kPrefetch) {
    if (a.deep) launch_gemv_nj<T, 1, PD>(a, s);
    else launch_gemv_nj<T, 1>(a, s);
  } else {
    launch_gemv_nj<T, 1>(a, s);
  }
}

// Per format group (gemv_float.cu, gemv_legacy.cu, gemv_kquants.cu, gemv_lut.cu); false when `t` is not theirs.
bool gemv_float(DType t, const GemvLaunch& a, cudaStream_t s);
bool gemv_legacy(DType t, const GemvLaunch& a, cudaStream_t s);
bool gemv_kquants(DType t, const GemvLaunch& a, cudaStream_t s);
bool gemv_lut(DType t, const GemvLaunch& a, cudaStream_t s);

}  // namespace primal::cuda::detail
