#include <cublas_v2.h>

#include "ops/cuda/check.cuh"
#include "ops/cuda/gemm.h"

namespace primal::cuda {
namespace {

void check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) fail("cuBLAS {} failed: {}", what, cublasGetStatusString(st));
}

constexpr size_t kWorkspace = 32u << 20;  // a fixed workspace keeps cuBLAS off cudaMalloc

}  // namespace

Blas::Blas() : workspace_(kWorkspace) {
  cublasHandle_t h = nullptr;
  check(cublasCreate(&h), "create");
  h_ = h;
  check(cublasSetWorkspace(h, workspace_.data(), kWorkspace), "set workspace");
}

Blas::~Blas() {
  if (h_) cublasDestroy(static_cast<cublasHandle_t>(h_));
}

void gemm_f16(Blas& blas, const void* a, const void* w, float* c, int64_t T, int64_t O, int64_t I, int64_t ldc,
              float beta, cudaStream_t s) {
  PRIMAL_CHECK(T > 0 && O > 0 && I > 0 && ldc >= O, "gemm: T {} O {} I {} ldc {}", T, O, I, ldc);
  cublasHandle_t h = static_cast<cublasHandle_t>(blas.handle());
  check(cublasSetStream(h, s), "set stream");
  const float alpha = 1.0f;
  // Column-major view: C^T (O x T, ld ldc) = W (I x O col-major, transposed) * A^T (I x T col-major).
  check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(O), int(T), int(I), &alpha, w, CUDA_R_16F, int(I), a,
                     CUDA_R_16F, int(I), &beta, c, CUDA_R_32F, int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "gemm");
}

}  // namespace primal::cuda
