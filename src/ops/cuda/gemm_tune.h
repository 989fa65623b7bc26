// Per-shape algorithm choice for the bf16 trainer's GEMMs, OFF by default (PRIMAL_GEMM_TUNE=1 or
// =verbose turns it on in the engine). cublasGemmEx runs the first algorithm cuBLASLt's heuristic
// ranks for a shape; timed alone on an H100, another of its top eight is 6-10% faster for four of
// qwen2.5-1.5b's layer GEMMs. With tuning on (Blas::set_tuning), the first beta = 0 call of a shape
// times cublasGemmEx and each heuristic algorithm on the call's own operands, writing the call's
// own result (which nothing may read before the call returns), and keeps the fastest when it beats
// cublasGemmEx by 3% or more; later calls of that shape, with any beta, run the kept choice, so every
// call of a shape sums in one order. Accumulating calls (beta != 0) never time anything: their
// result holds data. Neither does a call on a capturing stream (a CUDA graph: the engine runs a
// configuration's first step eagerly when tuning is on). Only bf16 operands with fp32 accumulation
// are tuned; the fp32 mode's pedantic GEMMs, whose bits the conformance tests hold, never are.
//
// Why off: a GEMM timed alone is not that GEMM inside the step, beside the vote casts on their own
// stream. On the H100 (bench/RESULTS.md, twelfth round) tuning made qwen2.5-1.5b's step 0.1-0.9%
// faster but seed-500m's 2% slower (three shapes kept a cuBLASLt algorithm, each faster alone). And
// the choice is timed, so two processes can keep different algorithms for a shape whose candidates
// run within noise of the margin (results then differ by rounding).
#pragma once
#include <cublas_v2.h>

#include <cstdint>

namespace primal::cuda {

class Blas;

// Column-major C (m x n, ldc) = op(A) (m x k) op(B) (k x n) + beta C, alpha 1: cublasGemmEx's
// arguments.
struct GemmCall {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  cudaDataType_t ab = CUDA_R_16BF, c = CUDA_R_32F;
  cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
  const void* A = nullptr;
  const void* B = nullptr;
  void* C = nullptr;
  float beta = 0.0f;
};

// Runs the call through the tuned choice when tuning applies to it and that choice is a cuBLASLt
// algorithm (true); false: the caller runs cublasGemmEx (tuning off, a shape not tuned, not a bf16
// call, or cublasGemmEx itself kept), and C then holds nothing it may rely on for beta = 0.
bool gemm_tuned(Blas& blas, const GemmCall& g, cudaStream_t s);
// The trainer's GEMM (lut_train.cu): the tuned choice where gemm_tuned takes the call, else
// cublasGemmEx with its default algorithm; throws Error naming `what` when cuBLAS fails.
void gemm_run(Blas& blas, const GemmCall& g, cudaStream_t s, const char* what);

struct GemmTuneStats {
  int64_t shapes = 0;    // shapes decided
  int64_t lt = 0;        // of them, decided for a cuBLASLt algorithm over cublasGemmEx
  int64_t lt_calls = 0;  // calls run by a kept cuBLASLt algorithm
};
GemmTuneStats gemm_tune_stats(const Blas& blas);

}  // namespace primal::cuda
