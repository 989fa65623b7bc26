// Dense GEMM through cuBLAS for prefill: fp16 operands on the tensor cores, fp32 accumulation and
// output.   c[t, o] = sum_i a[t, i] * w[o, i] + beta * c[t, o]
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"

namespace primal::cuda {

class Blas {
 public:
  Blas();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  void* handle() const { return h_; }

 private:
  void* h_ = nullptr;
  DeviceBuffer workspace_;
};

// a: (T, I) fp16 row-major; w: (O, I) fp16 row-major; c: (T, ldc) fp32 row-major, columns 0..O-1
// written (beta = 0) or accumulated (beta = 1).
void gemm_f16(Blas& blas, const void* a, const void* w, float* c, int64_t T, int64_t O, int64_t I, int64_t ldc,
              float beta, cudaStream_t s);

}  // namespace primal::cuda
