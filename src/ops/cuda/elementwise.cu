#include <cuda_fp16.h>

#include <algorithm>

#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/launch.cuh"

namespace primal::cuda {
namespace {

__global__ void rmsnorm_f16_kernel(const float* x, const float* w, int64_t C, float eps, __half* out) {
  __shared__ double scratch[32];
  const float* xr = x + blockIdx.x * C;
  double ss = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += double(xr[c]) * double(xr[c]);
  const float scale = rms_scale(block_sum(ss, scratch), C, eps);
  __half* o = out + blockIdx.x * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) o[c] = __float2half_rn(__fmul_rn(__fmul_rn(xr[c], scale), w[c]));
}

__global__ void swiglu_f16_kernel(const float* gu, int64_t T, int64_t F, __half* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < T * F; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / F, f = i % F;
    const float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
    out[i] = __float2half_rn(g / (1.0f + expf(-g)) * u);
  }
}

__global__ void swiglu_f32_kernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// One block per token; threads sweep the rotation pairs of every q and k head, then v.
__global__ void rope_qkv_kernel(const RopeQkvParams p) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.x, Q = p.NH * p.HS, KV = p.KVH * p.HS, W = Q + 2 * KV, half = p.n_rot / 2;
  const int64_t pos = int64_t(*p.pos0) + t;
  float* row = p.qkv + t * W;
  if (p.bias) {
    for (int64_t i = threadIdx.x; i < W; i += blockDim.x) row[i] += p.bias[i];
    __syncthreads();
  }
  const int64_t step = p.neox ? 1 : 2, other = p.neox ? half : 1;
  const float2* cs = static_cast<const float2*>(p.cos_sin) + pos * half;
  for (int64_t k = threadIdx.x; k < (p.NH + p.KVH) * half; k += blockDim.x) {
    const int64_t h = k / half, i = k % half;
    const float2 r = cs[i];
    float* v = row + h * p.HS + i * step;  // k heads follow the q heads in the row
    const float a = v[0], b = v[other];
    v[0] = __fsub_rn(__fmul_rn(a, r.x), __fmul_rn(b, r.y));
    v[other] = __fadd_rn(__fmul_rn(a, r.y), __fmul_rn(b, r.x));
  }
  __syncthreads();
  __half* kc = static_cast<__half*>(p.k_cache) + pos * KV;
  __half* vc = static_cast<__half*>(p.v_cache) + pos * KV;
  for (int64_t i = threadIdx.x; i < KV; i += blockDim.x) {
    kc[i] = __float2half_rn(row[Q + i]);
    vc[i] = __float2half_rn(row[Q + KV + i]);
  }
}

__global__ void rope_table_kernel(const double* inv_freq, int64_t half, int64_t n_pos, float2* out) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n_pos * half; k += int64_t(gridDim.x) * blockDim.x) {
    const double ang = double(k / half) * inv_freq[k % half];
    out[k] = make_float2(float(cos(ang)), float(sin(ang)));
  }
}

}  // namespace

void rmsnorm_f16(const float* x, const float* w, int64_t T, int64_t C, float eps, void* out, cudaStream_t s) {
  if (T <= 0) return;
  rmsnorm_f16_kernel<<<unsigned(T), 256, 0, s>>>(x, w, C, eps, static_cast<__half*>(out));
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void swiglu_f16(const float* gu, int64_t T, int64_t F, void* out, cudaStream_t s) {
  if (T <= 0) return;
  const int grid = int(std::min<int64_t>((T * F + 255) / 256, 16 * int64_t(sm_count())));
  swiglu_f16_kernel<<<grid, 256, 0, s>>>(gu, T, F, static_cast<__half*>(out));
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void swiglu_f32(const float* gate, const float* up, int64_t n, float* out, cudaStream_t s) {
  if (n <= 0) return;
  const int grid = int(std::min<int64_t>((n + 255) / 256, 16 * int64_t(sm_count())));
  swiglu_f32_kernel<<<grid, 256, 0, s>>>(gate, up, n, out);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void rope_qkv(const RopeQkvParams& p, cudaStream_t s) {
  PRIMAL_CHECK(p.T > 0 && p.HS > 0 && p.n_rot > 0 && p.n_rot <= p.HS && p.n_rot % 2 == 0,
               "rope: invalid shape T {} HS {} n_rot {}", p.T, p.HS, p.n_rot);
  PRIMAL_CHECK(p.cos_sin && p.pos0, "rope: no cos/sin table or position");
  launch_kernel(rope_qkv_kernel, dim3(unsigned(p.T)), dim3(256), 0, s, p);
}

void rope_table(const double* inv_freq, int64_t half, int64_t n_pos, void* out, cudaStream_t s) {
  if (half <= 0 || n_pos <= 0) return;
  const int grid = int(std::min<int64_t>((n_pos * half + 255) / 256, 16 * int64_t(sm_count())));
  rope_table_kernel<<<grid, 256, 0, s>>>(inv_freq, half, n_pos, static_cast<float2*>(out));
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
