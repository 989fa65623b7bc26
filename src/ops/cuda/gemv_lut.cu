// GEMV instantiations for primal's LUT formats (grid lookups: formats.cuh).
#include "ops/cuda/gemv.cuh"

namespace primal::cuda::detail {

bool gemv_lut(DType t, const GemvLaunch& a, cudaStream_t s) {
  switch (t) {
    case DType::LUT2: launch_gemv<DType::LUT2>(a, s); return true;
    case DType::LUT3: launch_gemv<DType::LUT3>(a, s); return true;
    case DType::LUT4: launch_gemv<DType::LUT4>(a, s); return true;
    case DType::LUT5: launch_gemv<DType::LUT5>(a, s); return true;
    case DType::LUT6: launch_gemv<DType::LUT6>(a, s); return true;
    case DType::LUT8: launch_gemv<DType::LUT8>(a, s); return true;
    case DType::LUT16: launch_gemv<DType::LUT16>(a, s); return true;
    default: return false;
  }
}

}  // namespace primal::cuda::detail
