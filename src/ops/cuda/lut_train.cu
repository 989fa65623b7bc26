// The LUT linear layer of the trainer on the GPU (lut_train.h): dequantization into a scratch,
// cuBLAS SGEMM, the bias, dbias, and the weight gradient's first stage (votes.cu has the second).
#include <cublas_v2.h>

#include <algorithm>

#include "ops/cuda/check.cuh"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lut_train.cuh"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/votes.h"
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

void check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) fail("cuBLAS {} failed: {}", what, cublasGetStatusString(st));
}

// Column-major C (m x n, ldc) = op(A) (m x k) op(B) (k x n) + beta C in fp32. The pedantic
// compute type keeps cuBLAS from TF32 or BF16x9 emulation, whatever the handle's math mode or
// the environment says: the products are fp32 products, as the CPU's.
void sgemm(Blas& blas, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, cudaStream_t s) {
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  PRIMAL_CHECK(m <= kMax && n <= kMax && k <= kMax && lda <= kMax && ldb <= kMax && ldc <= kMax,
               "sgemm: dimensions {} {} {} exceed cuBLAS's int", m, n, k);
  cublasHandle_t h = static_cast<cublasHandle_t>(blas.handle());
  check(cublasSetStream(h, s), "set stream");
  const float alpha = 1.0f;
  const cublasComputeType_t ct = g_math == TrainMath::Bf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F_PEDANTIC;
  check(cublasGemmEx(h, ta, tb, int(m), int(n), int(k), &alpha, A, CUDA_R_32F, int(lda), B, CUDA_R_32F, int(ldb), &beta,
                     C, CUDA_R_32F, int(ldc), ct, CUBLAS_GEMM_DEFAULT),
        "sgemm");
}

// dst[r, i] = scale[o0 + r, i / G] * grid[idx[o0 + r, i]], one thread per value (coalesced
// stores; the index bytes of a warp are a few consecutive bytes). __fmul_rn: the one rounding of
// the CPU's fp32 product.
template <int B>
__global__ void dequant_rows_kernel(const LutTrainView w, int64_t o0, int64_t n, int64_t row_bytes, float* dst) {
  const int64_t total = n * w.I, groups = w.I / w.G;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / w.I, i = k - r * w.I, o = o0 + r;
    const uint32_t q = lut::get_index<B>(w.idx + o * row_bytes, i);
    dst[k] = __fmul_rn(w.scale[o * groups + i / w.G], __ldg(w.grid + q));
  }
}

// out[t, o] += bias[o] (out: (N, O)), after the GEMM as on the CPU.
__global__ void add_bias_kernel(float* out, const float* bias, int64_t N, int64_t O) {
  const int64_t total = N * O;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x)
    out[k] = __fadd_rn(out[k], bias[k % O]);
}

// dbias[o] += float(sum_t dout[t, o]) with the sum in fp64 in token order, as linear.cpp: one
// thread per row o (a warp reads 32 consecutive o of one token: coalesced).
__global__ void dbias_kernel(const float* dout, int64_t N, int64_t O, float* dbias) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < O; o += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t t = 0; t < N; ++t) s = __dadd_rn(s, double(dout[t * O + o]));
    dbias[o] = __fadd_rn(dbias[o], float(s));
  }
}

// Rows of W per chunk of the forward / dinp scratch.
int64_t chunk_rows(const LutTrainView& w, int64_t scratch_floats, const char* what) {
  PRIMAL_CHECK(scratch_floats >= w.I, "{}: a scratch of {} floats cannot hold one row of {}", what, scratch_floats,
               w.I);
  return std::min(w.O, scratch_floats / w.I);
}

}  // namespace

void lut_dequantize_rows(const LutTrainView& w, int64_t o0, int64_t n, float* dst, cudaStream_t s) {
  check_lut_view(w, "lut_dequantize_rows");
  PRIMAL_CHECK(o0 >= 0 && n >= 0 && o0 + n <= w.O && dst, "lut_dequantize_rows: rows {}..{} of {}", o0, o0 + n, w.O);
  if (n == 0) return;
  const int blocks = lut::blocks_for(n * w.I);
  const int64_t rb = w.row_bytes();
#define PRIMAL_LAUNCH(B) dequant_rows_kernel<B><<<blocks, lut::kThreads, 0, s>>>(w, o0, n, rb, dst)
  PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void lut_linear_forward(Blas& blas, const LutTrainView& w, const float* inp, int64_t N, const float* bias, float* out,
                        float* scratch, int64_t scratch_floats, cudaStream_t s) {
  check_lut_view(w, "lut_linear_forward");
  PRIMAL_CHECK(N > 0 && inp && out && scratch, "lut_linear_forward: N {} or a null pointer", N);
  const int64_t O = w.O, I = w.I, rows_max = chunk_rows(w, scratch_floats, "lut_linear_forward");
  for (int64_t o0 = 0; o0 < O; o0 += rows_max) {
    const int64_t rows = std::min(rows_max, O - o0);
    lut_dequantize_rows(w, o0, rows, scratch, s);
    // Column-major: out^T[o0 .. o0+rows, :] (rows x N, ld O) = Wc (I x rows)^T inp^T (I x N).
    sgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, N, I, scratch, I, inp, I, 0.0f, out + o0, O, s);
  }
  if (bias) {
    add_bias_kernel<<<lut::blocks_for(N * O), lut::kThreads, 0, s>>>(out, bias, N, O);
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
}

void lut_linear_backward_input(Blas& blas, const LutTrainView& w, const float* dout, int64_t N, float* dinp,
                               bool accumulate, float* scratch, int64_t scratch_floats, cudaStream_t s) {
  check_lut_view(w, "lut_linear_backward_input");
  PRIMAL_CHECK(N > 0 && dout && dinp && scratch, "lut_linear_backward_input: N {} or a null pointer", N);
  const int64_t O = w.O, I = w.I, rows_max = chunk_rows(w, scratch_floats, "lut_linear_backward_input");
  for (int64_t o0 = 0; o0 < O; o0 += rows_max) {
    const int64_t rows = std::min(rows_max, O - o0);
    lut_dequantize_rows(w, o0, rows, scratch, s);
    // Column-major: dinp^T (I x N) (+)= Wc (I x rows) dout^T[o0 .. o0+rows, :] (rows x N, ld O);
    // the chunks are summed in row order, as the CPU sums its tiles.
    const float beta = (accumulate || o0 > 0) ? 1.0f : 0.0f;
    sgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, I, N, rows, scratch, I, dout + o0, O, beta, dinp, I, s);
  }
}

void lut_linear_backward_weight(Blas& blas, const LutTrainView& w, const float* dout, const float* inp, int64_t N,
                                const LutWeightGrad& g, float* scratch, int64_t scratch_floats, cudaStream_t s) {
  check_lut_view(w, "lut_linear_backward_weight");
  PRIMAL_CHECK(N > 0 && dout && inp, "lut_linear_backward_weight: N {} or a null pointer", N);
  PRIMAL_CHECK(!g.votes || g.params, "lut_linear_backward_weight: votes without their parameters");
  const int64_t O = w.O, I = w.I;
  if (g.dbias) {
    dbias_kernel<<<int((O + lut::kThreads - 1) / lut::kThreads), lut::kThreads, 0, s>>>(dout, N, O, g.dbias);
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
  if (!g.dscale && !g.votes) return;
  const int64_t R = lut_train_tile_rows(I), tile = R * I;
  PRIMAL_CHECK(scratch && scratch_floats >= std::min(R, O) * I,
               "lut_linear_backward_weight: a scratch of {} floats, one tile needs {}", scratch_floats,
               std::min(R, O) * I);
  // Chunks of whole tiles (the votes' column sums are per tile); the rest of the matrix in one
  // chunk when it fits, its last tile being partial.
  const int64_t rows_max = (scratch_floats / tile) * R;
  int64_t rows = 0;
  for (int64_t o0 = 0; o0 < O; o0 += rows) {
    rows = O - o0 <= scratch_floats / I ? O - o0 : rows_max;
    // Column-major: dW^T (I x rows, ld I) = inp^T (I x N) dout[:, o0 .. o0+rows] (N x rows, ld O).
    sgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, I, rows, N, inp, I, dout + o0, O, 0.0f, scratch, I, s);
    lut_grad_tiles(w, scratch, o0, rows, g.dscale, g.votes, g.params, s);
  }
  if (g.votes) lut_votes_done(w, *g.votes, *g.params, s);
}

void set_train_math(TrainMath m) { g_math = m; }
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
    dbias_kernel<<<int((O + lut::kThreads - 1) / lut::kThreads), lut::kThreads, 0, s>>>(dout, N, O, dbias);
    PRIMAL_CUDA_CHECK_LAUNCH();
  }
  // Column-major: dW^T (I x O, ld I) += inp^T (I x N) dout (N x O).
  if (dW) sgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, I, O, N, inp, I, dout, O, 1.0f, dW, I, s);
}

}  // namespace primal::cuda
