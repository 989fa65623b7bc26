// GEMV instantiations for the float formats.
#include "ops/cuda/gemv.cuh"

namespace primal::cuda::detail {

bool gemv_float(DType t, const GemvLaunch& a, cudaStream_t s) {
  switch (t) {
    case DType::F32: launch_gemv<DType::F32>(a, s); return true;
    case DType::F16: launch_gemv<DType::F16>(a, s); return true;
    case DType::BF16: launch_gemv<DType::BF16>(a, s); return true;
    default: return false;
  }
}

}  // namespace primal::cuda::detail
