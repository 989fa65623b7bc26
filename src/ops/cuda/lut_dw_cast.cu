// The fused weight gradient + vote cast (lut_dw_cast.h). Compiled for sm_90a only (CMakeLists.txt).
//
// Block: 384 threads. Warpgroup 0 is the producer (one thread issues the TMA copies; 40 registers),
// warpgroups 1 and 2 the consumers (232 registers), each owning 64 rows of the 128 x 256 tile:
// wgmma m64n256k16 with both operands MN-major in shared memory (dout's rows hold output rows o,
// inp's rows hold columns i: A = dout^T and B = inp are read transposed, so no transposed copy).
// Accumulator layout of a consumer thread (warp w of its warpgroup, lane 4 g + q): acc[4 j + e]
// is row 16 w + g, column 8 j + 2 q + e; acc[4 j + 2 + e] the same column of row 16 w + g + 8.
#include "ops/cuda/lut_dw_cast.h"

#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdlib>

#include "ops/cuda/buffer.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/hopper.cuh"
#include "ops/cuda/rng.cuh"
#include "ops/cuda/tensor_map.h"
#include "ops/cuda/votes_common.cuh"

namespace primal::cuda {
namespace {

constexpr int kBK = 64, kStages = 4, kThreads = 384;
constexpr uint32_t kABytes = kDwBM * kBK * 2, kBBytes = kDwBN * kBK * 2;
// The MN-major descriptors (hopper.cuh): 64-value boxes of kBK rows 8 KB apart (LBO), 8-row groups
// 1 KB apart (SBO), a k16 step 16 rows of 128 bytes.
constexpr uint32_t kBoxBytes = 64 * kBK * 2, kGroupBytes = 1024, kK16Bytes = 2048;

struct Smem {
  uint16_t a[kStages][kDwBM * kBK];  // two 64 x 64 boxes (rows o0 .. o0+63, o0+64 ..), 128-byte swizzle
  uint16_t b[kStages][kDwBN * kBK];  // four 64 x 64 boxes (columns i0 + 64 c ..)
  float colsum[8][kDwBN];            // each consumer warp's column sums
  float scn[kDwBN];                  // sqrt(col_norm) of the tile's columns
  float grid[256], inv[512];         // grid values; 1 / the gap (inv[256 up + q])
  float dsum[kDwBM * 32];            // the scale gradient's group sums of the tile (rows, kDwBN / G)
  uint64_t full[kStages], empty[kStages];
};
constexpr size_t kSmemBytes = sizeof(Smem) + 1024;  // + alignment of the tiles to 1024 bytes

__device__ __forceinline__ float bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// The indices of 32 consecutive columns (B-bit fields, LSB first) as B 32-bit words.
template <int B>
__device__ __forceinline__ void load_idx32(const uint8_t* p, uint32_t (&w)[B]) {
  if constexpr (B == 2) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    w[0] = x.x, w[1] = x.y;
  } else if constexpr (B == 4) {
    const uint4 x = *reinterpret_cast<const uint4*>(p);
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
  } else {
    const uint4 x = reinterpret_cast<const uint4*>(p)[0], y = reinterpret_cast<const uint4*>(p)[1];
    w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w, w[4] = y.x, w[5] = y.y, w[6] = y.z, w[7] = y.w;
  }
}
template <int B>
__device__ __forceinline__ uint32_t idx_at(const uint32_t (&w)[B], int c) {  // c < 32
  return (w[(c * B) >> 5] >> ((c * B) & 31)) & ((1u << B) - 1u);
}

// The cast of one tile from the consumer's accumulators (see the file comment for the layout).
template <int B>
__device__ __forceinline__ void cast_tile(float (&acc)[128], const DwCastLaunch& L, Smem& sm, int rb, int tn, int ntn,
                                          int wg, int tid) {
  const int warp = tid >> 5, lane = tid & 31, g4 = lane >> 2, q = lane & 3, ct = 128 * wg + tid;
  int k = 0;
  while (k + 1 < L.nseg && rb >= L.seg[k + 1].rb0) ++k;
  const DwSeg& S = L.seg[k];
  const int64_t I = L.I, i0 = int64_t(tn) * kDwBN;
  const int rl = 64 * wg + 16 * warp + g4;  // the tile row of acc[4 j + e]; rl + 8 of acc[4 j + 2 + e]
  const int64_t oA = int64_t(rb - S.rb0) * kDwBM + rl, oB = oA + 8;
  const float c0 = S.f.dyn ? S.f.dyn->c0 : S.f.c0, inv_bc = S.f.dyn ? S.f.dyn->inv_bc : S.f.inv_bc;
  const uint64_t prefix = S.f.dyn ? S.f.dyn->prefix : S.prefix;
  const bool cast = c0 != 0.0f;

  sm90::named_sync(1, 256);  // the previous tile's readers of the tables are done
  vk::gap_tables(S.m.grid, int(S.m.K), sm.grid, sm.inv, ct, 256);
  sm.scn[ct] = sqrtf(S.col_norm[i0 + ct]);

  // The values as the unfused GEMM wrote them (bf16), their row sums of squares (a quad holds a
  // row's 256 columns), and each warp's column sums of g^2 / O over its 16 rows.
  float sqA = 0.0f, sqB = 0.0f;
#pragma unroll
  for (int x = 0; x < 128; ++x) acc[x] = bf16_round(acc[x]);
  if (L.dw_out) {
    uint32_t* rA = reinterpret_cast<uint32_t*>(L.dw_out + (int64_t(rb) * kDwBM + rl) * I + i0);
    uint32_t* rB = reinterpret_cast<uint32_t*>(L.dw_out + (int64_t(rb) * kDwBM + rl + 8) * I + i0);
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const __nv_bfloat162 a = __floats2bfloat162_rn(acc[4 * j], acc[4 * j + 1]);
      const __nv_bfloat162 b = __floats2bfloat162_rn(acc[4 * j + 2], acc[4 * j + 3]);
      rA[4 * j + q] = *reinterpret_cast<const uint32_t*>(&a);
      rB[4 * j + q] = *reinterpret_cast<const uint32_t*>(&b);
    }
  }
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    sqA += acc[4 * j] * acc[4 * j], sqA += acc[4 * j + 1] * acc[4 * j + 1];
    sqB += acc[4 * j + 2] * acc[4 * j + 2], sqB += acc[4 * j + 3] * acc[4 * j + 3];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float c = acc[4 * j + e] * acc[4 * j + e] * S.f.inv_o + acc[4 * j + 2 + e] * acc[4 * j + 2 + e] * S.f.inv_o;
      c += __shfl_xor_sync(0xffffffffu, c, 4);
      c += __shfl_xor_sync(0xffffffffu, c, 8);
      c += __shfl_xor_sync(0xffffffffu, c, 16);
      if (g4 == 0) sm.colsum[4 * wg + warp][8 * j + 2 * q + e] = c;
    }
  }
  sqA += __shfl_xor_sync(0xffffffffu, sqA, 1), sqA += __shfl_xor_sync(0xffffffffu, sqA, 2);
  sqB += __shfl_xor_sync(0xffffffffu, sqB, 1), sqB += __shfl_xor_sync(0xffffffffu, sqB, 2);
  float oldA = 0.0f, oldB = 0.0f;
  float* rowpart = L.rowpart + int64_t(rb) * ntn * kDwBM;  // (ntn, kDwBM) of this row block
  if (cast) {
    // row_sq's old values before this tile's partials are published: the row block's tile 0
    // writes the new ones only after every tile has published.
    oldA = S.row_sq[oA], oldB = S.row_sq[oB];
    if (q == 0) rowpart[tn * kDwBM + rl] = sqA, rowpart[tn * kDwBM + rl + 8] = sqB;
  }
  sm90::named_sync(1, 256);
  {
    float t = 0.0f;
#pragma unroll
    for (int x = 0; x < 8; ++x) t += sm.colsum[x][ct];
    S.part[int64_t(rb - S.rb0) * I + i0 + ct] = t;
  }
  float sqsA = 0.0f, sqsB = 0.0f;
  if (cast) {
    if (ct == 0) {
      __threadfence();
      atomicAdd(&L.counters[rb], 1u);
      while (load_acquire(&L.counters[rb]) < unsigned(ntn)) __nanosleep(64);
      __threadfence();
    }
    sm90::named_sync(1, 256);
    float totA = 0.0f, totB = 0.0f;
    for (int t = 0; t < ntn; ++t) totA += __ldcg(&rowpart[t * kDwBM + rl]), totB += __ldcg(&rowpart[t * kDwBM + rl + 8]);
    const float rsA = S.f.b2 * oldA + S.f.c1 * totA, rsB = S.f.b2 * oldB + S.f.c1 * totB;
    if (tn == 0 && q == 0) S.row_sq[oA] = rsA, S.row_sq[oB] = rsB;
    sqsA = sqrtf(rsA * inv_bc), sqsB = sqrtf(rsB * inv_bc);
  }

  // dscale and the votes, 32 columns (4 values a row) at a time. Stores through int8_t pointers may
  // alias anything, so the compiler keeps every load after the stores before it: a chunk's loads
  // (indices, scales, votes) are issued before the previous chunk's arithmetic and stores, and the
  // scale gradient's group sums go through shared memory (one coalesced read-add-write at the end).
  const uint32_t keyA = [&] {
    const CounterRng r = CounterRng::from_prefix(prefix, uint64_t(oA));
    return uint32_t(r.s0) ^ uint32_t(r.s0 >> 32);
  }();
  const uint32_t keyB = [&] {
    const CounterRng r = CounterRng::from_prefix(prefix, uint64_t(oB));
    return uint32_t(r.s0) ^ uint32_t(r.s0 >> 32);
  }();
  const int G = int(S.m.G), P = G >> 3, gpt = kDwBN / G;  // j steps per scale group; groups per tile row
  const uint8_t* irA = S.m.idx + oA * S.m.row_bytes + i0 * B / 8;
  const uint8_t* irB = S.m.idx + oB * S.m.row_bytes + i0 * B / 8;
  const float* scA = S.m.scale + oA * S.m.groups + i0 / G;
  const float* scB = S.m.scale + oB * S.m.groups + i0 / G;
  int8_t* vA = S.votes + oA * I + i0;
  int8_t* vB = S.votes + oB * I + i0;
  const float eps = S.f.eps;
  const int ilim = S.f.ilim, vmax = S.f.vmax;
  float gsA = 0.0f, gsB = 0.0f;  // the current group's dscale sums
  struct Chunk {
    uint32_t wA[B], wB[B];
    float sA[4], sB[4];
    uint16_t vA[4], vB[4];
  };
  auto fetch = [&](int c, Chunk& x) {
    load_idx32<B>(irA + 32 * c * B / 8, x.wA);
    load_idx32<B>(irB + 32 * c * B / 8, x.wB);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int j = 4 * c + jj, col = 8 * j + 2 * q;
      x.sA[jj] = __ldg(scA + 8 * j / G), x.sB[jj] = __ldg(scB + 8 * j / G);
      if (cast) {
        x.vA[jj] = *reinterpret_cast<const uint16_t*>(vA + col);
        x.vB[jj] = *reinterpret_cast<const uint16_t*>(vB + col);
      }
    }
  };
  Chunk cur, nxt;
  fetch(0, cur);
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    if (c + 1 < 8) fetch(c + 1, nxt);
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int j = 4 * c + jj, col = 8 * j + 2 * q;  // the tile column of acc[4 j], acc[4 j + 2]
      const uint32_t qA0 = idx_at<B>(cur.wA, 8 * jj + 2 * q), qA1 = idx_at<B>(cur.wA, 8 * jj + 2 * q + 1);
      const uint32_t qB0 = idx_at<B>(cur.wB, 8 * jj + 2 * q), qB1 = idx_at<B>(cur.wB, 8 * jj + 2 * q + 1);
      const float gA0 = acc[4 * j], gA1 = acc[4 * j + 1], gB0 = acc[4 * j + 2], gB1 = acc[4 * j + 3];
      gsA += gA0 * sm.grid[qA0], gsA += gA1 * sm.grid[qA1];
      gsB += gB0 * sm.grid[qB0], gsB += gB1 * sm.grid[qB1];
      if ((j + 1) % P == 0) {  // the group's last j: a quad holds its columns
        gsA += __shfl_xor_sync(0xffffffffu, gsA, 1), gsA += __shfl_xor_sync(0xffffffffu, gsA, 2);
        gsB += __shfl_xor_sync(0xffffffffu, gsB, 1), gsB += __shfl_xor_sync(0xffffffffu, gsB, 2);
        if (q == 0) sm.dsum[rl * gpt + 8 * j / G] = gsA, sm.dsum[(rl + 8) * gpt + 8 * j / G] = gsB;
        gsA = 0.0f, gsB = 0.0f;
      }
      if (!cast) continue;
      const uint32_t hidx = uint32_t((i0 + col) >> 1);
      const float sc0 = sm.scn[col], sc1 = sm.scn[col + 1];
      auto vote2 = [&](uint16_t& vv, float s, float sqs, uint32_t key, float g0, float g1, uint32_t q0, uint32_t q1) {
        if (s == 0.0f) return;
        const float cs = c0 / s;
        const bool s_pos = s > 0;
        const uint32_t h = vk::fast_hash(key, hidx);
        int8_t* v = reinterpret_cast<int8_t*>(&vv);
        v[0] = vk::momentum_vote(v[0], g0, cs, s_pos, sm.inv, q0, sqs * sc0 + eps, vk::unit16(h), ilim, vmax);
        v[1] = vk::momentum_vote(v[1], g1, cs, s_pos, sm.inv, q1, sqs * sc1 + eps, vk::unit16(h >> 16), ilim, vmax);
      };
      vote2(cur.vA[jj], cur.sA[jj], sqsA, keyA, gA0, gA1, qA0, qA1);
      vote2(cur.vB[jj], cur.sB[jj], sqsB, keyB, gB0, gB1, qB0, qB1);
    }
    if (cast) {
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) {
        const int col = 8 * (4 * c + jj) + 2 * q;
        *reinterpret_cast<uint16_t*>(vA + col) = cur.vA[jj];
        *reinterpret_cast<uint16_t*>(vB + col) = cur.vB[jj];
      }
    }
    if (c + 1 < 8) cur = nxt;
  }
  // The tile's group sums into dscale: consecutive threads, consecutive groups of a row.
  sm90::named_sync(1, 256);
  if (S.dscale) {
    for (int x = ct; x < kDwBM * gpt; x += 256) {
      const int r = x / gpt, gi = x % gpt;
      float* d = S.dscale + (int64_t(rb - S.rb0) * kDwBM + r) * S.m.groups + i0 / G + gi;
      *d += sm.dsum[x];
    }
  }
}

template <int B>
__global__ void __launch_bounds__(kThreads, 1)
    dw_cast_kernel(const __grid_constant__ CUtensorMap tmA, const __grid_constant__ CUtensorMap tmB,
                   const __grid_constant__ DwCastLaunch L) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  Smem& sm = *reinterpret_cast<Smem*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int wg = int(threadIdx.x) / 128, tid = int(threadIdx.x) % 128;
  const int ntn = int(L.I / kDwBN), nk = int((L.N + kBK - 1) / kBK);
  const int64_t tiles = (L.O / kDwBM) * ntn;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) sm90::mbar_init(&sm.full[s], 1), sm90::mbar_init(&sm.empty[s], 2);
    sm90::mbar_init_fence();
  }
  __syncthreads();
  if (wg == 0) {
    sm90::regs_dec<40>();
    if (tid == 0) {
      int it = 0;
      for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int rb = int(t / ntn), tn = int(t % ntn);
        for (int kb = 0; kb < nk; ++kb, ++it) {
          const int s = it % kStages;
          if (it >= kStages) sm90::mbar_wait(&sm.empty[s], ((it / kStages) & 1) ^ 1);
          sm90::mbar_expect_tx(&sm.full[s], kABytes + kBBytes);
          for (int h = 0; h < 2; ++h)
            sm90::tma_load_2d(&sm.a[s][h * 64 * kBK], &tmA, &sm.full[s], rb * kDwBM + 64 * h, kb * kBK);
          for (int h = 0; h < 4; ++h)
            sm90::tma_load_2d(&sm.b[s][h * 64 * kBK], &tmB, &sm.full[s], tn * kDwBN + 64 * h, kb * kBK);
        }
      }
    }
  } else {
    sm90::regs_inc<232>();
    const int cw = wg - 1;  // the consumer's rows: 64 cw ..
    float acc[128];
    int it = 0;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
      const int rb = int(t / ntn), tn = int(t % ntn);
      for (int kb = 0; kb < nk; ++kb, ++it) {
        const int s = it % kStages;
        sm90::mbar_wait(&sm.full[s], (it / kStages) & 1);
        sm90::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
          const uint64_t da = sm90::smem_desc(reinterpret_cast<const uint8_t*>(&sm.a[s][cw * 64 * kBK]) + kk * kK16Bytes,
                                              kBoxBytes, kGroupBytes);
          const uint64_t db = sm90::smem_desc(reinterpret_cast<const uint8_t*>(sm.b[s]) + kk * kK16Bytes, kBoxBytes,
                                              kGroupBytes);
          sm90::wgmma_m64n256k16<1, 1>(acc, da, db, (kb | kk) != 0);
        }
        sm90::wgmma_commit();
        if (kb > 0) {
          sm90::wgmma_wait<1>();  // the previous stage's MMAs are done: release it
          if (tid == 0) sm90::mbar_arrive(&sm.empty[(it - 1) % kStages]);
        }
      }
      sm90::wgmma_wait<0>();
      sm90::fence_regs(acc);
      if (tid == 0) sm90::mbar_arrive(&sm.empty[(it - 1) % kStages]);
      cast_tile<B>(acc, L, sm, rb, tn, ntn, cw, tid);
    }
  }
#else
  __trap();  // built without sm_90a (dw_cast_available says so before any launch)
#endif
}

// A (rows, cols) bf16 matrix, rows ld values apart, in boxes of 64 x 64 with the 128-byte swizzle.
CUtensorMap box_map(const uint16_t* base, int64_t rows, int64_t cols, int64_t ld) {
  return tensor_map_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, base, rows, cols, ld * 2, 64, 64, CU_TENSOR_MAP_SWIZZLE_128B,
                       "lut_dw_cast");
}

template <int B>
void launch(const DwCastLaunch& L, cudaStream_t s) {
  static bool set = false;
  if (!set) {
    PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(dw_cast_kernel<B>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)));
    set = true;
  }
  const CUtensorMap a = box_map(L.dout, L.N, L.O, L.ldd), b = box_map(L.inp, L.N, L.I, L.ldi);
  const int64_t tiles = (L.O / kDwBM) * (L.I / kDwBN);
  // Whole row blocks per wave: a row block's tiles then finish together (one split over two waves
  // would leave the first wave's tiles waiting a tile's time for the rest).
  const int64_t ntn = L.I / kDwBN, per_wave = std::max<int64_t>(1, sm_count() / ntn) * ntn;
  const unsigned grid = unsigned(std::min<int64_t>(tiles, per_wave));
  PRIMAL_CUDA_CHECK(cudaMemsetAsync(L.counters, 0, size_t(L.O / kDwBM) * sizeof(unsigned), s));
  dw_cast_kernel<B><<<grid, kThreads, kSmemBytes, s>>>(a, b, L);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool dw_cast_available() {
  static const bool ok = sm90a_kernel_available(reinterpret_cast<const void*>(dw_cast_kernel<4>));
  return ok;
}

bool dw_cast_shape_ok(const DwCastLaunch& L) {
  auto a16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  if (L.nseg < 1 || L.nseg > 3 || L.N < 1 || L.I % kDwBN || L.O % kDwBM || L.I < kDwBN || L.ldd % 8 || L.ldi % 8 ||
      L.ldd < L.O || L.ldi < L.I || !a16(L.dout) || !a16(L.inp) || (L.bits != 2 && L.bits != 4 && L.bits != 8) ||
      L.I / kDwBN > sm_count() || !L.rowpart || !L.counters)
    return false;
  int64_t rows = 0;
  for (int k = 0; k < L.nseg; ++k) {
    const DwSeg& S = L.seg[k];
    const int64_t G = S.m.G;
    if (S.rb0 * kDwBM != rows || S.m.O % kDwBM || S.m.I != L.I || G < 8 || G > 256 || (G & (G - 1)) ||
        S.m.row_bytes % 16 || !a16(S.m.idx) || !S.votes || !S.part || !S.row_sq || !S.col_norm || S.m.K > 256)
      return false;
    rows += S.m.O;
  }
  return rows == L.O;
}

void dw_cast_launch(const DwCastLaunch& L, cudaStream_t s) {
  PRIMAL_CHECK(dw_cast_available() && dw_cast_shape_ok(L), "lut_dw_cast: not available for this device or shape");
  if (L.bits == 2) launch<2>(L, s);
  else if (L.bits == 4) launch<4>(L, s);
  else launch<8>(L, s);
}

}  // namespace primal::cuda
