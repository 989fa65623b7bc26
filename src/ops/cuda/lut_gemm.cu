// The LUT GEMMs with the dequantization in the loads (lut_gemm.h). Compiled for sm_90a only.
//
// Block: 384 threads, 168 registers each (all the consumers' code uses: no setmaxnreg).
// Warpgroup 0's thread 0 issues the TMA copies of a k step: 256 tokens x 64 bf16 activations
// (128-byte swizzle), the step's packed indices and its scales. Warpgroups 1 and 2 own 64 tile rows
// each; per k16 step a thread builds its A fragment (4 registers of bf16 pairs) from the indices,
// the grid and the scales in shared memory and issues wgmma m64n256k16 with it, B K-major from
// shared memory; one MMA stays in flight while the next fragment is built. The fragment build's
// shared-memory loads (grid lookups, indices, scales) beside wgmma's own reads of B are what
// limits it: without them the pipeline runs at cuBLAS's rate. Measured alternatives
// (bench/RESULTS.md, fifteenth round): four buffers with three MMAs in flight (no faster), a k
// step's four fragments then its four MMAs (8% slower), dequantizing into shared memory in the
// producer warpgroup for wgmma with both operands in shared memory (150-170 TFLOP/s), scales
// copied by a producer warp's loads instead of TMA (16% slower).
// Accumulators (warp w of a consumer, lane 4 g + q): acc[4 j + e] is tile row 16 w + g (+ 8 for
// e >= 2), token 8 j + 2 q + (e & 1).
#include "ops/cuda/lut_gemm.h"

#include <cuda.h>
#include <cuda_bf16.h>

#include <algorithm>

#include "ops/cuda/buffer.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/hopper.cuh"
#include "ops/cuda/tensor_map.h"

namespace primal::cuda {
namespace {

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4, kThreads = 384;
constexpr uint32_t kBBytes = kBN * kBK * 2;
// A step's scales (TMA boxes): forward (128 rows, 4 groups), dinp (64 rows, 8 groups), from the
// first group the step (forward) or the tile (dinp) needs rounded down to a multiple of 4: a box
// must start on 16 bytes (4 floats; G >= 16, so the groups needed fit after that start).
constexpr int kScFwd = 4, kScDx = 8, kScales = 512;

template <int B>
struct Smem {
  uint16_t b[kStages][kBN * kBK];           // tokens x 64, 128-byte swizzle (1024-byte aligned)
  uint8_t idx[kStages][kBM * kBK * B / 8];  // forward: 128 rows x 8 B bytes; dinp: 64 rows x 16 B bytes
  float sc[kStages][kScales];  // forward [row][4]; dinp [row][8]
  float lut[kLgMax][256];
  uint64_t full[kStages], empty[kStages];
};

// The kernel's view of a launch (device pointers; rows in the stack).
struct Args {
  const float* grid[kLgMax];
  int lgG[kLgMax];           // log2 G
  int K[kLgMax];
  int64_t row0[kLgMax + 1];  // matrix k's first stacked row; row0[n]: all rows
  LutGemmOut out[kLgMax];    // forward: per matrix; dinp: out[0]
  int n;
  int64_t N, M;              // tokens, the tile rows' extent (forward sum O; dinp I)
  int nk;                    // k steps (forward I / 64; dinp sum O / 64)
};
struct Maps {
  CUtensorMap idx[kLgMax];   // uint8 (O_k, row_bytes)
  CUtensorMap sc[kLgMax];    // fp32 (O_k, groups)
  CUtensorMap b[kLgMax];     // forward: b[0] = inp; dinp: dout_k
};

__device__ __forceinline__ int mat_of(const Args& a, int64_t row) {
  int k = 0;
  while (k + 1 < a.n && row >= a.row0[k + 1]) ++k;
  return k;
}

// dinp's index tiles (64 rows of R = 16 B bytes) are written by TMA with the swizzle that spreads
// a row over the banks (16-byte chunks XORed with address bits 7..; R = 32, 64, 128): the four
// rows a warp reads at once were 4-way bank conflicts. swz: a byte's address in the swizzled tile.
template <int R>
__device__ __forceinline__ int swz(int addr) {
  if constexpr (R <= 16) return addr;
  else return addr ^ (((addr >> 7) & (R / 16 - 1)) << 4);
}
template <int R>
constexpr CUtensorMapSwizzle idx_swizzle() {
  return R == 32 ? CU_TENSOR_MAP_SWIZZLE_32B : R == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
         : R == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE;
}

// 16 consecutive indices of a row (B-bit fields, LSB first): 2 B bytes by one load.
template <int B>
struct Step16 {
  uint32_t w[B / 2 > 0 ? B / 2 : 1];
};
template <int B>
__device__ __forceinline__ Step16<B> load_step(const uint8_t* p) {
  Step16<B> x;
  if constexpr (B == 2) {
    x.w[0] = *reinterpret_cast<const uint32_t*>(p);
  } else if constexpr (B == 4) {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    x.w[0] = v.x, x.w[1] = v.y;
  } else {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    x.w[0] = v.x, x.w[1] = v.y, x.w[2] = v.z, x.w[3] = v.w;
  }
  return x;
}
// The indices of weights k and k + 1 (k even) of a packed row.
template <int B>
__device__ __forceinline__ void idx_pair(const uint8_t* row, int k, uint32_t& q0, uint32_t& q1) {
  if constexpr (B == 4) {
    const uint32_t b = row[k >> 1];
    q0 = b & 15u, q1 = b >> 4;
  } else if constexpr (B == 8) {
    const uint32_t h = *reinterpret_cast<const uint16_t*>(row + k);
    q0 = h & 255u, q1 = h >> 8;
  } else {
    const uint32_t b = uint32_t(row[k >> 2]) >> ((k & 3) * 2);
    q0 = b & 3u, q1 = (b >> 2) & 3u;
  }
}
// The indices of tile columns i and i + 8 of a row (i % 16 < 8) from the row's 8-byte-aligned
// chunk holding them (B = 2: 4 bytes; 8: 16 bytes) loaded once.
template <int B>
__device__ __forceinline__ void col_pair(const Step16<B>& x, int i, uint32_t& qa, uint32_t& qb) {
  constexpr uint32_t mask = (1u << B) - 1u;
  const int j = i & 7;  // the column within its 16-column group
  if constexpr (B == 2) {
    qa = (x.w[0] >> (2 * j)) & mask, qb = (x.w[0] >> (2 * j + 16)) & mask;
  } else if constexpr (B == 4) {
    qa = (x.w[0] >> (4 * j)) & mask, qb = (x.w[1] >> (4 * j)) & mask;
  } else {
    const uint32_t a = (j >> 2) ? x.w[1] : x.w[0], b = (j >> 2) ? x.w[3] : x.w[2];
    qa = (a >> (8 * (j & 3))) & mask, qb = (b >> (8 * (j & 3))) & mask;
  }
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
// Keeps a fragment's registers live (and unshared) until here: the MMA that read them is done.
__device__ __forceinline__ void keep(uint32_t (&f)[4]) {
  asm volatile("" : "+r"(f[0]), "+r"(f[1]), "+r"(f[2]), "+r"(f[3])::"memory");
}

// Thread (warp, lane)'s A fragment of k16 step ss from the step's indices `ti`, scales `ssc` and
// grid `lut` in shared memory (see hopper.cuh wgmma_m64n256k16_rs for the layout); rl: the
// fragment's first tile row; slot: the scale column (forward: of the step's first k16 step); lg: log2 G.
template <int B, bool DX>
__device__ __forceinline__ void build_fragment(uint32_t (&f)[4], const uint8_t* ti, const float* ssc, const float* lut,
                                               int rl, int q, int ss, int slot, int lg) {
  if constexpr (!DX) {
    constexpr int RB = 8 * B;  // bytes of a tile row's 64 indices
    const int x = slot + ((16 * ss) >> lg);  // the k16 step's group in the box
    // Byte loads from unswizzled rows: an 8-byte load a row, on swizzled rows, measured the same
    // and spilled (the compiler kept every step's swizzled address).
    const uint8_t* rA = ti + rl * RB;
    const uint8_t* rB = rA + 8 * RB;
    const float sA = ssc[rl * kScFwd + x], sB = ssc[(rl + 8) * kScFwd + x];
    const int kk = 16 * ss + 2 * q;
    uint32_t q0, q1;
    idx_pair<B>(rA, kk, q0, q1);
    f[0] = pack_bf16(__fmul_rn(sA, lut[q0]), __fmul_rn(sA, lut[q1]));
    idx_pair<B>(rB, kk, q0, q1);
    f[1] = pack_bf16(__fmul_rn(sB, lut[q0]), __fmul_rn(sB, lut[q1]));
    idx_pair<B>(rA, kk + 8, q0, q1);
    f[2] = pack_bf16(__fmul_rn(sA, lut[q0]), __fmul_rn(sA, lut[q1]));
    idx_pair<B>(rB, kk + 8, q0, q1);
    f[3] = pack_bf16(__fmul_rn(sB, lut[q0]), __fmul_rn(sB, lut[q1]));
  } else {
    constexpr int RD = 16 * B;  // bytes of a step row's 128 indices
    const int o0 = 16 * ss + 2 * q;
    const int c0 = (rl & ~15) * B / 8;  // the byte of column rl & ~15: columns rl and rl + 8 lie in 2 B bytes from it
    float v[4][2];  // [o0, o0 + 1, o0 + 8, o0 + 9][rl, rl + 8]
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int o = o0 + (x & 1) + 8 * (x >> 1);
      const float so = ssc[o * kScDx + slot];
      uint32_t qa, qb;
      col_pair<B>(load_step<B>(ti + swz<RD>(o * RD + c0)), rl, qa, qb);
      v[x][0] = __fmul_rn(so, lut[qa]);
      v[x][1] = __fmul_rn(so, lut[qb]);
    }
    f[0] = pack_bf16(v[0][0], v[1][0]);
    f[1] = pack_bf16(v[0][1], v[1][1]);
    f[2] = pack_bf16(v[2][0], v[3][0]);
    f[3] = pack_bf16(v[2][1], v[3][1]);
  }
}

template <int B, bool DX>
__global__ void __launch_bounds__(kThreads, 1)
    lut_gemm_kernel(const __grid_constant__ Maps maps, const __grid_constant__ Args a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  Smem<B>& sm = *reinterpret_cast<Smem<B>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  const int wg = int(threadIdx.x) / 128, tid = int(threadIdx.x) % 128;
  const int nm = int(a.M / kBM), nn = int((a.N + kBN - 1) / kBN);
  const int tiles = nm * nn;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) sm90::mbar_init(&sm.full[s], 1), sm90::mbar_init(&sm.empty[s], 2);
    sm90::mbar_init_fence();
  }
  for (int k = 0; k < a.n; ++k)
    for (int x = int(threadIdx.x); x < a.K[k]; x += kThreads) sm.lut[k][x] = a.grid[k][x];
  __syncthreads();

  if (wg == 0) {
    const int warp = tid >> 5, lane = tid & 31;
    if (warp > 0 || lane > 0) return;
    int it = 0;
    for (int t = int(blockIdx.x); t < tiles; t += int(gridDim.x)) {
      const int mb = t % nm, nb = t / nm;
      const int km = DX ? 0 : mat_of(a, int64_t(mb) * kBM);
      for (int kb = 0; kb < a.nk; ++kb, ++it) {
        const int s = it % kStages;
        if (it >= kStages) sm90::mbar_wait(&sm.empty[s], ((it / kStages) & 1) ^ 1);
        const int k = DX ? mat_of(a, int64_t(kb) * kBK) : km;
        // forward: the tile's rows of W_k, this step's columns; dinp: this step's rows of W_k.
        const int r0 = int(DX ? int64_t(kb) * kBK - a.row0[k] : int64_t(mb) * kBM - a.row0[k]);
        const uint32_t sc_bytes = (DX ? 64 * kScDx : kBM * kScFwd) * 4;
        sm90::mbar_expect_tx(&sm.full[s], kBBytes + uint32_t(sizeof(sm.idx[0])) + sc_bytes);
        if (DX) {
          sm90::tma_load_2d(sm.b[s], &maps.b[k], &sm.full[s], r0, nb * kBN);
          sm90::tma_load_2d(sm.idx[s], &maps.idx[k], &sm.full[s], mb * kBM * B / 8, r0);
          sm90::tma_load_2d(sm.sc[s], &maps.sc[k], &sm.full[s], ((mb * kBM) >> a.lgG[k]) & ~3, r0);
        } else {
          sm90::tma_load_2d(sm.b[s], &maps.b[0], &sm.full[s], kb * kBK, nb * kBN);
          sm90::tma_load_2d(sm.idx[s], &maps.idx[k], &sm.full[s], kb * kBK * B / 8, r0);
          sm90::tma_load_2d(sm.sc[s], &maps.sc[k], &sm.full[s], ((kb * kBK) >> a.lgG[k]) & ~3, r0);
        }
      }
    }
    return;
  }

  const int cw = wg - 1, warp = tid >> 5, lane = tid & 31, g4 = lane >> 2, q = lane & 3;
  const int rl = 64 * cw + 16 * warp + g4;  // the tile row of acc[4 j + e], e < 2; rl + 8 of e >= 2
  float acc[128];
  uint32_t fr[2][4];
  int it = 0;
  for (int t = int(blockIdx.x); t < tiles; t += int(gridDim.x)) {
    const int mb = t % nm, nb = t / nm;
    const int km = DX ? 0 : mat_of(a, int64_t(mb) * kBM);
    for (int kb = 0; kb < a.nk; ++kb, ++it) {
      const int s = it % kStages;
      const int k = DX ? mat_of(a, int64_t(kb) * kBK) : km;
      const int lg = a.lgG[k];
      const int slot = DX ? int(((int64_t(mb) * kBM + rl) >> lg) - (((int64_t(mb) * kBM) >> lg) & ~int64_t(3)))
                          : ((kb * kBK) >> lg) & 3;
      sm90::mbar_wait(&sm.full[s], (it / kStages) & 1);
#pragma unroll
      for (int ss = 0; ss < 4; ++ss) {
        // Two fragment buffers: the MMA that read the next one (the previous step's) is done after
        // the wait, the one just issued may run on while the next fragment is built.
        uint32_t(&f)[4] = fr[ss & 1];
        build_fragment<B, DX>(f, sm.idx[s], sm.sc[s], sm.lut[k], rl, q, ss, slot, lg);
        sm90::wgmma_fence();
        const uint64_t db = sm90::smem_desc(reinterpret_cast<const uint8_t*>(sm.b[s]) + 32 * ss, 16, 1024);
        sm90::wgmma_m64n256k16_rs<0>(acc, f, db, (kb | ss) != 0);
        sm90::wgmma_commit();
        sm90::wgmma_wait<1>();
        keep(fr[(ss + 1) & 1]);
        // The previous stage is free once its last MMA is done.
        if (ss == 0 && kb > 0 && tid == 0) sm90::mbar_arrive(&sm.empty[(it - 1) % kStages]);
      }
    }
    sm90::wgmma_wait<0>();
    sm90::fence_regs(acc);
    keep(fr[0]), keep(fr[1]);
    if (tid == 0) sm90::mbar_arrive(&sm.empty[(it - 1) % kStages]);

    // Epilogue: out[token, column] from the accumulators (a quad's 4 tokens, 8 columns a lane row).
    const LutGemmOut& o = a.out[km];
    const int64_t col0 = DX ? int64_t(mb) * kBM : int64_t(mb) * kBM - a.row0[km];
    const float* bias = o.bias;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t tok = int64_t(nb) * kBN + 8 * j + 2 * q + (e & 1);
        if (tok >= a.N) continue;
        const int64_t col = col0 + rl + 8 * (e >> 1);
        const float x = acc[4 * j + e];
        if (o.bf16) {
          reinterpret_cast<__nv_bfloat16*>(o.p)[tok * o.ld + col] = __float2bfloat16_rn(x);
        } else {
          float* p = reinterpret_cast<float*>(o.p) + tok * o.ld + col;
          float y = x;
          if (bias) y = __fadd_rn(y, bias[col]);
          if (o.accumulate) y = __fadd_rn(y, *p);
          *p = y;
        }
      }
    }
  }
#else
  __trap();  // built without sm_90a (lut_gemm_available says so before any launch)
#endif
}

template <int B, bool DX>
void launch(const LutGemmLaunch& L, cudaStream_t s) {
  constexpr size_t smem = sizeof(Smem<B>) + 1024;  // + alignment of the tiles to 1024 bytes
  static bool set = false;
  if (!set) {
    PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(lut_gemm_kernel<B, DX>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           int(smem)));
    set = true;
  }
  Maps maps{};
  Args a{};
  a.n = L.n, a.N = L.N;
  a.row0[0] = 0;
  for (int k = 0; k < L.n; ++k) {
    const LutGemmMat& m = L.m[k];
    a.grid[k] = m.grid, a.lgG[k] = __builtin_ctzll(uint64_t(m.G)), a.K[k] = 1 << L.bits;
    a.row0[k + 1] = a.row0[k] + m.O;
    a.out[k] = DX ? L.out : m.out;
    // forward: a tile's 128 rows by a step's 64 indices; dinp: a step's 64 rows by a tile's 128.
    constexpr int R = (DX ? kBM : kBK) * B / 8;  // bytes of an index tile's row
    maps.idx[k] = tensor_map_2d(CU_TENSOR_MAP_DATA_TYPE_UINT8, m.idx, m.O, m.row_bytes, m.row_bytes, uint32_t(R),
                                DX ? kBK : kBM, DX ? idx_swizzle<R>() : CU_TENSOR_MAP_SWIZZLE_NONE,
                                "lut_gemm (indices)");
    maps.sc[k] = tensor_map_2d(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, m.scale, m.O, m.groups, m.groups * 4,
                               DX ? kScDx : kScFwd, DX ? kBK : kBM, CU_TENSOR_MAP_SWIZZLE_NONE, "lut_gemm (scales)");
    if (DX)
      maps.b[k] = tensor_map_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, m.dout, L.N, m.O, m.ldd * 2, kBK, kBN,
                                CU_TENSOR_MAP_SWIZZLE_128B, "lut_gemm (dout)");
  }
  if (!DX)
    maps.b[0] = tensor_map_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, L.inp, L.N, L.I, L.ldi * 2, kBK, kBN,
                              CU_TENSOR_MAP_SWIZZLE_128B, "lut_gemm (inp)");
  a.M = DX ? L.I : a.row0[L.n];
  a.nk = int((DX ? a.row0[L.n] : L.I) / kBK);
  const int64_t tiles = (a.M / kBM) * ((L.N + kBN - 1) / kBN);
  const unsigned grid = unsigned(std::min<int64_t>(tiles, sm_count()));
  lut_gemm_kernel<B, DX><<<grid, kThreads, smem, s>>>(maps, a);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool lut_gemm_available() {
  static const bool ok = sm90a_kernel_available(reinterpret_cast<const void*>(lut_gemm_kernel<4, false>));
  return ok;
}

bool lut_gemm_shape_ok(const LutGemmLaunch& L) {
  auto a16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  auto out_ok = [&](const LutGemmOut& o, int64_t cols) {
    return o.p && a16(o.p) && o.ld >= cols && (!o.bf16 || (!o.bias && !o.accumulate));
  };
  if (L.n < 1 || L.n > kLgMax || L.N < 1 || L.I < kBM || (L.bits != 2 && L.bits != 4 && L.bits != 8)) return false;
  if (L.dinp ? (L.I % kBM || !out_ok(L.out, L.I) || L.out.bias)
             : (L.I % kBK || !L.inp || !a16(L.inp) || L.ldi % 8 || L.ldi < L.I))
    return false;
  for (int k = 0; k < L.n; ++k) {
    const LutGemmMat& m = L.m[k];
    if (m.O < 1 || m.O % (L.dinp ? kBK : kBM) || m.G < 16 || (m.G & (m.G - 1)) || L.I % m.G || m.groups != L.I / m.G ||
        m.row_bytes != L.I * L.bits / 8 || m.row_bytes % 16 || !m.idx || !a16(m.idx) || !m.scale || !a16(m.scale) ||
        m.groups % 4 || !m.grid)
      return false;
    if (L.dinp ? (!m.dout || !a16(m.dout) || m.ldd < m.O || m.ldd % 8) : !out_ok(m.out, m.O)) return false;
  }
  return true;
}

void lut_gemm_launch(const LutGemmLaunch& L, cudaStream_t s) {
  PRIMAL_CHECK(lut_gemm_available() && lut_gemm_shape_ok(L), "lut_gemm: not available for this device or shape");
#define PRIMAL_LG(B)                          \
  if (L.dinp) launch<B, true>(L, s);          \
  else launch<B, false>(L, s);
  if (L.bits == 2) {
    PRIMAL_LG(2)
  } else if (L.bits == 4) {
    PRIMAL_LG(4)
  } else {
    PRIMAL_LG(8)
  }
#undef PRIMAL_LG
}

}  // namespace primal::cuda
