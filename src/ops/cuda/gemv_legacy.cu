// GEMV instantiations for the 32-element legacy formats.
#include "ops/cuda/gemv.cuh"

namespace primal::cuda::detail {

bool gemv_legacy(DType t, const GemvLaunch& a, cudaStream_t s) {
  switch (t) {
    case DType::Q4_0: launch_gemv<DType::Q4_0>(a, s); return true;
    case DType::Q4_1: launch_gemv<DType::Q4_1>(a, s); return true;
    case DType::Q5_0: launch_gemv<DType::Q5_0>(a, s); return true;
    case DType::Q5_1: launch_gemv<DType::Q5_1>(a, s); return true;
    case DType::Q8_0: launch_gemv<DType::Q8_0>(a, s); return true;
    case DType::IQ4_NL: launch_gemv<DType::IQ4_NL>(a, s); return true;
    default: return false;
  }
}

}  // namespace primal::cuda::detail
