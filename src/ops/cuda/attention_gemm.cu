// Training attention from cuBLAS bf16 GEMMs (see attention_gemm.h for the equations, the method
// and the workspace layout). Row-major thinking throughout: a matrix is (rows, cols) with a row
// stride ld; gemm() below maps row-major products onto column-major cuBLAS.
//
// The small kernels work one warp per row of HS or Tp elements (grid-stride over the rows, so
// any number of rows fits the grid). The (T, Tp) score rows are rewritten in place as bf16: the
// bf16 row occupies the first half of its fp32 row, and a warp sweeps the row in stretches of 64
// columns, loading a stretch before (__syncwarp) storing its 64 bf16 = 32 floats at float index
// j0 / 2 .. j0 / 2 + 31 < j0 + 64: only floats this sweep has already read. The packed pairs are
// stored as floats (their bits), so that loads and stores of the row share one type.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "ops/attention_gemm_layout.h"
#include "ops/cuda/attention_gemm.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"

namespace primal::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 8, kThreads = kWarps * 32;  // row kernels: one warp per row
constexpr int64_t kMaxBlocks = int64_t(1) << 20;    // grid-stride beyond this

using attn_gemm::align_up;    // workspace regions start at multiples of 256 bytes
using attn_gemm::padded_len;  // score rows: T rounded up to 8 (32-byte aligned rows)

// The bits of bf16(a) (low half: the lower address) and bf16(b), as a float to store.
__device__ __forceinline__ float pack_bf16(float a, float b) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
  uint32_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return __uint_as_float(bits);
}

// dst (n, T, HS) bf16 <- head i of token t at src + (t H + i) HS: the n heads of a (T, H, HS)
// sequence from the chunk's first head on.
__global__ void __launch_bounds__(kThreads)
    gather_bf16_kernel(bf16* dst, const float* src, int64_t n, int64_t T, int64_t H, int64_t HS) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; r < n * T; r += int64_t(gridDim.x) * kWarps) {
    const int64_t i = r / T, t = r - i * T;
    const float* x = src + (t * H + i) * HS;
    bf16* y = dst + r * HS;
    for (int64_t d = lane; d < HS; d += 32) y[d] = __float2bfloat16_rn(x[d]);
  }
}

// The inverse layout change in fp32: dst + (t H + i) HS <- row (i, t) of src (n, T, HS).
__global__ void __launch_bounds__(kThreads)
    scatter_rows_kernel(float* dst, const float* src, int64_t n, int64_t T, int64_t H, int64_t HS) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; r < n * T; r += int64_t(gridDim.x) * kWarps) {
    const int64_t i = r / T, t = r - i * T;
    const float* x = src + r * HS;
    float* y = dst + (t * H + i) * HS;
    for (int64_t d = lane; d < HS; d += 32) y[d] = x[d];
  }
}

// Online softmax statistics of one value x: m = running max, l = sum exp(x - m).
__device__ __forceinline__ void online(float& m, float& l, float x) {
  if (x > m) {
    l = fmaf(l, expf(m - x), 1.0f);  // l = 0 while m = -inf: expf(-inf) = 0
    m = x;
  } else {
    l += expf(x - m);
  }
}

// Forward softmax. S: rows (n T) of Tp floats, row r = (head r / T, query t = r % T), from
// S = Q K^T. lse[r] = log sum_{j <= t} exp(s_j scale) (max first, fp32); then over the whole row,
// P_j = bf16(exp(s_j scale - lse)) for j <= t, 0 for j > t (padding columns too), in place.
__global__ void __launch_bounds__(kThreads)
    softmax_forward_kernel(float* S, float* lse, int64_t rows, int64_t T, int64_t Tp, float scale) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * kWarps) {
    const int64_t t = r % T;
    float* row = S + r * Tp;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = 0; j0 <= t; j0 += 64) {  // j <= t < T <= Tp, and j + 1 < Tp (both even)
      const int64_t j = j0 + 2 * lane;
      if (j > t) continue;
      const float2 x = *reinterpret_cast<const float2*>(row + j);
      online(m, l, __fmul_rn(x.x, scale));
      if (j + 1 <= t) online(m, l, __fmul_rn(x.y, scale));
    }
    const float mx = warp_max(m);  // finite: key 0 is visible to every query
    const float ls = mx + logf(warp_sum(l * expf(m - mx)));  // lanes without keys: 0 * 0
    if (lane == 0) lse[r] = ls;
    for (int64_t j0 = 0; j0 < Tp; j0 += 64) {
      const int64_t j = j0 + 2 * lane;
      float2 x = make_float2(0.0f, 0.0f);
      if (j < Tp) x = *reinterpret_cast<const float2*>(row + j);
      __syncwarp();  // the stretch is read before its bf16 overwrites the row's first half
      if (j < Tp) {
        const float p0 = j <= t ? expf(fmaf(x.x, scale, -ls)) : 0.0f;
        const float p1 = j + 1 <= t ? expf(fmaf(x.y, scale, -ls)) : 0.0f;
        row[j / 2] = pack_bf16(p0, p1);
      }
    }
  }
}

// Backward softmax. S, dP: rows (n T) of Tp floats from Q K^T and dO V^T; lse: (n T) of the
// chunk; out, dout: the chunk's first head of the sequence, row (i, t) at (t H + i) HS.
//   D = dout . out (fp32),  P_j = exp(s_j scale - lse),  dS_j = P_j (dP_j - D)  for j <= t,
// P and dS rounded to bf16 over S's and dP's rows, 0 for j > t.
__global__ void __launch_bounds__(kThreads)
    softmax_backward_kernel(float* S, float* dP, const float* lse, const float* out, const float* dout, int64_t rows,
                            int64_t T, int64_t Tp, int64_t H, int64_t HS, float scale) {
  const int lane = threadIdx.x % 32;
  for (int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; r < rows; r += int64_t(gridDim.x) * kWarps) {
    const int64_t i = r / T, t = r - i * T, o = (t * H + i) * HS;
    float D = 0.0f;
    for (int64_t d = lane; d < HS; d += 32) D = fmaf(dout[o + d], out[o + d], D);
    D = warp_sum(D);
    const float L = lse[r];
    float* srow = S + r * Tp;
    float* drow = dP + r * Tp;
    for (int64_t j0 = 0; j0 < Tp; j0 += 64) {
      const int64_t j = j0 + 2 * lane;
      float2 x = make_float2(0.0f, 0.0f), y = make_float2(0.0f, 0.0f);
      if (j < Tp) {
        x = *reinterpret_cast<const float2*>(srow + j);
        y = *reinterpret_cast<const float2*>(drow + j);
      }
      __syncwarp();  // the stretch is read before its bf16 overwrites the rows' first halves
      if (j < Tp) {
        const bool v0 = j <= t, v1 = j + 1 <= t;
        const float p0 = v0 ? expf(fmaf(x.x, scale, -L)) : 0.0f;
        const float p1 = v1 ? expf(fmaf(x.y, scale, -L)) : 0.0f;
        const float ds0 = v0 ? p0 * (y.x - D) : 0.0f;
        const float ds1 = v1 ? p1 * (y.y - D) : 0.0f;
        srow[j / 2] = pack_bf16(p0, p1);
        drow[j / 2] = pack_bf16(ds0, ds1);
      }
    }
  }
}

int row_blocks(int64_t rows) { return int(std::min((rows + kWarps - 1) / kWarps, kMaxBlocks)); }

void gather_bf16(bf16* dst, const float* src, int64_t n, int64_t T, int64_t H, int64_t HS, cudaStream_t s) {
  gather_bf16_kernel<<<row_blocks(n * T), kThreads, 0, s>>>(dst, src, n, T, H, HS);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void scatter_rows(float* dst, const float* src, int64_t n, int64_t T, int64_t H, int64_t HS, cudaStream_t s) {
  scatter_rows_kernel<<<row_blocks(n * T), kThreads, 0, s>>>(dst, src, n, T, H, HS);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

// ---- cuBLAS --------------------------------------------------------------------------------

void check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) fail("attention (GEMM): cuBLAS {} failed: {}", what, cublasGetStatusString(st));
}

// A bf16 operand of a row-major product: batch item i at p + i * stride (elements), rows ld
// elements apart; trans: the buffer holds the operand's transpose.
struct Operand {
  const bf16* p;
  int64_t ld, stride;
  bool trans;
};

// Row-major, batch item i:  C_i (m, n, ld ldc, fp32) = alpha op(A_i) (m, k) op(B_i) (k, n) + beta C_i.
// cuBLAS is column-major, where a row-major buffer reads as its transpose: C^T = op(B)^T op(A)^T.
// beta = 0 never reads C.
void gemm(cublasHandle_t h, int64_t m, int64_t n, int64_t k, float alpha, Operand a, Operand b, float beta, float* c,
          int64_t ldc, int64_t stride_c, int64_t batch, const char* what) {
  PRIMAL_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && a.ld <= INT_MAX && b.ld <= INT_MAX && ldc <= INT_MAX &&
                   batch <= INT_MAX,
               "attention (GEMM): {} of {} x {} x {} (batch {}) exceeds cuBLAS's int", what, m, n, k, batch);
  check(cublasGemmStridedBatchedEx(h, b.trans ? CUBLAS_OP_T : CUBLAS_OP_N, a.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   int(n), int(m), int(k), &alpha, b.p, CUDA_R_16BF, int(b.ld), b.stride, a.p,
                                   CUDA_R_16BF, int(a.ld), a.stride, &beta, c, CUDA_R_32F, int(ldc), stride_c,
                                   int(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        what);
}

// ---- chunks and the workspace ----------------------------------------------------------------

using attn_gemm::Layout;
using attn_gemm::forward_layout;
using attn_gemm::backward_layout;

enum class Pass { Forward, Backward };

size_t chunk_bytes(Pass pass, int64_t heads_per_seg, int64_t segs, int64_t T, int64_t HS) {
  const int64_t n = heads_per_seg * segs;
  return (pass == Pass::Forward ? forward_layout(n, segs, T, HS) : backward_layout(n, segs, T, HS)).total;
}

// Chunks of `segs` segments of `gh` heads: gh = G (whole groups) when one group fits, else the
// largest divisor of G that fits (one segment per chunk, a group spread over G / gh chunks).
struct Plan {
  int64_t gh, segs;
};

Plan plan_chunks(Pass pass, size_t ws_bytes, int64_t T, int64_t NH, int64_t KVH, int64_t HS) {
  const int64_t G = NH / KVH;
  if (chunk_bytes(pass, G, 1, T, HS) <= ws_bytes) {
    int64_t segs = 1;
    while (segs < KVH && chunk_bytes(pass, G, segs + 1, T, HS) <= ws_bytes) ++segs;
    return {G, segs};
  }
  for (int64_t gh = G - 1; gh >= 1; --gh)
    if (G % gh == 0 && chunk_bytes(pass, gh, 1, T, HS) <= ws_bytes) return {gh, 1};
  fail("attention (GEMM): a workspace of {} bytes holds no chunk", ws_bytes);  // checked before
}

// The shapes both entry points take; returns false when there is nothing to do.
bool check_shape(int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS) {
  PRIMAL_CHECK(NH > 0 && KVH > 0 && NH % KVH == 0, "attention (GEMM): {} query heads not a multiple of {} KV heads",
               NH, KVH);
  PRIMAL_CHECK(HS > 0 && HS % 8 == 0, "attention (GEMM): head size {} (a multiple of 8 keeps bf16 rows 16-byte aligned)",
               HS);
  PRIMAL_CHECK(B >= 0 && T >= 0, "attention (GEMM): batch {}, sequence length {}", B, T);
  // Every size below in 64 bits: one sequence's workspace (a few (NH, T, T + HS) arrays) far
  // below 2^62 bytes; the cuBLAS ints are checked at each GEMM.
  PRIMAL_CHECK(double(NH) * double(T) * double(padded_len(T) + HS) * 16.0 < 0x1p62,
               "attention (GEMM): {} heads of sequence length {} are past any workspace", NH, T);
  return B > 0 && T > 0;
}

void check_workspace(const void* ws, size_t ws_bytes, int64_t T, int64_t NH, int64_t KVH, int64_t HS,
                     const char* what) {
  const size_t need = attention_gemm_min_workspace(T, NH, KVH, HS);
  PRIMAL_CHECK(ws && ws_bytes >= need,
               "attention (GEMM) {}: a workspace of {} bytes, the minimum for T {}, {} heads, {} KV heads, head size "
               "{} is {} bytes",
               what, ws ? ws_bytes : 0, T, NH, KVH, HS, need);
  PRIMAL_CHECK(reinterpret_cast<uintptr_t>(ws) % 16 == 0, "attention (GEMM) {}: workspace not 16-byte aligned", what);
}

cublasHandle_t bind(Blas& blas, cudaStream_t s) {
  cublasHandle_t h = static_cast<cublasHandle_t>(blas.handle());
  check(cublasSetStream(h, s), "set stream");
  return h;
}

// The CPU twin's scaling, rounded the same way.
float score_scale(int64_t HS) { return float(1.0 / std::sqrt(double(HS))); }

}  // namespace

size_t attention_gemm_min_workspace(int64_t T, int64_t NH, int64_t KVH, int64_t HS) {
  check_shape(1, T, NH, KVH, HS);
  return std::max(chunk_bytes(Pass::Forward, 1, 1, T, HS), chunk_bytes(Pass::Backward, 1, 1, T, HS));
}

size_t attention_gemm_good_workspace(int64_t T, int64_t NH, int64_t KVH, int64_t HS) {
  check_shape(1, T, NH, KVH, HS);
  const int64_t G = NH / KVH;
  return std::max(chunk_bytes(Pass::Forward, G, KVH, T, HS), chunk_bytes(Pass::Backward, G, KVH, T, HS));
}

void attention_forward_gemm(Blas& blas, float* out, float* lse, const float* q, const float* k, const float* v,
                            int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS, void* ws, size_t ws_bytes,
                            cudaStream_t s) {
  if (!check_shape(B, T, NH, KVH, HS)) return;
  PRIMAL_CHECK(out && lse && q && k && v, "attention_forward_gemm: a null pointer");
  check_workspace(ws, ws_bytes, T, NH, KVH, HS, "forward");
  cublasHandle_t h = bind(blas, s);
  const int64_t G = NH / KVH, Tp = padded_len(T);
  const float scale = score_scale(HS);
  const Plan plan = plan_chunks(Pass::Forward, ws_bytes, T, NH, KVH, HS);
  const int64_t gh = plan.gh, mrows = gh * T;  // rows of a segment's stacked matrices
  char* base = static_cast<char*>(ws);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h0 = 0, segs = 0; h0 < NH; h0 += segs * gh) {
      segs = std::min(plan.segs, (NH - h0) / gh);  // gh divides G, which divides NH
      const int64_t n = segs * gh, kv0 = h0 / G;
      const Layout L = forward_layout(n, segs, T, HS);
      bf16* qb = reinterpret_cast<bf16*>(base + L.q);
      bf16* kb = reinterpret_cast<bf16*>(base + L.k);
      bf16* vb = reinterpret_cast<bf16*>(base + L.v);
      float* S = reinterpret_cast<float*>(base + L.s);
      float* O = reinterpret_cast<float*>(base + L.o);
      gather_bf16(qb, q + (b * T * NH + h0) * HS, n, T, NH, HS, s);
      gather_bf16(kb, k + (b * T * KVH + kv0) * HS, segs, T, KVH, HS, s);
      gather_bf16(vb, v + (b * T * KVH + kv0) * HS, segs, T, KVH, HS, s);
      // S (gh T, T; ld Tp) = Q (gh T, HS) K^T per segment.
      gemm(h, mrows, T, HS, 1.0f, {qb, HS, mrows * HS, false}, {kb, HS, T * HS, true}, 0.0f, S, Tp, mrows * Tp, segs,
           "S = Q K^T");
      softmax_forward_kernel<<<row_blocks(n * T), kThreads, 0, s>>>(S, lse + (b * NH + h0) * T, n * T, T, Tp, scale);
      PRIMAL_CUDA_CHECK_LAUNCH();
      // O (gh T, HS) = P (gh T, T; bf16 ld 2 Tp) V (T, HS).
      const bf16* P = reinterpret_cast<const bf16*>(S);
      gemm(h, mrows, HS, T, 1.0f, {P, 2 * Tp, mrows * 2 * Tp, false}, {vb, HS, T * HS, false}, 0.0f, O, HS,
           mrows * HS, segs, "O = P V");
      scatter_rows(out + (b * T * NH + h0) * HS, O, n, T, NH, HS, s);
    }
  }
}

void attention_backward_gemm(Blas& blas, float* dq, float* dk, float* dv, const float* dout, const float* out,
                             const float* q, const float* k, const float* v, const float* lse, int64_t B, int64_t T,
                             int64_t NH, int64_t KVH, int64_t HS, void* ws, size_t ws_bytes, cudaStream_t s) {
  if (!check_shape(B, T, NH, KVH, HS)) return;
  PRIMAL_CHECK(dq && dk && dv && dout && out && q && k && v && lse, "attention_backward_gemm: a null pointer");
  check_workspace(ws, ws_bytes, T, NH, KVH, HS, "backward");
  cublasHandle_t h = bind(blas, s);
  const int64_t G = NH / KVH, Tp = padded_len(T);
  const float scale = score_scale(HS);
  const Plan plan = plan_chunks(Pass::Backward, ws_bytes, T, NH, KVH, HS);
  const int64_t gh = plan.gh, mrows = gh * T;
  char* base = static_cast<char*>(ws);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h0 = 0, segs = 0; h0 < NH; h0 += segs * gh) {
      segs = std::min(plan.segs, (NH - h0) / gh);
      const int64_t n = segs * gh, kv0 = h0 / G;
      const int64_t qoff = (b * T * NH + h0) * HS, kvoff = (b * T * KVH + kv0) * HS;
      const Layout L = backward_layout(n, segs, T, HS);
      bf16* qb = reinterpret_cast<bf16*>(base + L.q);
      bf16* dob = reinterpret_cast<bf16*>(base + L.dout);
      bf16* kb = reinterpret_cast<bf16*>(base + L.k);
      bf16* vb = reinterpret_cast<bf16*>(base + L.v);
      float* S = reinterpret_cast<float*>(base + L.s);
      float* dP = reinterpret_cast<float*>(base + L.dp);
      float* dQ = reinterpret_cast<float*>(base + L.o);
      gather_bf16(qb, q + qoff, n, T, NH, HS, s);
      gather_bf16(dob, dout + qoff, n, T, NH, HS, s);
      gather_bf16(kb, k + kvoff, segs, T, KVH, HS, s);
      gather_bf16(vb, v + kvoff, segs, T, KVH, HS, s);
      // S = Q K^T and dP = dO V^T, (gh T, T; ld Tp) per segment.
      gemm(h, mrows, T, HS, 1.0f, {qb, HS, mrows * HS, false}, {kb, HS, T * HS, true}, 0.0f, S, Tp, mrows * Tp, segs,
           "S = Q K^T");
      gemm(h, mrows, T, HS, 1.0f, {dob, HS, mrows * HS, false}, {vb, HS, T * HS, true}, 0.0f, dP, Tp, mrows * Tp,
           segs, "dP = dO V^T");
      softmax_backward_kernel<<<row_blocks(n * T), kThreads, 0, s>>>(S, dP, lse + (b * NH + h0) * T, out + qoff,
                                                                       dout + qoff, n * T, T, Tp, NH, HS, scale);
      PRIMAL_CUDA_CHECK_LAUNCH();
      const bf16* P = reinterpret_cast<const bf16*>(S);
      const bf16* dS = reinterpret_cast<const bf16*>(dP);
      // A group split over chunks (gh < G) adds its later chunks, in head order.
      const float beta = h0 % G == 0 ? 0.0f : 1.0f;
      // dV (T, HS; ld KVH HS) = P^T (T, gh T) dO (gh T, HS), KV head kv0 + segment.
      gemm(h, T, HS, mrows, 1.0f, {P, 2 * Tp, mrows * 2 * Tp, true}, {dob, HS, mrows * HS, false}, beta, dv + kvoff,
           KVH * HS, HS, segs, "dV = P^T dO");
      // dK = dS^T Q / sqrt(HS), likewise.
      gemm(h, T, HS, mrows, scale, {dS, 2 * Tp, mrows * 2 * Tp, true}, {qb, HS, mrows * HS, false}, beta, dk + kvoff,
           KVH * HS, HS, segs, "dK = dS^T Q");
      // dQ (gh T, HS) = dS (gh T, T) K (T, HS) / sqrt(HS), over the consumed Q and dO copies.
      gemm(h, mrows, HS, T, scale, {dS, 2 * Tp, mrows * 2 * Tp, false}, {kb, HS, T * HS, false}, 0.0f, dQ, HS,
           mrows * HS, segs, "dQ = dS K");
      scatter_rows(dq + qoff, dQ, n, T, NH, HS, s);
    }
  }
}

}  // namespace primal::cuda
