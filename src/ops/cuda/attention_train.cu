// Training attention (see attention_train.h for the equations), fp32 on the CUDA cores.
//
// Every kernel is a block of 4 warps working on a tile of 32 "rows" (8 per warp) against a tile
// of 32 "columns" (one per lane), both staged in shared memory:
//   phase 1: lane l forms the dot products of its column with the warp's 8 rows (the rows are
//            read by the whole warp at once: broadcasts; the columns sit in rows padded to HS + 4
//            floats, so the 8 lanes of a 16-byte access phase hit distinct banks);
//   phase 2: the 8 x 32 weights are passed around with shuffles and every lane accumulates
//            dims lane + 32 c (c < HS / 32) of the warp's 8 output rows, reading the other
//            operand's rows by column (consecutive lanes, consecutive banks).
// Forward and dq: rows = queries, columns = keys. dk/dv: rows = keys, columns = queries, so a
// block owns 32 keys of one KV head and sums over every query of the group's heads by itself.
// Scores come out of the same fmaf sequence in all kernels (fmaf is commutative), so the
// backward recomputes exactly the forward's s; products that feed additions are written as
// fmaf or __fmul_rn so that no contraction choice of the compiler changes the bits.
#include <climits>
#include <cmath>

#include "ops/cuda/attention_train.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"

namespace primal::cuda {
namespace {

constexpr int kWarps = 4, kThreads = kWarps * 32;
constexpr int kRows = 8;                // rows of a tile per warp
constexpr int kTile = kWarps * kRows;   // queries or keys per tile: one per lane as columns
static_assert(kTile == 32, "a column tile is one key or query per lane");

// Floats of a padded column row (see the top comment).
template <int HS>
constexpr int padded() { return HS + 4; }

// dst (32, ld) in shared memory <- rows 0..31 of a head's slice src (row r at src + r * stride);
// rows >= n are zero-filled, so that masked products stay finite and never read past T.
template <int HS>
__device__ __forceinline__ void load_tile(float* dst, int ld, const float* src, int64_t stride, int n) {
  for (int k = threadIdx.x; k < kTile * HS; k += kThreads) {
    const int r = k / HS, d = k % HS;
    dst[r * ld + d] = r < n ? src[r * stride + d] : 0.0f;
  }
}

// acc[i] = a_i . b (in order d = 0, 1, ...) for the warp's 8 rows a_i = a + i * HS (all lanes
// read the same address: broadcast) and this lane's column row b. 16-byte aligned rows.
template <int HS>
__device__ __forceinline__ void dot_rows(float (&acc)[kRows], const float* a, const float* b) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) acc[i] = 0.0f;
#pragma unroll 4
  for (int d = 0; d < HS; d += 4) {
    const float4 y = *reinterpret_cast<const float4*>(b + d);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const float4 x = *reinterpret_cast<const float4*>(a + i * HS + d);
      acc[i] = fmaf(x.x, y.x, acc[i]);
      acc[i] = fmaf(x.y, y.y, acc[i]);
      acc[i] = fmaf(x.z, y.z, acc[i]);
      acc[i] = fmaf(x.w, y.w, acc[i]);
    }
  }
}

// ---- forward: grid (ceil(T / 32), NH, B); block = 32 queries of head h of sequence b. ----------
// Online softmax per query over the key tiles 0 .. the block's last query:
//   m' = max(m, max_j s_j), l' = l e^(m - m') + sum_j e^(s_j - m'), acc' = acc e^(m - m') + sum_j e^(s_j - m') v_j
// out = acc / l, lse = m + log l.
template <int HS>
struct FwdSmem {
  static constexpr size_t floats = size_t(kTile) * HS      // qs: the block's queries (rows)
                                   + size_t(kTile) * padded<HS>()  // ks: a key tile (columns)
                                   + size_t(kTile) * HS;   // vs: its values (read by column)
  static constexpr size_t bytes = floats * sizeof(float);
};

template <int HS>
__global__ void __launch_bounds__(kThreads)
    attn_train_fwd_kernel(float* out, float* lse, const float* q, const float* k, const float* v, int T, int NH,
                          int KVH, float scale) {
  constexpr int D = HS / 32, LD = padded<HS>();
  extern __shared__ __align__(16) float smem[];
  float* qs = smem;
  float* ks = qs + kTile * HS;
  float* vs = ks + kTile * LD;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, kh = h / (NH / KVH);
  const int last = (T - t0 < kTile ? T : t0 + kTile) - 1;  // the block's last query
  const int64_t qstride = int64_t(NH) * HS, kstride = int64_t(KVH) * HS;
  const float* qb = q + (int64_t(b) * T * NH + h) * HS;    // row t at qb + t * qstride
  const float* kb = k + (int64_t(b) * T * KVH + kh) * HS;  // row j at kb + j * kstride
  const float* vb = v + (int64_t(b) * T * KVH + kh) * HS;

  load_tile<HS>(qs, HS, qb + t0 * qstride, qstride, last - t0 + 1);
  float m[kRows], l[kRows], acc[kRows][D];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < D; ++c) acc[i][c] = 0.0f;
  }
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and qs is written, the first time)
    const int nk = last - j0 + 1 < kTile ? last - j0 + 1 : kTile;  // keys past `last` see no query
    load_tile<HS>(ks, LD, kb + j0 * kstride, kstride, nk);
    load_tile<HS>(vs, HS, vb + j0 * kstride, kstride, nk);
    __syncthreads();

    float s[kRows], e[kRows];
    dot_rows<HS>(s, qs + warp * kRows * HS, ks + lane * LD);
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int t = t0 + warp * kRows + i;
      e[i] = 0.0f;
      if (t > last || j0 > t) continue;  // no such query, or the tile lies in its future (warp-uniform)
      const float sc = j0 + lane <= t ? __fmul_rn(s[i], scale) : -INFINITY;
      const float mn = fmaxf(m[i], warp_max(sc));  // finite: key j0 <= t is visible
      const float alpha = expf(m[i] - mn);          // 0 on the query's first tile (m = -inf)
      e[i] = expf(sc - mn);
      l[i] = fmaf(l[i], alpha, warp_sum(e[i]));
#pragma unroll
      for (int c = 0; c < D; ++c) acc[i][c] *= alpha;
      m[i] = mn;
    }
    // acc_i += sum_j e_ij v_j, key j's weights broadcast from lane j (0 where masked).
#pragma unroll 4
    for (int j = 0; j < kTile; ++j) {
      float ej[kRows];
#pragma unroll
      for (int i = 0; i < kRows; ++i) ej[i] = __shfl_sync(0xffffffffu, e[i], j);
#pragma unroll
      for (int c = 0; c < D; ++c) {
        const float vj = vs[j * HS + lane + 32 * c];
#pragma unroll
        for (int i = 0; i < kRows; ++i) acc[i][c] = fmaf(ej[i], vj, acc[i][c]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int t = t0 + warp * kRows + i;
    if (t > last) continue;
    float* o = out + ((int64_t(b) * T + t) * NH + h) * HS;
#pragma unroll
    for (int c = 0; c < D; ++c) o[lane + 32 * c] = acc[i][c] / l[i];
    if (lane == 0) lse[(int64_t(b) * NH + h) * T + t] = m[i] + logf(l[i]);
  }
}

// ---- backward 1: D_r = dout_r . out_r for every row r = (b, t, h); 8 warps, one row each. ----
// Stored at element 0 of dq's row r: the dq kernel reads a row's D before it writes that row,
// and no other block touches the row, so dq doubles as scratch without an allocation.
constexpr int kDotWarps = 8;

__global__ void __launch_bounds__(kDotWarps * 32)
    attn_train_rowdot_kernel(float* dq, const float* dout, const float* out, int64_t rows, int HS) {
  const int64_t r = int64_t(blockIdx.x) * kDotWarps + threadIdx.x / 32;
  if (r >= rows) return;  // the whole warp
  const int lane = threadIdx.x % 32;
  float acc = 0.0f;
  for (int d = lane; d < HS; d += 32) acc = fmaf(dout[r * HS + d], out[r * HS + d], acc);
  acc = warp_sum(acc);
  if (lane == 0) dq[r * HS] = acc;
}

// ---- backward 2: dk, dv. Grid (ceil(T / 32), KVH, B); block = keys j0 .. j0+31 of KV head kh. ----
// For each query head h of the group, in order, and each query tile i0 = j0, j0 + 32, ... (the
// earlier queries see none of these keys): p_ij = exp(s_ij - lse_i) for key j <= query i,
// ds_ij = p_ij (dp_ij - D_i); dv_j += sum_i p_ij dout_i, dk_j += sum_i ds_ij q_i, in registers
// (warp w owns keys j0 + 8 w .. + 7, lane the dims lane + 32 c); dk is scaled once at the end.
template <int HS>
struct DkdvSmem {
  static constexpr size_t floats = 2 * size_t(kTile) * HS             // ks, vs: the block's keys (rows)
                                   + 2 * size_t(kTile) * padded<HS>();  // qs, dos: a query tile (columns)
  static constexpr size_t bytes = floats * sizeof(float);
};

template <int HS>
__global__ void __launch_bounds__(kThreads)
    attn_train_dkdv_kernel(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                           const float* lse, const float* dsum, int T, int NH, int KVH, float scale) {
  constexpr int D = HS / 32, LD = padded<HS>();
  extern __shared__ __align__(16) float smem[];
  float* ks = smem;
  float* vs = ks + kTile * HS;
  float* qs = vs + kTile * HS;
  float* dos = qs + kTile * LD;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int j0 = blockIdx.x * kTile, kh = blockIdx.y, b = blockIdx.z, group = NH / KVH;
  const int64_t qstride = int64_t(NH) * HS, kstride = int64_t(KVH) * HS;
  const int64_t kvoff = (int64_t(b) * T * KVH + kh) * HS;  // key j's row at kvoff + j * kstride

  const int nk = T - j0 < kTile ? T - j0 : kTile;
  load_tile<HS>(ks, HS, k + kvoff + j0 * kstride, kstride, nk);
  load_tile<HS>(vs, HS, v + kvoff + j0 * kstride, kstride, nk);
  float dka[kRows][D], dva[kRows][D];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
#pragma unroll
    for (int c = 0; c < D; ++c) dka[i][c] = dva[i][c] = 0.0f;
  }
  for (int h = kh * group; h < (kh + 1) * group; ++h) {
    const int64_t qoff = (int64_t(b) * T * NH + h) * HS;  // query t's row at qoff + t * qstride
    for (int i0 = j0; i0 < T; i0 += kTile) {
      __syncthreads();  // the previous query tile is consumed (and ks, vs are written, the first time)
      const int nq = T - i0 < kTile ? T - i0 : kTile;
      load_tile<HS>(qs, LD, q + qoff + i0 * qstride, qstride, nq);
      load_tile<HS>(dos, LD, dout + qoff + i0 * qstride, qstride, nq);
      const int t = i0 + lane;  // this lane's query
      const float lse_t = t < T ? lse[(int64_t(b) * NH + h) * T + t] : 0.0f;
      const float d_t = t < T ? dsum[qoff + t * qstride] : 0.0f;
      __syncthreads();

      float p[kRows], ds[kRows];
      dot_rows<HS>(p, ks + warp * kRows * HS, qs + lane * LD);    // scores s (not yet scaled)
      dot_rows<HS>(ds, vs + warp * kRows * HS, dos + lane * LD);  // dp
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int j = j0 + warp * kRows + r;  // this row's key
        p[r] = t < T && j <= t ? expf(fmaf(p[r], scale, -lse_t)) : 0.0f;
        ds[r] = p[r] * (ds[r] - d_t);
      }
      // Query i's weights broadcast from lane i (0 where masked, and for queries past T).
#pragma unroll 2
      for (int i = 0; i < kTile; ++i) {
        float pi[kRows], dsi[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          pi[r] = __shfl_sync(0xffffffffu, p[r], i);
          dsi[r] = __shfl_sync(0xffffffffu, ds[r], i);
        }
#pragma unroll
        for (int c = 0; c < D; ++c) {
          const float qv = qs[i * LD + lane + 32 * c], dov = dos[i * LD + lane + 32 * c];
#pragma unroll
          for (int r = 0; r < kRows; ++r) {
            dva[r][c] = fmaf(pi[r], dov, dva[r][c]);
            dka[r][c] = fmaf(dsi[r], qv, dka[r][c]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int j = j0 + warp * kRows + r;
    if (j >= T) continue;
    const int64_t row = kvoff + j * kstride;
#pragma unroll
    for (int c = 0; c < D; ++c) {
      dv[row + lane + 32 * c] = dva[r][c];
      dk[row + lane + 32 * c] = dka[r][c] * scale;
    }
  }
}

// ---- backward 3: dq. Grid (ceil(T / 32), NH, B); block = queries t0 .. t0+31 of head h. ----------
// Over the key tiles 0 .. the block's last query: dq_i += sum_j ds_ij k_j (warp w owns queries
// t0 + 8 w .. + 7, lane the dims lane + 32 c), scaled once at the end.
template <int HS>
struct DqSmem {
  static constexpr size_t floats = 2 * size_t(kTile) * HS              // qs, dos: the block's queries (rows)
                                   + 2 * size_t(kTile) * padded<HS>()  // ks, vs: a key tile (columns)
                                   + 2 * size_t(kTile);                // lse, D of the block's queries
  static constexpr size_t bytes = floats * sizeof(float);
};

template <int HS>
__global__ void __launch_bounds__(kThreads)
    attn_train_dq_kernel(float* dq, const float* dout, const float* q, const float* k, const float* v,
                         const float* lse, int T, int NH, int KVH, float scale) {
  constexpr int D = HS / 32, LD = padded<HS>();
  extern __shared__ __align__(16) float smem[];
  float* qs = smem;
  float* dos = qs + kTile * HS;
  float* ks = dos + kTile * HS;
  float* vs = ks + kTile * LD;
  float* lse_s = vs + kTile * LD;
  float* d_s = lse_s + kTile;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int t0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z, kh = h / (NH / KVH);
  const int last = (T - t0 < kTile ? T : t0 + kTile) - 1;  // the block's last query
  const int64_t qstride = int64_t(NH) * HS, kstride = int64_t(KVH) * HS;
  const int64_t qoff = (int64_t(b) * T * NH + h) * HS;     // query t's row at qoff + t * qstride
  const int64_t kvoff = (int64_t(b) * T * KVH + kh) * HS;  // key j's row at kvoff + j * kstride

  load_tile<HS>(qs, HS, q + qoff + t0 * qstride, qstride, last - t0 + 1);
  load_tile<HS>(dos, HS, dout + qoff + t0 * qstride, qstride, last - t0 + 1);
  // D of these queries, from element 0 of their dq rows (see the rowdot kernel): read here,
  // before the first barrier; dq is written only after the loop.
  for (int i = threadIdx.x; i < kTile; i += kThreads) {
    const int t = t0 + i;
    lse_s[i] = t <= last ? lse[(int64_t(b) * NH + h) * T + t] : 0.0f;
    d_s[i] = t <= last ? dq[qoff + t * qstride] : 0.0f;
  }
  float acc[kRows][D];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
#pragma unroll
    for (int c = 0; c < D; ++c) acc[i][c] = 0.0f;
  }
  for (int j0 = 0; j0 <= last; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed (and qs, dos, lse_s, d_s are written, the first time)
    const int nk = last - j0 + 1 < kTile ? last - j0 + 1 : kTile;
    load_tile<HS>(ks, LD, k + kvoff + j0 * kstride, kstride, nk);
    load_tile<HS>(vs, LD, v + kvoff + j0 * kstride, kstride, nk);
    __syncthreads();

    float p[kRows], ds[kRows];
    dot_rows<HS>(p, qs + warp * kRows * HS, ks + lane * LD);    // scores s (not yet scaled)
    dot_rows<HS>(ds, dos + warp * kRows * HS, vs + lane * LD);  // dp
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int qi = warp * kRows + i, t = t0 + qi;
      p[i] = t <= last && j0 + lane <= t ? expf(fmaf(p[i], scale, -lse_s[qi])) : 0.0f;
      ds[i] = p[i] * (ds[i] - d_s[qi]);
    }
    // Key j's weights broadcast from lane j (0 where masked).
#pragma unroll 4
    for (int j = 0; j < kTile; ++j) {
      float dsj[kRows];
#pragma unroll
      for (int i = 0; i < kRows; ++i) dsj[i] = __shfl_sync(0xffffffffu, ds[i], j);
#pragma unroll
      for (int c = 0; c < D; ++c) {
        const float kv = ks[j * LD + lane + 32 * c];
#pragma unroll
        for (int i = 0; i < kRows; ++i) acc[i][c] = fmaf(dsj[i], kv, acc[i][c]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int t = t0 + warp * kRows + i;
    if (t > last) continue;
    float* o = dq + qoff + t * qstride;
#pragma unroll
    for (int c = 0; c < D; ++c) o[lane + 32 * c] = acc[i][c] * scale;
  }
}

// ---- launchers ------------------------------------------------------------------------------

// The shapes both entry points take; returns false when there is nothing to do.
bool check_shape(int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS) {
  PRIMAL_CHECK(NH > 0 && KVH > 0 && NH % KVH == 0,
               "attention (CUDA training): {} query heads not a multiple of {} KV heads", NH, KVH);
  PRIMAL_CHECK(attention_train_supports(HS), "attention (CUDA training): head size {} (supported: 32, 64, 96, 128)",
               HS);
  PRIMAL_CHECK(B >= 0 && T >= 0, "attention (CUDA training): batch {}, sequence length {}", B, T);
  // Grid limits (y, z <= 65535) and 32-bit token indices in the kernels.
  PRIMAL_CHECK(B <= 65535 && NH <= 65535 && T <= INT_MAX - kTile,
               "attention (CUDA training): batch {}, {} heads, sequence length {} past the grid limits", B, NH, T);
  return B > 0 && T > 0;
}

// Opts a kernel in to `bytes` of dynamic shared memory (needed past 48 KiB), after checking the
// device's limit. Cheap enough to repeat at every launch, and right on any current device.
template <class K>
void prepare_smem(K kernel, size_t bytes, const char* name) {
  int dev = 0, limit = 0;
  PRIMAL_CUDA_CHECK(cudaGetDevice(&dev));
  PRIMAL_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  PRIMAL_CHECK(bytes <= size_t(limit),
               "attention (CUDA training): {} needs {} bytes of shared memory, the device has {}", name, bytes, limit);
  if (bytes > 48 * 1024)
    PRIMAL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

dim3 tile_grid(int64_t T, int64_t heads, int64_t B) {
  return dim3(unsigned((T + kTile - 1) / kTile), unsigned(heads), unsigned(B));
}

template <int HS>
void forward(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B, int64_t T, int64_t NH,
             int64_t KVH, float scale, cudaStream_t s) {
  constexpr size_t bytes = FwdSmem<HS>::bytes;
  prepare_smem(attn_train_fwd_kernel<HS>, bytes, "the forward kernel");
  attn_train_fwd_kernel<HS><<<tile_grid(T, NH, B), kThreads, bytes, s>>>(out, lse, q, k, v, int(T), int(NH),
                                                                          int(KVH), scale);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

template <int HS>
void backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* q, const float* k,
              const float* v, const float* lse, int64_t B, int64_t T, int64_t NH, int64_t KVH, float scale,
              cudaStream_t s) {
  const int64_t rows = B * T * NH;
  const int64_t blocks = (rows + kDotWarps - 1) / kDotWarps;
  PRIMAL_CHECK(blocks <= INT_MAX, "attention (CUDA training): {} rows past the grid limit", rows);
  attn_train_rowdot_kernel<<<unsigned(blocks), kDotWarps * 32, 0, s>>>(dq, dout, out, rows, int(HS));
  PRIMAL_CUDA_CHECK_LAUNCH();

  constexpr size_t bytes_kv = DkdvSmem<HS>::bytes;
  prepare_smem(attn_train_dkdv_kernel<HS>, bytes_kv, "the dk/dv kernel");
  attn_train_dkdv_kernel<HS><<<tile_grid(T, KVH, B), kThreads, bytes_kv, s>>>(dk, dv, dout, q, k, v, lse, dq, int(T),
                                                                              int(NH), int(KVH), scale);
  PRIMAL_CUDA_CHECK_LAUNCH();

  constexpr size_t bytes_q = DqSmem<HS>::bytes;
  prepare_smem(attn_train_dq_kernel<HS>, bytes_q, "the dq kernel");
  attn_train_dq_kernel<HS><<<tile_grid(T, NH, B), kThreads, bytes_q, s>>>(dq, dout, q, k, v, lse, int(T), int(NH),
                                                                          int(KVH), scale);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

// The CPU twin's scaling, rounded the same way.
float score_scale(int64_t HS) { return float(1.0 / std::sqrt(double(HS))); }

}  // namespace

bool attention_train_supports(int64_t HS) { return HS == 32 || HS == 64 || HS == 96 || HS == 128; }

void attention_forward_train(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                             int64_t T, int64_t NH, int64_t KVH, int64_t HS, cudaStream_t s) {
  if (!check_shape(B, T, NH, KVH, HS)) return;
  const float scale = score_scale(HS);
  switch (HS) {
    case 32: forward<32>(out, lse, q, k, v, B, T, NH, KVH, scale, s); break;
    case 64: forward<64>(out, lse, q, k, v, B, T, NH, KVH, scale, s); break;
    case 96: forward<96>(out, lse, q, k, v, B, T, NH, KVH, scale, s); break;
    case 128: forward<128>(out, lse, q, k, v, B, T, NH, KVH, scale, s); break;
    default: fail("attention (CUDA training): head size {}", HS);
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* q,
                        const float* k, const float* v, const float* lse, int64_t B, int64_t T, int64_t NH,
                        int64_t KVH, int64_t HS, cudaStream_t s) {
  if (!check_shape(B, T, NH, KVH, HS)) return;
  const float scale = score_scale(HS);
  switch (HS) {
    case 32: backward<32>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, scale, s); break;
    case 64: backward<64>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, scale, s); break;
    case 96: backward<96>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, scale, s); break;
    case 128: backward<128>(dq, dk, dv, dout, out, q, k, v, lse, B, T, NH, KVH, scale, s); break;
    default: fail("attention (CUDA training): head size {}", HS);
  }
}

}  // namespace primal::cuda
