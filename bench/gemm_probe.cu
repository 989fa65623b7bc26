// GEMM probe: for the bf16 trainer's GEMM shapes (qwen2.5-1.5b, 8 x 1024 tokens), the time of
// cublasGemmEx's default choice (what lut_train.cu calls) against every algorithm cuBLASLt's
// heuristic offers, with an fp32 and a bf16 result. A measurement tool, not part of primal:
//   nvcc -O2 -std=c++17 -arch=sm_90 bench/gemm_probe.cu -lcublasLt -lcublas -o gemm_probe && ./gemm_probe
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                  \
  do {                                                                                         \
    auto e_ = (x);                                                                             \
    if (int(e_) != 0) { std::fprintf(stderr, "%s:%d %s -> %d\n", __FILE__, __LINE__, #x, int(e_)); std::exit(1); } \
  } while (0)

struct Shape {
  const char* name;
  cublasOperation_t ta, tb;
  int m, n, k;
};

// Column-major C (m x n) = op(A) op(B), as lut_train.cu calls them (N = 8192 tokens).
const Shape kShapes[] = {
    {"fwd qkv (grouped)", CUBLAS_OP_T, CUBLAS_OP_N, 2048, 8192, 1536},
    {"fwd o", CUBLAS_OP_T, CUBLAS_OP_N, 1536, 8192, 1536},
    {"fwd gate|up", CUBLAS_OP_T, CUBLAS_OP_N, 8960, 8192, 1536},
    {"fwd down", CUBLAS_OP_T, CUBLAS_OP_N, 1536, 8192, 8960},
    {"fwd head tile", CUBLAS_OP_T, CUBLAS_OP_N, 18992, 2048, 1536},
    {"dinp down", CUBLAS_OP_N, CUBLAS_OP_N, 8960, 8192, 1536},
    {"dinp gate+up", CUBLAS_OP_N, CUBLAS_OP_N, 1536, 8192, 17920},
    {"dinp o", CUBLAS_OP_N, CUBLAS_OP_N, 1536, 8192, 1536},
    {"dinp qkv", CUBLAS_OP_N, CUBLAS_OP_N, 1536, 8192, 2048},
    {"dinp head tile", CUBLAS_OP_N, CUBLAS_OP_N, 1536, 2048, 18992},
    {"dW qkv", CUBLAS_OP_N, CUBLAS_OP_T, 1536, 2048, 8192},
    {"dW o", CUBLAS_OP_N, CUBLAS_OP_T, 1536, 1536, 8192},
    {"dW gate|up", CUBLAS_OP_N, CUBLAS_OP_T, 1536, 8960, 8192},
    {"dW down", CUBLAS_OP_N, CUBLAS_OP_T, 8960, 1536, 8192},
    {"dW head chunk", CUBLAS_OP_N, CUBLAS_OP_T, 1536, 18992, 2048},
};

template <class F>
float time_us(F f, cudaStream_t s, int reps = 20) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) f();
  CK(cudaEventRecord(a, s));
  for (int i = 0; i < reps; ++i) f();
  CK(cudaEventRecord(b, s));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms * 1000.0f / reps;
}

int main() {
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cublasHandle_t h;
  CK(cublasCreate(&h));
  CK(cublasSetStream(h, s));
  cublasLtHandle_t lt;
  CK(cublasLtCreate(&lt));
  const size_t ws_bytes = 32u << 20;
  void* ws;
  CK(cudaMalloc(&ws, ws_bytes));
  CK(cublasSetWorkspace(h, ws, ws_bytes));
  const size_t maxe = size_t(18992) * 8192;  // largest operand or result
  void *A, *B, *C;
  CK(cudaMalloc(&A, maxe * 2));
  CK(cudaMalloc(&B, maxe * 2));
  CK(cudaMalloc(&C, maxe * 4));
  CK(cudaMemset(A, 0x3c, maxe * 2));  // bf16 ~0.0115: finite products
  CK(cudaMemset(B, 0x3c, maxe * 2));
  std::printf("%-18s %-4s %9s %9s %9s %5s %s\n", "shape", "out", "ex_us", "lt0_us", "best_us", "algo", "tflops ex/best");
  for (const Shape& sh : kShapes) {
    const double flop = 2.0 * sh.m * sh.n * double(sh.k);
    const int lda = sh.ta == CUBLAS_OP_N ? sh.m : sh.k, ldb = sh.tb == CUBLAS_OP_N ? sh.k : sh.n;
    for (int ob = 0; ob < 2; ++ob) {
      const cudaDataType_t ct = ob ? CUDA_R_16BF : CUDA_R_32F;
      const float alpha = 1, beta = 0;
      const float ex = time_us(
          [&] {
            CK(cublasGemmEx(h, sh.ta, sh.tb, sh.m, sh.n, sh.k, &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta,
                            C, ct, sh.m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
          },
          s);
      cublasLtMatmulDesc_t op;
      CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &sh.ta, sizeof(sh.ta)));
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &sh.tb, sizeof(sh.tb)));
      cublasLtMatrixLayout_t la, lb, lc;
      CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, sh.ta == CUBLAS_OP_N ? sh.m : sh.k,
                                    sh.ta == CUBLAS_OP_N ? sh.k : sh.m, lda));
      CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, sh.tb == CUBLAS_OP_N ? sh.k : sh.n,
                                    sh.tb == CUBLAS_OP_N ? sh.n : sh.k, ldb));
      CK(cublasLtMatrixLayoutCreate(&lc, ct, sh.m, sh.n, sh.m));
      cublasLtMatmulPreference_t pref;
      CK(cublasLtMatmulPreferenceCreate(&pref));
      CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                              sizeof(ws_bytes)));
      cublasLtMatmulHeuristicResult_t res[32];
      int nres = 0;
      CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 32, res, &nres));
      float lt0 = -1, best = 1e30f;
      int besti = -1;
      for (int i = 0; i < nres; ++i) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        bool ok = true;
        const float t = time_us(
            [&] {
              if (cublasLtMatmul(lt, op, &alpha, A, la, B, lb, &beta, C, lc, C, lc, &res[i].algo, ws, ws_bytes, s) !=
                  CUBLAS_STATUS_SUCCESS)
                ok = false;
            },
            s, 10);
        if (!ok) continue;
        if (i == 0) lt0 = t;
        if (t < best) best = t, besti = i;
      }
      std::printf("%-18s %-4s %9.1f %9.1f %9.1f %5d %6.0f %6.0f  (%d algos)\n", sh.name, ob ? "bf16" : "fp32", ex, lt0,
                  best, besti, flop / ex * 1e-6, flop / best * 1e-6, nres);
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
  }
  return 0;
}
