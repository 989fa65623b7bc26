// The LUT linear layer of the trainer on the GPU (lut_train.h): dequantization into a scratch,
// cuBLAS SGEMM, the bias, dbias, and the weight gradient's first stage (votes.cu has the second).
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <numeric>

#include "ops/cuda/check.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemm_tune.h"
#include "ops/cuda/lut_dw_cast.h"
#include "ops/cuda/lut_gemm.h"
#include "ops/cuda/lut_train.cuh"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/train_ops.h"
#include "ops/cuda/votes.h"
#include "ops/cuda/votes_common.cuh"
#include "quant/lut_pack.h"

namespace primal::cuda {

int LutTrainView::bits() const { return lut_bits(type); }

void check_lut_view(const LutTrainView& w, const char* what) {
  PRIMAL_CHECK(is_lut(w.type), "{}: type {} is not a LUT type", what, dtype_name(w.type));
  PRIMAL_CHECK(w.O > 0 && w.I > 0 && w.G > 0 && w.I % w.G == 0, "{}: shape O {} I {} G {} (G must divide I)", what,
               w.O, w.I, w.G);
  PRIMAL_CHECK(w.I % traits(w.type).block == 0, "{}: {} packs {} indices together, the row of {} is not a multiple",
               what, dtype_name(w.type), traits(w.type).block, w.I);
  PRIMAL_CHECK(w.idx && w.scale && w.grid, "{}: missing indices, scales or grid", what);
  // cuBLAS and the launch arithmetic take int dimensions.
  PRIMAL_CHECK(w.O < (int64_t(1) << 31) && w.I < (int64_t(1) << 31), "{}: O {} I {} too large", what, w.O, w.I);
}

namespace {

TrainMath g_math = TrainMath::Fp32;
bool g_fused_dequant = false;
StageHook g_hook = nullptr;
void* g_hook_ctx = nullptr;
void stage(const char* name) {
  if (g_hook) g_hook(g_hook_ctx, name);
}

// Column-major C (m x n, ldc) = op(A) (m x k) op(B) (k x n) + beta C through cublasGemmEx (or the
// tuned choice: gemm_tune.h), A and B of type ab, C of type c, alpha 1, on stream s.
void gemm_ex(Blas& blas, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const void* A,
             int64_t lda, const void* B, int64_t ldb, float beta, void* C, int64_t ldc, cudaDataType_t ab,
             cudaDataType_t c, cublasComputeType_t ct, cudaStream_t s, const char* what) {
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  PRIMAL_CHECK(m <= kMax && n <= kMax && k <= kMax && lda <= kMax && ldb <= kMax && ldc <= kMax,
               "{}: dimensions {} {} {} exceed cuBLAS's int", what, m, n, k);
  GemmCall g;
  g.ta = ta, g.tb = tb, g.m = m, g.n = n, g.k = k, g.lda = lda, g.ldb = ldb, g.ldc = ldc;
  g.ab = ab, g.c = c, g.ct = ct, g.A = A, g.B = B, g.C = C, g.beta = beta;
  gemm_run(blas, g, s, what);
}

// fp32 operands and result. The pedantic compute type keeps cuBLAS from TF32 or BF16x9
// emulation, whatever the handle's math mode or the environment says: the products are fp32
// products, as the CPU's (the bf16 mode rounds the operands to bf16 inside cuBLAS instead).
void sgemm(Blas& blas, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t s) {
  const cublasComputeType_t ct = g_math == TrainMath::Bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_PEDANTIC;
  gemm_ex(blas, ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc, CUDA_R_32F, CUDA_R_32F, ct, s, "sgemm");
}

// bf16 A and B, fp32 accumulation; C fp32, or bf16 (C_bf16) rounded from the accumulators.
void gemm_bf16(Blas& blas, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
               const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb, float beta, void* C, int64_t ldc,
               cudaStream_t s, bool C_bf16 = false) {
  gemm_ex(blas, ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc, CUDA_R_16BF, C_bf16 ? CUDA_R_16BF : CUDA_R_32F,
          CUBLAS_COMPUTE_32F, s, "gemm_bf16");
}

// Both operands native bf16 (the fast mode with the caller's bf16 copies).
bool native_bf16(const Operand& a) { return g_math == TrainMath::Bf16 && a.bf16; }

__global__ void to_bf16_kernel(__nv_bfloat16* dst, const float* src, int64_t n) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x)
    dst[k] = __float2bfloat16_rn(src[k]);
}
__global__ void to_bf16_rows_kernel(__nv_bfloat16* dst, int64_t ld, const float* src, int64_t rows, int64_t cols,
                                    const float* bias, int64_t ld_src) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < rows * cols;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / cols, c = k - r * cols;
    const float x = src[r * ld_src + c];
    dst[r * ld + c] = __float2bfloat16_rn(bias ? __fadd_rn(x, bias[c]) : x);
  }
}

// dst[r, i] = scale[o0 + r, i / G] * grid[idx[o0 + r, i]]: __fmul_rn, the one rounding of the
// CPU's fp32 product (Out float), or that product rounded to bf16 (Out __nv_bfloat16). A block
// per row (grid-stride), threads along it: coalesced stores, 32-bit column arithmetic (a 64-bit
// division per value made the head's dequantization cost more than its GEMM).
__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

template <int B, class Out>
__global__ void dequant_rows_kernel(const LutTrainView w, int64_t o0, int64_t n, int64_t row_bytes, Out* dst) {
  const int I = int(w.I), G = int(w.G), groups = I / G;
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int64_t o = o0 + r;
    const uint8_t* row = w.idx + o * row_bytes;
    const float* sc = w.scale + o * groups;
    Out* d = dst + r * I;
    for (int i = int(threadIdx.x); i < I; i += int(blockDim.x))
      put(d + i, __fmul_rn(sc[i / G], __ldg(w.grid + lut::get_index<B>(row, i))));
  }
}

// Blocks for the row kernels above: one per row up to a few per multiprocessor.
int row_blocks(int64_t n) { return int(std::max<int64_t>(1, std::min<int64_t>(n, 32 * int64_t(sm_count())))); }

// The bf16 dequantization for the GEMMs of the bf16 mode, the same values as dequant_rows_kernel
// <B, __nv_bfloat16> 8 at a time: a thread reads the 8 indices of one 32-bit (LUT4) or 64-bit
// (LUT8) word, takes the grid from shared memory and stores 16 bytes (the scalar kernel spent an
// integer division, a global grid load and a 2-byte store per value, 3 times a step per weight).
// Preconditions (vec_dequant_ok): I % 8 == 0, G % 8 == 0, K <= 256.
constexpr int kVecMaxK = 256;

bool vec_dequant_ok(const LutTrainView& w) { return w.I % 8 == 0 && w.G % 8 == 0 && w.K() <= kVecMaxK; }

template <int B>
__device__ __forceinline__ void indices8(const uint8_t* row, int i, uint32_t q[8]) {
  if constexpr (B == 4) {
    const uint32_t x = *reinterpret_cast<const uint32_t*>(row + i / 2);  // row_bytes = I / 2: aligned
#pragma unroll
    for (int e = 0; e < 8; ++e) q[e] = (x >> (4 * e)) & 15u;
  } else if constexpr (B == 8) {
    const uint2 x = *reinterpret_cast<const uint2*>(row + i);
#pragma unroll
    for (int e = 0; e < 4; ++e) q[e] = (x.x >> (8 * e)) & 255u, q[e + 4] = (x.y >> (8 * e)) & 255u;
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) q[e] = lut::get_index<B>(row, i + e);
  }
}

// One row of a bf16 dequantization: its 8-value chunks c = threadIdx.x, + blockDim.x, ... from the
// packed indices `row`, the row's scales `sc` (a scale per G values) and `grid` (shared or global).
template <int B>
__device__ __forceinline__ void dequant_row_bf16(const uint8_t* row, const float* sc, int G, int oct, const float* grid,
                                                 uint4* d) {
  for (int c = int(threadIdx.x); c < oct; c += int(blockDim.x)) {
    uint32_t q[8];
    indices8<B>(row, 8 * c, q);
    const float s = sc[8 * c / G];
    __nv_bfloat162 h[4];
#pragma unroll
    for (int e = 0; e < 4; ++e)
      h[e] = __floats2bfloat162_rn(__fmul_rn(s, grid[q[2 * e]]), __fmul_rn(s, grid[q[2 * e + 1]]));
    d[c] = *reinterpret_cast<const uint4*>(h);
  }
}

template <int B>
__global__ void dequant_rows_bf16_vec_kernel(const LutTrainView w, int64_t o0, int64_t n, int64_t row_bytes,
                                             __nv_bfloat16* dst) {
  __shared__ float grid[kVecMaxK];
  if constexpr (B > 8) return;  // never launched (vec_dequant_ok): LUT16's grid does not fit
  const int K = 1 << B, I = int(w.I), G = int(w.G), groups = I / G, oct = I / 8;
  for (int q = int(threadIdx.x); q < K; q += int(blockDim.x)) grid[q] = w.grid[q];
  __syncthreads();
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const int64_t o = o0 + r;
    const uint8_t* row = w.idx + o * row_bytes;
    const float* sc = w.scale + o * groups;
    dequant_row_bf16<B>(row, sc, G, oct, grid, reinterpret_cast<uint4*>(dst + r * I));
  }
}

// dequant_rows_bf16_vec_kernel for up to kGroupMax matrices of one index width and row length in
// one launch (q, k, v; gate, up: a launch each was mostly latency, ~6 us for a 1280 x 1280 matrix):
// row R of the group is row R - row0[k] of matrix k, written to its own destination; the grid values
// come through the L1 (the rows of one block belong to different matrices).
constexpr int kGroupMax = 3;
struct DequantGroup {
  LutTrainView w[kGroupMax];
  __nv_bfloat16* dst[kGroupMax];
  int64_t row_bytes[kGroupMax];
  int64_t row0[kGroupMax + 1];  // first row of each matrix in the group; row0[n]: all rows
  int n;
};

template <int B>
__global__ void dequant_group_bf16_kernel(const DequantGroup g) {
  if constexpr (B <= 8) {
    for (int64_t R = blockIdx.x; R < g.row0[g.n]; R += gridDim.x) {
      int k = 0;
      while (k + 1 < g.n && R >= g.row0[k + 1]) ++k;
      const LutTrainView& w = g.w[k];
      const int64_t o = R - g.row0[k];
      const int I = int(w.I), G = int(w.G), oct = I / 8;
      const uint8_t* row = w.idx + o * g.row_bytes[k];
      const float* sc = w.scale + o * (I / G);
      dequant_row_bf16<B>(row, sc, G, oct, w.grid, reinterpret_cast<uint4*>(g.dst[k] + o * I));
    }
  }
}

// Whether the n matrices dequantize as one group into a bf16 scratch of 2 scratch_floats values.
bool group_ok(const LutTrainView* w, int n, int64_t scratch_floats) {
  if (n < 1 || n > kGroupMax) return false;
  int64_t total = 0;
  for (int k = 0; k < n; ++k) {
    check_lut_view(w[k], "lut linear group");
    if (!vec_dequant_ok(w[k]) || w[k].bits() != w[0].bits() || w[k].bits() > 8 || w[k].I != w[0].I) return false;
    total += w[k].O * w[k].I;
  }
  return total <= 2 * scratch_floats;
}

// The group's weights as bf16, matrix k at wb[k] (consecutive in the scratch, 16-byte aligned);
// launch false: only where they are (the scratch holds them already).
void dequantize_group_bf16(const LutTrainView* w, int n, float* scratch, uint16_t** wb, cudaStream_t s,
                           bool launch = true) {
  DequantGroup g{};
  g.n = n;
  g.row0[0] = 0;
  int64_t at = 0;
  for (int k = 0; k < n; ++k) {
    wb[k] = reinterpret_cast<uint16_t*>(scratch) + at;
    at += w[k].O * w[k].I;  // a multiple of 8 values (I % 8 == 0): 16-byte aligned
    g.w[k] = w[k], g.dst[k] = reinterpret_cast<__nv_bfloat16*>(wb[k]), g.row_bytes[k] = w[k].row_bytes();
    g.row0[k + 1] = g.row0[k] + w[k].O;
  }
  if (!launch) return;
  const int threads = int(std::min<int64_t>(lut::kThreads, (w[0].I / 8 + 31) / 32 * 32));
#define PRIMAL_LAUNCH(B) dequant_group_bf16_kernel<B><<<row_blocks(g.row0[n]), threads, 0, s>>>(g)
  PRIMAL_LUT_BITS_SWITCH(w[0].bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

template <class Out>
void dequantize_rows(const LutTrainView& w, int64_t o0, int64_t n, Out* dst, cudaStream_t s) {
  if (n == 0) return;
  const int blocks = row_blocks(n);
  const int64_t rb = w.row_bytes();
#define PRIMAL_LAUNCH(B) dequant_rows_kernel<B, Out><<<blocks, lut::kThreads, 0, s>>>(w, o0, n, rb, dst)
  PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void dequantize_rows_bf16(const LutTrainView& w, int64_t o0, int64_t n, uint16_t* dst, cudaStream_t s) {
  auto* d = reinterpret_cast<__nv_bfloat16*>(dst);
  if (n == 0 || !vec_dequant_ok(w)) return dequantize_rows(w, o0, n, d, s);
  const int blocks = row_blocks(n);
  const int64_t rb = w.row_bytes();
  // A thread per 8 values of a row, up to kThreads (256 threads on a 1280-long row left 96 idle).
  const int threads = int(std::min<int64_t>(lut::kThreads, (w.I / 8 + 31) / 32 * 32));
#define PRIMAL_LAUNCH(B) dequant_rows_bf16_vec_kernel<B><<<blocks, threads, 0, s>>>(w, o0, n, rb, d)
  PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

// out[t, o] += bias[o] (out: (N, O)), after the GEMM as on the CPU.
__global__ void add_bias_kernel(float* out, const float* bias, int64_t N, int64_t O) {
  const int64_t total = N * O;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x)
    out[k] = __fadd_rn(out[k], bias[k % O]);
}

// dbias[o] += float(sum_t dout[t, o]) with the sum in fp64 in token order, as linear.cpp. A
// block per 32 columns: its warps stage kT tokens x 32 columns in shared memory (coalesced
// loads, many in flight), then warp 0 adds them in token order, a lane per column. (A thread
// per column reading global memory in a dependent chain was latency-bound: 0.9 ms a call.)
constexpr int kBiasTokens = 64;

__global__ void dbias_kernel(const float* dout, int64_t N, int64_t O, float* dbias) {
  __shared__ float tile[kBiasTokens][33];
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5), n_warps = int(blockDim.x >> 5);
  const int64_t o = int64_t(blockIdx.x) * 32 + lane;
  double s = 0;
  for (int64_t t0 = 0; t0 < N; t0 += kBiasTokens) {
    const int n = int(N - t0 < kBiasTokens ? N - t0 : kBiasTokens);
    for (int tt = warp; tt < n; tt += n_warps) tile[tt][lane] = o < O ? dout[(t0 + tt) * O + o] : 0.0f;
    __syncthreads();
    if (warp == 0)
      for (int tt = 0; tt < n; ++tt) s = __dadd_rn(s, double(tile[tt][lane]));
    __syncthreads();
  }
  if (warp == 0 && o < O) dbias[o] = __fadd_rn(dbias[o], float(s));
}

// The bf16 mode's dbias (whose results are not held to the CPU's bits): 32 warps of a block
// take every 32nd token of 32 columns, their fp64 partials are added in warp order. Run to run
// deterministic, 30x the parallelism of the token-order chain.
__global__ void dbias_fast_kernel(const float* dout, int64_t N, int64_t O, float* dbias) {
  __shared__ double part[32][33];
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  const int64_t o = int64_t(blockIdx.x) * 32 + lane;
  double s = 0;
  if (o < O)
    for (int64_t t = warp; t < N; t += 32) s += double(dout[t * O + o]);
  part[warp][lane] = s;
  __syncthreads();
  if (warp == 0 && o < O) {
    double tot = 0;
    for (int w = 0; w < 32; ++w) tot += part[w][lane];
    dbias[o] = __fadd_rn(dbias[o], float(tot));
  }
}

void launch_dbias(const float* dout, int64_t N, int64_t O, float* dbias, cudaStream_t s) {
  if (g_math == TrainMath::Bf16) dbias_fast_kernel<<<unsigned((O + 31) / 32), 1024, 0, s>>>(dout, N, O, dbias);
  else dbias_kernel<<<unsigned((O + 31) / 32), lut::kThreads, 0, s>>>(dout, N, O, dbias);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

// Rows of W per chunk of the forward / dinp scratch.
int64_t chunk_rows(const LutTrainView& w, int64_t scratch_floats, const char* what) {
  PRIMAL_CHECK(scratch_floats >= w.I, "{}: a scratch of {} floats cannot hold one row of {}", what, scratch_floats,
               w.I);
  const int64_t rows = scratch_floats / w.I;
  // Chunk starts at multiples of 16 rows: a GEMM operand or output that starts at row o0 of a
  // (., O) matrix is then 32-byte aligned; cuBLAS's bf16 kernels for a misaligned pointer run at
  // a third of the speed (the head: 17,500-row chunks 167 TFLOP/s, 17,504-row chunks 558).
  return rows >= w.O ? w.O : rows >= 16 ? rows / 16 * 16 : rows;
}

// The LUT GEMM with the dequantization in its loads (lut_gemm.h), where it is on and runs here.
bool fused_dequant_on() { return g_fused_dequant && g_math == TrainMath::Bf16 && lut_gemm_available(); }

LutGemmMat gemm_mat(const LutTrainView& w) {
  LutGemmMat m;
  m.idx = w.idx, m.row_bytes = w.row_bytes(), m.scale = w.scale, m.groups = w.groups(), m.G = w.G, m.grid = w.grid;
  m.O = w.O;
  return m;
}
LutGemmOut gemm_out(void* p, int64_t ld, bool bf16, bool accumulate = false, const float* bias = nullptr) {
  LutGemmOut o;
  o.p = p, o.ld = ld, o.bf16 = bf16, o.accumulate = accumulate, o.bias = bias;
  return o;
}
// Launches L where the fused GEMM is on and takes its shape; false (nothing done) otherwise.
bool fused_gemm(const LutGemmLaunch& L, cudaStream_t s) {
  if (!fused_dequant_on() || !lut_gemm_shape_ok(L)) return false;
  lut_gemm_launch(L, s);
  stage(L.dinp ? "fused dinp" : "fused forward");
  return true;
}
// The forward of n matrices with one bf16 input (N, ldi) into their outputs.
bool fused_forward(const LutTrainView* w, const LutGemmOut* out, int n, const uint16_t* inp, int64_t ldi, int64_t N,
                   cudaStream_t s) {
  LutGemmLaunch L;
  L.n = n, L.bits = w[0].bits(), L.N = N, L.I = w[0].I, L.inp = inp, L.ldi = ldi;
  for (int k = 0; k < n; ++k) {
    if (w[k].bits() != L.bits || w[k].I != L.I) return false;
    L.m[k] = gemm_mat(w[k]), L.m[k].out = out[k];
  }
  return fused_gemm(L, s);
}
// dinp (N, I) (+)= sum_k dout_k (N, O_k; rows ldd[k] apart) W_k.
bool fused_dinp(const LutTrainView* w, const uint16_t* const* dout, const int64_t* ldd, int n, int64_t N,
                const LutGemmOut& out, cudaStream_t s) {
  LutGemmLaunch L;
  L.dinp = true, L.n = n, L.bits = w[0].bits(), L.N = N, L.I = w[0].I, L.out = out;
  for (int k = 0; k < n; ++k) {
    if (w[k].bits() != L.bits || w[k].I != L.I) return false;
    L.m[k] = gemm_mat(w[k]), L.m[k].dout = dout[k], L.m[k].ldd = ldd[k];
  }
  return fused_gemm(L, s);
}

}  // namespace

void lut_dequantize_rows(const LutTrainView& w, int64_t o0, int64_t n, float* dst, cudaStream_t s) {
  check_lut_view(w, "lut_dequantize_rows");
  PRIMAL_CHECK(o0 >= 0 && n >= 0 && o0 + n <= w.O && dst, "lut_dequantize_rows: rows {}..{} of {}", o0, o0 + n, w.O);
  dequantize_rows(w, o0, n, dst, s);
}

void lut_linear_forward(Blas& blas, const LutTrainView& w, Operand inp, int64_t N, const float* bias, float* out,
                        float* scratch, int64_t scratch_floats, cudaStream_t s) {
  check_lut_view(w, "lut_linear_forward");
  PRIMAL_CHECK(N > 0 && (inp.f32 || inp.bf16) && out && scratch, "lut_linear_forward: N {} or a null pointer", N);
  const bool b16 = native_bf16(inp);
  const int64_t O = w.O, I = w.I;
  if (b16) {
    const LutGemmOut o = gemm_out(out, O, false, false, bias);
    if (fused_forward(&w, &o, 1, inp.bf16, inp.ld > 0 ? inp.ld : I, N, s)) return;
  }
  // A bf16 scratch holds twice the values.
  const int64_t rows_max = chunk_rows(w, b16 ? 2 * scratch_floats : scratch_floats, "lut_linear_forward");
  for (int64_t o0 = 0; o0 < O; o0 += rows_max) {
    const int64_t rows = std::min(rows_max, O - o0);
    // Column-major: out^T[o0 .. o0+rows, :] (rows x N, ld O) = Wc (I x rows)^T inp^T (I x N).
    if (b16) {
      auto* wb = reinterpret_cast<uint16_t*>(scratch);
      dequantize_rows_bf16(w, o0, rows, wb, s);
      gemm_bf16(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, N, I, wb, I, inp.bf16, I, 0.0f, out + o0, O, s);
    } else {
      lut_dequantize_rows(w, o0, rows, scratch, s);
      sgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, N, I, scratch, I, inp.f32, I, 0.0f, out + o0, O, s);
    }
  }
  if (bias) {
    add_bias_kernel<<<lut::blocks_for(N * O), lut::kThreads, 0, s>>>(out, bias, N, O);
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
}

void lut_linear_forward_bf16_out(Blas& blas, const LutTrainView& w, const uint16_t* inp, int64_t N, uint16_t* out,
                                 float* scratch, int64_t scratch_floats, cudaStream_t s, int64_t ldo) {
  check_lut_view(w, "lut_linear_forward_bf16_out");
  PRIMAL_CHECK(N > 0 && inp && out && scratch, "lut_linear_forward_bf16_out: N {} or a null pointer", N);
  PRIMAL_CHECK(ldo == 0 || ldo >= w.O, "lut_linear_forward_bf16_out: row stride {} below {} rows", ldo, w.O);
  const int64_t O = w.O, I = w.I, ld = ldo > 0 ? ldo : O;
  const LutGemmOut fo = gemm_out(out, ld, true);
  if (fused_forward(&w, &fo, 1, inp, I, N, s)) return;
  const int64_t rows_max = chunk_rows(w, 2 * scratch_floats, "lut_linear_forward_bf16_out");
  auto* wb = reinterpret_cast<uint16_t*>(scratch);
  for (int64_t o0 = 0; o0 < O; o0 += rows_max) {
    const int64_t rows = std::min(rows_max, O - o0);
    dequantize_rows_bf16(w, o0, rows, wb, s);
    gemm_bf16(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, N, I, wb, I, inp, I, 0.0f, out + o0, ld, s, true);
  }
}

void lut_linear_backward_input(Blas& blas, const LutTrainView& w, Operand dout, int64_t N, float* dinp,
                               bool accumulate, float* scratch, int64_t scratch_floats, cudaStream_t s) {
  check_lut_view(w, "lut_linear_backward_input");
  PRIMAL_CHECK(N > 0 && (dout.f32 || dout.bf16) && dinp && scratch, "lut_linear_backward_input: N {} or a null pointer",
               N);
  const bool b16 = native_bf16(dout);
  const int64_t O = w.O, I = w.I, ldd = dout.ld > 0 ? dout.ld : O;
  PRIMAL_CHECK(ldd >= O, "lut_linear_backward_input: row stride {} below {} rows", ldd, O);
  if (b16 && fused_dinp(&w, &dout.bf16, &ldd, 1, N, gemm_out(dinp, I, false, accumulate), s)) return;
  const int64_t rows_max = chunk_rows(w, b16 ? 2 * scratch_floats : scratch_floats, "lut_linear_backward_input");
  for (int64_t o0 = 0; o0 < O; o0 += rows_max) {
    const int64_t rows = std::min(rows_max, O - o0);
    // Column-major: dinp^T (I x N) (+)= Wc (I x rows) dout^T[o0 .. o0+rows, :] (rows x N, ld O);
    // the chunks are summed in row order, as the CPU sums its tiles.
    const float beta = (accumulate || o0 > 0) ? 1.0f : 0.0f;
    if (b16) {
      auto* wb = reinterpret_cast<uint16_t*>(scratch);
      dequantize_rows_bf16(w, o0, rows, wb, s);
      gemm_bf16(blas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, rows, wb, I, dout.bf16 + o0, ldd, beta, dinp, I, s);
    } else {
      lut_dequantize_rows(w, o0, rows, scratch, s);
      sgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, rows, scratch, I, dout.f32 + o0, O, beta, dinp, I, s);
    }
  }
}

bool lut_linear_forward_group(Blas& blas, const LutTrainView* w, const LutGroupOut* out, int n, const uint16_t* inp,
                              int64_t N, float* scratch, int64_t scratch_floats, cudaStream_t s, int64_t ldo) {
  PRIMAL_CHECK(N > 0 && inp && scratch && w && out, "lut_linear_forward_group: N {} or a null pointer", N);
  if (n >= 1 && n <= kGroupMax && fused_dequant_on()) {
    LutGemmOut fo[kGroupMax];
    bool ok = true;
    int64_t col = 0;
    for (int k = 0; k < n; ++k) {
      if (ldo > 0) {  // one (N, ldo) fp32 matrix: matrix k's columns after those of 0 .. k-1
        ok = ok && out[k].f32 == out[0].f32 + col && !out[k].bf16 && !out[k].bias;
        fo[k] = gemm_out(out[0].f32 + col, ldo, false);
      } else {
        fo[k] = out[k].bf16 ? gemm_out(out[k].bf16, w[k].O, true)
                            : gemm_out(out[k].f32, w[k].O, false, false, out[k].bias);
      }
      col += w[k].O;
    }
    if (ok && (ldo == 0 || ldo == col) && fused_forward(w, fo, n, inp, w[0].I, N, s)) return true;
  }
  if (!group_ok(w, n, scratch_floats)) return false;
  uint16_t* wb[kGroupMax];
  if (ldo > 0) {  // one GEMM: out^T (sum O x N, ld ldo) = the stacked weights (I x sum O)^T inp^T
    int64_t sumO = 0;
    for (int k = 0; k < n; ++k) {
      PRIMAL_CHECK(out[k].f32 == out[0].f32 + sumO && !out[k].bf16 && !out[k].bias,
                   "lut_linear_forward_group: output {} is not the next column block of one fp32 matrix", k);
      sumO += w[k].O;
    }
    PRIMAL_CHECK(ldo == sumO, "lut_linear_forward_group: row stride {} for {} columns", ldo, sumO);
    dequantize_group_bf16(w, n, scratch, wb, s);  // consecutive: the stacked (sum O, I) weights
    gemm_bf16(blas, CUBLAS_OP_T, CUBLAS_OP_N, sumO, N, w[0].I, wb[0], w[0].I, inp, w[0].I, 0.0f, out[0].f32, ldo, s);
    return true;
  }
  dequantize_group_bf16(w, n, scratch, wb, s);
  for (int k = 0; k < n; ++k) {
    const int64_t O = w[k].O, I = w[k].I;
    PRIMAL_CHECK(out[k].f32 || out[k].bf16, "lut_linear_forward_group: output {} missing", k);
    PRIMAL_CHECK(!out[k].bias || out[k].f32, "lut_linear_forward_group: a bias needs the fp32 output ({})", k);
    if (out[k].bf16) {
      gemm_bf16(blas, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, wb[k], I, inp, I, 0.0f, out[k].bf16, O, s, true);
    } else {
      gemm_bf16(blas, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, wb[k], I, inp, I, 0.0f, out[k].f32, O, s);
      if (out[k].bias) {
        add_bias_kernel<<<lut::blocks_for(N * O), lut::kThreads, 0, s>>>(out[k].f32, out[k].bias, N, O);
        PRIMAL_CUDA_CHECK_LAUNCH();
      }
    }
  }
  return true;
}

bool lut_linear_backward_input_group(Blas& blas, const LutTrainView* w, const uint16_t* const* dout, int n, int64_t N,
                                     float* dinp, bool accumulate, float* scratch, int64_t scratch_floats,
                                     cudaStream_t s, int64_t ldd, bool dequantized) {
  PRIMAL_CHECK(N > 0 && dinp && scratch && w && dout, "lut_linear_backward_input_group: N {} or a null pointer", N);
  if (!group_ok(w, n, scratch_floats)) return false;
  int64_t sumO = 0;
  bool stacked = ldd > 0;  // the douts: consecutive column blocks of one (N, ldd) matrix
  for (int k = 0; k < n; ++k) {
    PRIMAL_CHECK(dout[k], "lut_linear_backward_input_group: dout {} missing", k);
    PRIMAL_CHECK(ldd == 0 || ldd >= w[k].O, "lut_linear_backward_input_group: row stride {} below {} rows", ldd, w[k].O);
    stacked = stacked && dout[k] == dout[0] + sumO;
    sumO += w[k].O;
  }
  stacked = stacked && ldd == sumO;
  int64_t lds[kGroupMax];
  for (int k = 0; k < n; ++k) lds[k] = ldd > 0 ? ldd : w[k].O;
  if (fused_dinp(w, dout, lds, n, N, gemm_out(dinp, w[0].I, false, accumulate), s)) return true;
  // With the fused GEMM on, the forward may not have left the weights in the scratch.
  if (fused_dequant_on()) dequantized = false;
  uint16_t* wb[kGroupMax];
  dequantize_group_bf16(w, n, scratch, wb, s, !dequantized);  // consecutive: the stacked (sum O_k, I) weights
  const int64_t I = w[0].I;
  if (stacked) {
    gemm_bf16(blas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, sumO, wb[0], I, dout[0], ldd, accumulate ? 1.0f : 0.0f, dinp, I, s);
    return true;
  }
  for (int k = 0; k < n; ++k) {  // summed in matrix order, as the per-matrix calls
    const float beta = (accumulate || k > 0) ? 1.0f : 0.0f;
    gemm_bf16(blas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, w[k].O, wb[k], I, dout[k], ldd > 0 ? ldd : w[k].O, beta, dinp, I, s);
  }
  return true;
}

void lut_linear_backward_input_bf16_out(Blas& blas, const LutTrainView& w, const uint16_t* dout, int64_t N,
                                        uint16_t* dinp, float* scratch, int64_t scratch_floats, cudaStream_t s) {
  check_lut_view(w, "lut_linear_backward_input_bf16_out");
  PRIMAL_CHECK(N > 0 && dout && dinp && scratch, "lut_linear_backward_input_bf16_out: N {} or a null pointer", N);
  const int64_t ldd = w.O;
  if (fused_dinp(&w, &dout, &ldd, 1, N, gemm_out(dinp, w.I, true), s)) return;
  PRIMAL_CHECK(2 * scratch_floats >= w.O * w.I,
               "lut_linear_backward_input_bf16_out: the matrix ({} x {}) must be dequantized whole (a scratch of {} "
               "floats): a bf16 output cannot accumulate chunks",
               w.O, w.I, scratch_floats);
  auto* wb = reinterpret_cast<uint16_t*>(scratch);
  dequantize_rows_bf16(w, 0, w.O, wb, s);
  // Column-major: dinp^T (I x N) = Wc (I x O) dout^T (O x N), rounded once to bf16.
  gemm_bf16(blas, CUBLAS_OP_N, CUBLAS_OP_N, w.I, N, w.O, wb, w.I, dout, w.O, 0.0f, dinp, w.I, s, true);
}

// A weight gradient's rows from bf16 operands. Column-major: dW^T (I x rows, ld I) = inp^T (I x N)
// dout (N x rows, ld ldd) + beta dW^T; dW bf16 (rounded once from the accumulators) or fp32.
void dw_gemm_bf16(Blas& blas, int64_t I, int64_t rows, int64_t N, const uint16_t* inp, const uint16_t* dout, int64_t ldd,
                  float beta, void* dW, cudaStream_t s, bool dW_bf16 = true) {
  gemm_bf16(blas, CUBLAS_OP_N, CUBLAS_OP_T, I, rows, N, inp, I, dout, ldd, beta, dW, I, s, dW_bf16);
  stage("dW gemm");
}

// One round of the casts beside the GEMMs (CastAside): the next buffer once the casts that last
// read it are done, gemm(buffer) on s, then cast(buffer) on the casts' stream after it; the buffer
// is free again when they are.
template <class Gemm, class Cast>
void aside_round(CastAside& a, cudaStream_t s, const Gemm& gemm, const Cast& cast) {
  const int k = a.turn;
  a.turn ^= 1;
  PRIMAL_CUDA_CHECK(cudaStreamWaitEvent(s, a.dw_free[k], 0));
  gemm(a.dw[k]);
  PRIMAL_CUDA_CHECK(cudaEventRecord(a.gemm_done[k], s));
  PRIMAL_CUDA_CHECK(cudaStreamWaitEvent(a.stream, a.gemm_done[k], 0));
  cast(a.dw[k]);
  PRIMAL_CUDA_CHECK(cudaEventRecord(a.dw_free[k], a.stream));
}

// The fused weight gradient + cast (lut_dw_cast.h) of n matrices whose output gradients are the
// consecutive column blocks of dout (N, ldd), with their lut_votes_done; false, with nothing done,
// where it does not serve them (the caller then takes the GEMM and the casts beside it).
bool dw_cast_fused(const LutTrainView* w, const LutWeightGrad* g, int n, const uint16_t* dout, int64_t ldd,
                   const uint16_t* inp, int64_t ldi, int64_t N, cudaStream_t s) {
  CastAside* a = g[0].aside;
  if (g_math != TrainMath::Bf16 || n < 1 || n > 3 || !a || !a->fused_ws || !a->fused_ws->queue || !dw_cast_available())
    return false;
  DwCastLaunch L;
  L.nseg = n, L.dout = dout, L.ldd = ldd, L.inp = inp, L.ldi = ldi, L.N = N, L.I = w[0].I, L.bits = w[0].bits();
  L.dw_out = a->fused_dw_out;
  CastWorkspace& ws = *a->fused_ws;
  vk::CastArgs ca[3];
  int64_t part = 0;
  for (int k = 0; k < n; ++k) {
    VoteState* st = g[k].votes;
    if (!st || !st->v8 || !g[k].params || g[k].aside != a || w[k].I != L.I || w[k].bits() != L.bits ||
        g[k].params->vote_bits != 8 || g[k].params->rule != VoteRule::Momentum)
      return false;
    ca[k] = cast_args_of(w[k], st, g[k].params);
    if (!ca[k].cast || !ca[k].sm) return false;
    L.seg[k] = DwSeg{vk::mat_of(w[k]), st->v8, g[k].dscale, ca[k].row_sq, ca[k].col_norm, ws.part, {}, ca[k].prefix,
                     int(L.O / kDwBM)};
    L.O += w[k].O;
    part += w[k].O / kDwBM * L.I;
  }
  const int64_t nrb = L.O / kDwBM;
  L.rowpart = a->fused_scratch;
  L.counters = reinterpret_cast<unsigned*>(a->fused_scratch + nrb * (L.I / kDwBN) * kDwBM);
  if (!L.rowpart || a->fused_scratch_floats < dw_fused_scratch_floats(L.O, L.I) || L.I > ws.I_max ||
      part > ws.part_floats || !dw_cast_shape_ok(L))
    return false;
  // The matrices' column sums in consecutive regions of the workspace (its queue is empty: flushed
  // after each launch), their scalars (a CUDA graph's slots), the launch, then their folds in one launch.
  int64_t off = 0;
  for (int k = 0; k < n; ++k) {
    L.seg[k].part = ws.part + off;
    off += w[k].O / kDwBM * L.I;
    L.seg[k].f = fast_args(w[k], ca[k], g[k].votes, g[k].params);
  }
  dw_cast_launch(L, s);
  stage("dW gemm + cast");
  for (int k = 0; k < n; ++k) {
    VoteState& st = *g[k].votes;
    ws.queue->items.push_back({L.seg[k].part, w[k].O / kDwBM, L.I, ca[k].beta2, st.col_sq, st.col_norm});
    st.folded = true;
  }
  ws.queue->used = off;
  cast_fold_flush(ws, s);
  for (int k = 0; k < n; ++k) lut_votes_done(w[k], *g[k].votes, *g[k].params, s);
  return true;
}

bool lut_linear_backward_weight_group(Blas& blas, const LutTrainView* w, const LutWeightGrad* g, int n,
                                      const uint16_t* dout, int64_t ldd, const uint16_t* inp, int64_t N, cudaStream_t s) {
  if (n < 1 || n > kGroupMax || !dout || !inp || N <= 0 || g_math != TrainMath::Bf16) return false;
  CastAside* a = g[0].aside;
  int64_t sumO = 0;
  for (int k = 0; k < n; ++k) {
    check_lut_view(w[k], "lut_linear_backward_weight_group");
    if (!g[k].votes || g[k].dbias || g[k].aside != a || w[k].I != w[0].I ||
        !lut_grad_tiles_bf16_ok(w[k], g[k].votes, g[k].params))
      return false;
    sumO += w[k].O;
  }
  const int64_t I = w[0].I;
  if (ldd == sumO && dw_cast_fused(w, g, n, dout, ldd, inp, I, N, s)) return true;
  if (!a || ldd != sumO || sumO * I > a->capacity) return false;
  // The stacked (sum O, I) gradient, matrix k's rows after those of 0 .. k-1.
  aside_round(
      *a, s, [&](uint16_t* dW) { dw_gemm_bf16(blas, I, sumO, N, inp, dout, ldd, 0.0f, dW, s); },
      [&](uint16_t* dW) {
        for (int k = 0; k < n; dW += w[k].O * I, ++k) {
          lut_grad_tiles_bf16(w[k], dW, 0, w[k].O, g[k].dscale, g[k].votes, g[k].params, a->stream);
          lut_votes_done(w[k], *g[k].votes, *g[k].params, a->stream);
        }
      });
  return true;
}

void lut_weight_grad_sum_bf16(Blas& blas, const LutTrainView& w, const uint16_t* dout, int64_t ldd, const uint16_t* inp,
                              int64_t N, uint16_t* dW, bool accumulate, cudaStream_t s) {
  check_lut_view(w, "lut_weight_grad_sum_bf16");
  if (ldd == 0) ldd = w.O;
  PRIMAL_CHECK(N > 0 && dout && inp && dW && ldd >= w.O, "lut_weight_grad_sum_bf16: N {}, row stride {} for {} rows, or "
               "a null pointer", N, ldd, w.O);
  dw_gemm_bf16(blas, w.I, w.O, N, inp, dout, ldd, accumulate ? 1.0f : 0.0f, dW, s);
}

void lut_linear_backward_weight(Blas& blas, const LutTrainView& w, Operand dout, Operand inp, int64_t N,
                                const LutWeightGrad& g, float* scratch, int64_t scratch_floats, cudaStream_t s) {
  check_lut_view(w, "lut_linear_backward_weight");
  const bool b16 = native_bf16(dout) && native_bf16(inp);
  PRIMAL_CHECK(N > 0 && (b16 || (dout.f32 && inp.f32)) && (!g.dbias || dout.f32),
               "lut_linear_backward_weight: N {} or a null pointer", N);
  PRIMAL_CHECK(!g.votes || g.params, "lut_linear_backward_weight: votes without their parameters");
  const int64_t O = w.O, I = w.I, ldd = dout.ld > 0 ? dout.ld : O;  // (bf16 rows; fp32 rows are dense)
  PRIMAL_CHECK(ldd >= O, "lut_linear_backward_weight: row stride {} for {} rows", ldd, O);
  if (g.dbias) {
    if (g.dbias_slabs && g_math == TrainMath::Bf16) column_sums_add(g.dbias, dout.f32, N, O, g.dbias_slabs, s);
    else launch_dbias(dout.f32, N, O, g.dbias, s);
    stage("dbias");
  }
  if (!g.dscale && !g.votes) return;
  const int64_t R = lut_train_tile_rows(I), tile = R * I;
  PRIMAL_CHECK(scratch && scratch_floats >= std::min(R, O) * I,
               "lut_linear_backward_weight: a scratch of {} floats, one tile needs {}", scratch_floats,
               std::min(R, O) * I);
  // Chunks of whole tiles (the votes' column sums are per tile); the rest of the matrix in one
  // chunk when it fits, its last tile being partial.
  // Chunks of whole tiles, a multiple of 16 rows where the scratch holds that many (alignment, as
  // chunk_rows).
  const int64_t align = std::lcm(R, int64_t(16));
  const int64_t rows_max = scratch_floats / I >= align ? scratch_floats / I / align * align : (scratch_floats / tile) * R;
  // The bf16 mode writes the weight gradient as bf16 where the bf16 cast serves the matrix (half
  // the bytes through memory; PyTorch's autocast keeps weight gradients of bf16 weights in bf16).
  const bool dw_b16 = b16 && lut_grad_tiles_bf16_ok(w, g.votes, g.params);
  // The casts beside the GEMMs take the chunks below, with a buffer's capacity in place of the
  // scratch where it is smaller: the same chunks, so the same launches and sums, as without them
  // when the two are equal (the engine sizes both for the largest layer matrix).
  const int64_t aside_fl = g.aside ? std::min(scratch_floats, g.aside->capacity) : 0;
  if (dw_b16 && g.votes) {  // (dbias is done)
    LutWeightGrad g1 = g;
    g1.dbias = nullptr;
    if (dw_cast_fused(&w, &g1, 1, dout.bf16, ldd, inp.bf16, inp.ld > 0 ? inp.ld : I, N, s)) return;
  }
  if (dw_b16 && g.votes && aside_fl / I >= align) {
    const int64_t aside_max = aside_fl / I / align * align;
    CastAside& a = *g.aside;
    for (int64_t o0 = 0, n = 0; o0 < O; o0 += n) {
      n = O - o0 <= aside_fl / I ? O - o0 : aside_max;
      aside_round(
          a, s, [&](uint16_t* dW) { dw_gemm_bf16(blas, I, n, N, inp.bf16, dout.bf16 + o0, ldd, 0.0f, dW, s); },
          [&](uint16_t* dW) { lut_grad_tiles_bf16(w, dW, o0, n, g.dscale, g.votes, g.params, a.stream); });
    }
    lut_votes_done(w, *g.votes, *g.params, a.stream);
    return;
  }
  int64_t rows = 0;
  for (int64_t o0 = 0; o0 < O; o0 += rows) {
    rows = O - o0 <= scratch_floats / I ? O - o0 : rows_max;
    if (b16) {
      dw_gemm_bf16(blas, I, rows, N, inp.bf16, dout.bf16 + o0, ldd, 0.0f, scratch, s, dw_b16);
    } else {  // Column-major: dW^T (I x rows, ld I) = inp^T (I x N) dout[:, o0 .. o0+rows] (N x rows, ld O).
      sgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, I, rows, N, inp.f32, I, dout.f32 + o0, O, 0.0f, scratch, I, s);
      stage("dW gemm");
    }
    if (dw_b16) lut_grad_tiles_bf16(w, reinterpret_cast<uint16_t*>(scratch), o0, rows, g.dscale, g.votes, g.params, s);
    else lut_grad_tiles(w, scratch, o0, rows, g.dscale, g.votes, g.params, s);
    stage("vote cast");
  }
  if (g.votes) lut_votes_done(w, *g.votes, *g.params, s);
  stage("vote cast");
}

void to_bf16(uint16_t* dst, const float* src, int64_t n, cudaStream_t s) {
  PRIMAL_CHECK(n >= 0 && (n == 0 || (dst && src)), "to_bf16: {} values or a null pointer", n);
  if (n == 0) return;
  to_bf16_kernel<<<lut::blocks_for(n), lut::kThreads, 0, s>>>(reinterpret_cast<__nv_bfloat16*>(dst), src, n);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void to_bf16_rows(uint16_t* dst, int64_t ld_dst, const float* src, int64_t rows, int64_t cols, cudaStream_t s,
                  const float* bias, int64_t ld_src) {
  if (ld_src == 0) ld_src = cols;
  PRIMAL_CHECK(rows >= 0 && cols >= 0 && ld_dst >= cols && ld_src >= cols && (rows * cols == 0 || (dst && src)),
               "to_bf16_rows: ({}, {}) from rows {} apart into rows {} apart, or a null pointer", rows, cols, ld_src,
               ld_dst);
  if (rows * cols == 0) return;
  to_bf16_rows_kernel<<<lut::blocks_for(rows * cols), lut::kThreads, 0, s>>>(reinterpret_cast<__nv_bfloat16*>(dst),
                                                                             ld_dst, src, rows, cols, bias, ld_src);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void set_train_math(TrainMath m) { g_math = m; }
void set_fused_dequant(bool on) { g_fused_dequant = on; }
void set_stage_hook(StageHook hook, void* ctx) { g_hook = hook, g_hook_ctx = ctx; }
TrainMath train_math() { return g_math; }

void dense_linear_forward(Blas& blas, const float* W, int64_t O, int64_t I, const float* inp, int64_t N,
                          const float* bias, float* out, cudaStream_t s) {
  PRIMAL_CHECK(W && inp && out && N > 0, "dense_linear_forward: N {} or a null pointer", N);
  // Column-major: out^T (O x N, ld O) = W (O x I: the transpose of W^T, I x O, ld I) inp^T (I x N, ld I).
  sgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, O, N, I, W, I, inp, I, 0.0f, out, O, s);
  if (bias) {
    add_bias_kernel<<<lut::blocks_for(N * O), lut::kThreads, 0, s>>>(out, bias, N, O);
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
}

void dense_linear_backward_input(Blas& blas, const float* W, int64_t O, int64_t I, const float* dout, int64_t N,
                                 float* dinp, bool accumulate, cudaStream_t s) {
  PRIMAL_CHECK(W && dout && dinp && N > 0, "dense_linear_backward_input: N {} or a null pointer", N);
  // Column-major: dinp^T (I x N, ld I) = W^T (I x O, ld I) dout^T (O x N, ld O).
  sgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, O, W, I, dout, O, accumulate ? 1.0f : 0.0f, dinp, I, s);
}

void dense_linear_backward_weight(Blas& blas, int64_t O, int64_t I, const float* dout, const float* inp, int64_t N,
                                  float* dW, float* dbias, cudaStream_t s) {
  PRIMAL_CHECK(dout && inp && N > 0, "dense_linear_backward_weight: N {} or a null pointer", N);
  if (dbias) {
    launch_dbias(dout, N, O, dbias, s);
  }
  // Column-major: dW^T (I x O, ld I) += inp^T (I x N) dout (N x O).
  if (dW) sgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, inp, I, dout, O, 1.0f, dW, I, s);
}

}  // namespace primal::cuda
