// CUDA error checking: every runtime call and every launch is checked; failures become
// primal::Error with the call site, so the CLI reports them like any other error.
#pragma once
#include <cuda_runtime.h>

#include "core/error.h"

#define PRIMAL_CUDA_CHECK(call)                                                                    \
  do {                                                                                             \
    cudaError_t err_ = (call);                                                                     \
    if (err_ != cudaSuccess)                                                                       \
      ::primal::fail("CUDA error {} at {}:{}: {}", cudaGetErrorName(err_), __FILE__, __LINE__,     \
                     cudaGetErrorString(err_));                                                    \
  } while (0)

// After a kernel launch: catches bad launch configurations immediately.
#define PRIMAL_CUDA_CHECK_LAUNCH() PRIMAL_CUDA_CHECK(cudaGetLastError())
