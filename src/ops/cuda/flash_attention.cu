// Prefill attention on the tensor cores (flash attention, WMMA 16x16x16 fp16 -> fp32).
// Block: 4 warps, 64 queries of one head, 16 per warp; the keys stream past in tiles of 64:
//   S = Q K^T (fp32 accumulators) -> scaled, causally masked, online softmax per row in fp32
//   -> P (fp16) -> O = O * alpha + P V (fp32 accumulators kept in shared memory, since the
//   accumulator fragments' element order is not specified and rows need rescaling).
// Q is rounded to fp16 (K and V are fp16 in the cache), P too: the output is within ~1e-3
// relative of the fp32 computation (see the test's derivation).
#include <cuda_fp16.h>
#include <mma.h>

#include "ops/cuda/attention.h"
#include "ops/cuda/check.cuh"

namespace primal::cuda {
namespace {

using namespace nvcuda;

constexpr int kBQ = 64, kBK = 64, kWarps = 4;

template <int HS>
struct Smem {  // element counts of the shared-memory parts (leading dimensions padded by 16 bytes)
  static constexpr int LD = HS + 8;         // Q, K, V rows (halves)
  static constexpr int LDS = kBK + 4;       // S rows (floats)
  static constexpr int LDP = kBK + 8;       // P rows (halves)
  static constexpr int LDO = HS + 4;        // O rows (floats)
  static constexpr size_t bytes = size_t(3 * kBQ * LD) * 2 + size_t(kWarps * 16 * LDS) * 4 +
                                  size_t(kWarps * 16 * LDP) * 2 + size_t(kWarps * 16 * LDO) * 4;
};

template <int HS>
__global__ void __launch_bounds__(kWarps * 32) flash_prefill_kernel(const AttentionParams p, __half* out) {
  using S = Smem<HS>;
  extern __shared__ __align__(128) unsigned char smem[];
  __half* Qs = reinterpret_cast<__half*>(smem);   // (64, LD)
  __half* Ks = Qs + kBQ * S::LD;                  // (64, LD)
  __half* Vs = Ks + kBK * S::LD;                  // (64, LD)
  float* Ss = reinterpret_cast<float*>(Vs + kBK * S::LD);  // per warp (16, LDS)
  __half* Ps = reinterpret_cast<__half*>(Ss + kWarps * 16 * S::LDS);  // per warp (16, LDP)
  float* Os = reinterpret_cast<float*>(Ps + kWarps * 16 * S::LDP);    // per warp (16, LDO)
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t h = blockIdx.y, kvh = h / (p.NH / p.KVH), t0 = int64_t(blockIdx.x) * kBQ;
  const int64_t pos0 = *p.pos0, nq = min(int64_t(kBQ), p.T - t0);
  const int64_t q_stride = p.q_stride ? p.q_stride : p.NH * HS, kv_stride = p.KVH * HS;
  const float scale = float(1.0 / sqrt(double(HS)));

  for (int k = tid; k < kBQ * HS; k += blockDim.x) {
    const int i = k / HS, d = k % HS;
    Qs[i * S::LD + d] = __float2half_rn(i < nq ? p.q[(t0 + i) * q_stride + h * HS + d] : 0.0f);
  }
  float* Sw = Ss + warp * 16 * S::LDS;
  __half* Pw = Ps + warp * 16 * S::LDP;
  float* Ow = Os + warp * 16 * S::LDO;
  for (int k = lane; k < 16 * S::LDO; k += 32) Ow[k] = 0.0f;
  // Lanes 2r and 2r+1 own row r of the warp's 16 queries: columns (lane % 2) * 32 .. + 31 of S.
  const int r = lane / 2, c0 = (lane % 2) * (kBK / 2);
  const int64_t qi = int64_t(warp) * 16 + r, qpos = pos0 + t0 + qi;
  const bool row_valid = qi < nq;
  float m = -INFINITY, l = 0.0f;
  const int64_t last = pos0 + t0 + nq - 1;                                     // the block's last query
  const int64_t warp_last = pos0 + t0 + min(int64_t(warp) * 16 + 15, nq - 1);  // this warp's
  const __half* kc = static_cast<const __half*>(p.k_cache) + kvh * HS;
  const __half* vc = static_cast<const __half*>(p.v_cache) + kvh * HS;

  for (int64_t j0 = 0; j0 <= last; j0 += kBK) {
    __syncthreads();  // the previous tiles are consumed (and Q is written, the first time)
    for (int k = tid; k < kBK * HS / 8; k += blockDim.x) {
      const int j = k / (HS / 8), c = k % (HS / 8);
      uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
      if (j0 + j <= last) {
        kv = *reinterpret_cast<const uint4*>(kc + (j0 + j) * kv_stride + 8 * c);
        vv = *reinterpret_cast<const uint4*>(vc + (j0 + j) * kv_stride + 8 * c);
      }
      *reinterpret_cast<uint4*>(Ks + j * S::LD + 8 * c) = kv;
      *reinterpret_cast<uint4*>(Vs + j * S::LD + 8 * c) = vv;
    }
    __syncthreads();
    if (int64_t(warp) * 16 >= nq || j0 > warp_last) continue;  // nothing visible to this warp (uniform)

    // S = Q_w K^T: 16 x 64 in four 16 x 16 tiles.
#pragma unroll
    for (int kt = 0; kt < kBK / 16; ++kt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll
      for (int d = 0; d < HS; d += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b;
        wmma::load_matrix_sync(a, Qs + warp * 16 * S::LD + d, S::LD);
        wmma::load_matrix_sync(b, Ks + kt * 16 * S::LD + d, S::LD);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Sw + kt * 16, acc, S::LDS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of row r over this tile (two lanes per row).
    float v[kBK / 2], mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < kBK / 2; ++c) {
      const int64_t key = j0 + c0 + c;
      v[c] = row_valid && key <= qpos ? Sw[r * S::LDS + c0 + c] * scale : -INFINITY;
      mx = fmaxf(mx, v[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mn = fmaxf(m, mx);
    const bool live = mn != -INFINITY;  // false only for rows past the batch
    const float alpha = live ? expf(m - mn) : 1.0f;
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < kBK / 2; ++c) {
      const float e = live ? expf(v[c] - mn) : 0.0f;
      sum += e;
      Pw[r * S::LDP + c0 + c] = __float2half_rn(e);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * alpha + sum;
    m = mn;
    for (int c = lane % 2; c < HS; c += 2) Ow[r * S::LDO + c] *= alpha;
    __syncwarp();

    // O_w += P_w V: 16 x HS in HS / 16 tiles, accumulated through shared memory.
#pragma unroll
    for (int dt = 0; dt < HS / 16; ++dt) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, Ow + dt * 16, S::LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> b;
        wmma::load_matrix_sync(a, Pw + kk * 16, S::LDP);
        wmma::load_matrix_sync(b, Vs + kk * 16 * S::LD + dt * 16, S::LD);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(Ow + dt * 16, acc, S::LDO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (!row_valid) return;
  const float inv = 1.0f / l;
  __half* o = out + (t0 + qi) * p.NH * HS + h * HS;
  for (int c = lane % 2; c < HS; c += 2) o[c] = __float2half_rn(Ow[r * S::LDO + c] * inv);
}

template <int HS>
void launch(const AttentionParams& p, void* out, cudaStream_t s) {
  static const bool attr = [] {
    PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(flash_prefill_kernel<HS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           int(Smem<HS>::bytes)));
    return true;
  }();
  (void)attr;
  const dim3 grid(unsigned((p.T + kBQ - 1) / kBQ), unsigned(p.NH));
  flash_prefill_kernel<HS><<<grid, kWarps * 32, Smem<HS>::bytes, s>>>(p, static_cast<__half*>(out));
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool attention_prefill_tc(const AttentionParams& p, void* out, cudaStream_t s) {
  PRIMAL_CHECK(p.NH > 0 && p.KVH > 0 && p.NH % p.KVH == 0 && p.T > 0, "attention: {} heads, {} KV heads, T {}", p.NH,
               p.KVH, p.T);
  switch (p.HS) {
    case 32: launch<32>(p, out, s); return true;
    case 64: launch<64>(p, out, s); return true;
    case 128: launch<128>(p, out, s); return true;
    case 256: launch<256>(p, out, s); return true;
    default: return false;
  }
}

}  // namespace primal::cuda
