// GEMV instantiations for the K-quants (decoded per 32-element group, then dotted).
#include "ops/cuda/gemv.cuh"

namespace primal::cuda::detail {

bool gemv_kquants(DType t, const GemvLaunch& a, cudaStream_t s) {
  switch (t) {
    case DType::Q2_K: launch_gemv<DType::Q2_K>(a, s); return true;
    case DType::Q3_K: launch_gemv<DType::Q3_K>(a, s); return true;
    case DType::Q4_K: launch_gemv<DType::Q4_K>(a, s); return true;
    case DType::Q5_K: launch_gemv<DType::Q5_K>(a, s); return true;
    case DType::Q6_K: launch_gemv<DType::Q6_K>(a, s); return true;
    default: return false;
  }
}

}  // namespace primal::cuda::detail
