#include <cuda_fp16.h>

#include <algorithm>

#include "ops/cuda/check.cuh"
#include "ops/cuda/dequant.h"
#include "ops/cuda/formats.cuh"
#include "ops/cuda/launch.cuh"

namespace primal::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t work) { return int(std::min<int64_t>((work + kThreads - 1) / kThreads, 16 * int64_t(sm_count()))); }

// One thread per 32-element unit: decode, then 4 x 16-byte stores of fp16.
template <DType T>
__global__ void dequant_f16_kernel(const MatrixView w, int64_t r0, int64_t n, __half* out) {
  const int64_t units = w.cols / 32, total = n * units;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / units, u = k % units;
    float y[32];
    fmt::Unit<T>::decode(fmt::Unit<T>::load(fmt::row_ptr(w, r0 + r), u), y);
    uint4* dst = reinterpret_cast<uint4*>(out + r * w.cols + u * 32);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      uint4 v;
      uint32_t* p = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const __half2 h = __floats2half2_rn(y[8 * c + 2 * i], y[8 * c + 2 * i + 1]);
        p[i] = *reinterpret_cast<const uint32_t*>(&h);
      }
      dst[c] = v;
    }
  }
}

template <DType T>
__global__ void embed_kernel(const MatrixView w, const int32_t* tokens, int64_t T_, float* out, uint64_t* reset_key) {
  pdl_trigger();
  pdl_wait();
  if (reset_key && blockIdx.x == 0 && threadIdx.x == 0) *reset_key = ~uint64_t(0);
  const int64_t units = w.cols / 32, total = T_ * units;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = k / units, u = k % units;
    float y[32];
    fmt::Unit<T>::decode(fmt::Unit<T>::load(fmt::row_ptr(w, tokens[t]), u), y);
    float4* dst = reinterpret_cast<float4*>(out + t * w.cols + u * 32);
#pragma unroll
    for (int c = 0; c < 8; ++c) dst[c] = make_float4(y[4 * c], y[4 * c + 1], y[4 * c + 2], y[4 * c + 3]);
  }
}

__global__ void f32_to_f16_kernel(const float* in, __half* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2half_rn(in[i]);
}

}  // namespace

void dequant_rows_f16(const MatrixView& w, int64_t r0, int64_t n, void* out, cudaStream_t s) {
  PRIMAL_CHECK(r0 >= 0 && n >= 0 && r0 + n <= w.rows && w.cols % 32 == 0, "dequant: rows {}..{} of {} x {}", r0,
               r0 + n, w.rows, w.cols);
  if (n == 0) return;
  const int grid = grid_for(n * (w.cols / 32));
#define PRIMAL_LAUNCH(T) dequant_f16_kernel<T><<<grid, kThreads, 0, s>>>(w, r0, n, static_cast<__half*>(out))
  PRIMAL_FORMAT_SWITCH(w.type, PRIMAL_LAUNCH);
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void embed_rows(const MatrixView& w, const int32_t* tokens, int64_t T, float* out, cudaStream_t s,
                uint64_t* reset_key) {
  PRIMAL_CHECK(T >= 0 && w.cols % 32 == 0, "embed: {} tokens, width {}", T, w.cols);
  if (T == 0) return;
  const int grid = grid_for(T * (w.cols / 32));
#define PRIMAL_LAUNCH(F) launch_kernel(embed_kernel<F>, dim3(grid), dim3(kThreads), 0, s, w, tokens, T, out, reset_key)
  PRIMAL_FORMAT_SWITCH(w.type, PRIMAL_LAUNCH);
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void f32_to_f16(const float* in, void* out, int64_t n, cudaStream_t s) {
  if (n <= 0) return;
  f32_to_f16_kernel<<<grid_for(n), kThreads, 0, s>>>(in, static_cast<__half*>(out), n);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
