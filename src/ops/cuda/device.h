// Device discovery, usable from host code compiled without nvcc.
#pragma once
#include <string>

namespace primal::cuda {

int device_count();           // 0 when there is no usable GPU (never throws)
std::string device_name(int device);

// y[i] = a * x[i] + y[i] on the GPU for n floats of host memory; a smoke test of the toolchain.
void saxpy_host(int n, float a, const float* x, float* y);

}  // namespace primal::cuda
