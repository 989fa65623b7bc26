// Kernel launches with programmatic dependent launch (PDL, sm_90): a kernel launched this way
// may start while its predecessor on the stream is still running; it calls pdl_wait() before
// touching anything the predecessor writes (and writes nothing before it), and pdl_trigger()
// early so that its own successor can start. Work that needs no predecessor data (loading
// weights) runs before the wait, overlapping the predecessor's tail: in a decode step of ~200
// small dependent kernels that hides most launch latency. Without the launch attribute (eager
// launches, other streams) both instructions are no-ops.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "ops/cuda/check.cuh"
#include "ops/cuda/launch.h"

namespace primal::cuda {

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

template <class... KArgs, class... Args>
void launch_kernel(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  if (pdl_enabled()) {
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  PRIMAL_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace primal::cuda
