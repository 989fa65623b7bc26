// The forward pass on the GPU: a Backend (infer/backend.h) whose weights, KV cache (fp16) and
// activations live in device memory. Prefill runs each matrix product as dequantize-to-fp16 +
// cuBLAS (tensor cores) and attention as a streaming-softmax kernel; decode (one token) runs the
// GEMV kernels and split-K attention captured once as a CUDA graph and replayed per token, with
// no host synchronization between layers. Sampling candidates are selected on the device.
#pragma once
#include <cstdint>
#include <memory>

#include "infer/backend.h"

namespace primal::cuda {

struct CudaOptions {
  int64_t max_batch = 512;  // most tokens per prefill pass (longer inputs go in several)
  bool use_graph = true;    // false: decode launches kernel by kernel (for comparisons)
  bool use_pdl = true;      // decode kernels start during their predecessors (programmatic launch)
};

// `w` must outlive the backend (its host copy is read for shapes and id checks only). Throws
// when there is no GPU, a weight type has no GPU kernels, or the device memory does not suffice.
std::unique_ptr<Backend> make_cuda_backend(const LlamaWeights& w, int64_t n_ctx, const CudaOptions& o = {});

}  // namespace primal::cuda
