#include <vector>

#include "ops/cuda/check.cuh"
#include "ops/cuda/device.h"

namespace primal::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp p{};
  PRIMAL_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

// y = a*x + y, one element per thread.
__global__ void saxpy_kernel(int n, float a, const float* __restrict__ x, float* __restrict__ y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

void saxpy_host(int n, float a, const float* x, float* y) {
  float *dx = nullptr, *dy = nullptr;
  PRIMAL_CUDA_CHECK(cudaMalloc(&dx, sizeof(float) * n));
  PRIMAL_CUDA_CHECK(cudaMalloc(&dy, sizeof(float) * n));
  PRIMAL_CUDA_CHECK(cudaMemcpy(dx, x, sizeof(float) * n, cudaMemcpyHostToDevice));
  PRIMAL_CUDA_CHECK(cudaMemcpy(dy, y, sizeof(float) * n, cudaMemcpyHostToDevice));
  saxpy_kernel<<<(n + 255) / 256, 256>>>(n, a, dx, dy);
  PRIMAL_CUDA_CHECK_LAUNCH();
  PRIMAL_CUDA_CHECK(cudaMemcpy(y, dy, sizeof(float) * n, cudaMemcpyDeviceToHost));
  PRIMAL_CUDA_CHECK(cudaFree(dx));
  PRIMAL_CUDA_CHECK(cudaFree(dy));
}

}  // namespace primal::cuda
