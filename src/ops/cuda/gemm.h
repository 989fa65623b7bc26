// Dense GEMM through cuBLAS for prefill: fp16 operands on the tensor cores, fp32 accumulation and
// output.   c[t, o] = sum_i a[t, i] * w[o, i] + beta * c[t, o]
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "ops/cuda/buffer.h"

namespace primal::cuda {

struct GemmTuner;  // gemm_tune.h
struct GemmTunerDeleter {
  void operator()(GemmTuner* t) const;
};

class Blas {
 public:
  Blas();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  void* handle() const { return h_; }
  void* workspace() const { return workspace_.data(); }
  size_t workspace_bytes() const { return workspace_.size(); }
  // The bf16 trainer's per-shape algorithm choice (gemm_tune.h): off (cublasGemmEx's choice)
  // until turned on; verbose prints each decision; a cuBLASLt algorithm is kept when it takes at
  // most `margin` times cublasGemmEx's time (a huge margin: always the fastest of them, for tests).
  void set_tuning(bool on, bool verbose = false, float margin = 0.97f);
  GemmTuner* tuner() const { return tuner_.get(); }

 private:
  void* h_ = nullptr;
  DeviceBuffer workspace_;
  std::unique_ptr<GemmTuner, GemmTunerDeleter> tuner_;
};

// a: (T, I) fp16 row-major; w: (O, I) fp16 row-major; c: (T, ldc) fp32 row-major, columns 0..O-1
// written (beta = 0) or accumulated (beta = 1).
void gemm_f16(Blas& blas, const void* a, const void* w, float* c, int64_t T, int64_t O, int64_t I, int64_t ldc,
              float beta, cudaStream_t s);

}  // namespace primal::cuda
