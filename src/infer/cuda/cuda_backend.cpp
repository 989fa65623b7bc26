#include "infer/cuda/cuda_backend.h"

#include "core/error.h"
#include "infer/cuda/cuda_forward.h"
#include "ops/cuda/device.h"

namespace primal::cuda {

std::unique_ptr<Backend> make_cuda_backend(const LlamaWeights& w, int64_t n_ctx, const CudaOptions& o) {
  if (device_count() == 0) fail("no CUDA GPU is available (use --device cpu)");
  return std::make_unique<CudaForward>(w, n_ctx, o);
}

}  // namespace primal::cuda
