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

// One thread per pair of elements of a head (q, k or v head h of token t, pair i of HS/2): a
// rotation pair (i < n_rot/2: elements i and i + n_rot/2 under NeoX, 2i and 2i + 1 otherwise),
// or two elements past n_rot, which only get the bias. Each thread adds the bias to its two
// elements, rotates them (q and k heads), writes them back (q) and k and v to the fp16 cache.
// Spread over the grid: a decode step's few thousand pairs take one short wave rather than one
// block's long sweep.
__global__ void rope_qkv_kernel(const RopeQkvParams p) {
  pdl_trigger();
  pdl_wait();
  const int64_t Q = p.NH * p.HS, KV = p.KVH * p.HS, W = Q + 2 * KV, half = p.n_rot / 2, pairs = p.HS / 2;
  const int64_t heads = p.NH + 2 * p.KVH, n = p.T * heads * pairs;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = k / (heads * pairs), h = k / pairs % heads, i = k % pairs;
    const int64_t pos = int64_t(*p.pos0) + t;
    int64_t e0, e1;  // the two elements within the head
    if (i < half) {
      e0 = p.neox ? i : 2 * i;
      e1 = p.neox ? i + half : 2 * i + 1;
    } else {
      e0 = p.n_rot + 2 * (i - half), e1 = e0 + 1;
    }
    const int64_t c0 = h * p.HS + e0, c1 = h * p.HS + e1;  // columns of the row: q | k | v heads
    float* row = p.qkv + t * W;
    float a = row[c0], b = row[c1];
    if (p.bias) a += p.bias[c0], b += p.bias[c1];
    if (h < p.NH + p.KVH && i < half) {
      const float2 r = static_cast<const float2*>(p.cos_sin)[pos * half + i];
      const float ra = __fsub_rn(__fmul_rn(a, r.x), __fmul_rn(b, r.y));
      const float rb = __fadd_rn(__fmul_rn(a, r.y), __fmul_rn(b, r.x));
      a = ra, b = rb;
    }
    if (h < p.NH) {
      row[c0] = a, row[c1] = b;
    } else {
      const bool is_k = h < p.NH + p.KVH;
      const int64_t off = (is_k ? c0 - Q : c0 - Q - KV) - e0;  // the kv head's first column
      __half* cache = static_cast<__half*>(is_k ? p.k_cache : p.v_cache) + pos * KV + off;
      cache[e0] = __float2half_rn(a);
      cache[e1] = __float2half_rn(b);
      row[c0] = a, row[c1] = b;  // k and v as fp32 too, as the CPU leaves them
    }
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
  PRIMAL_CHECK(p.HS % 2 == 0, "rope: odd head size {}", p.HS);
  const int64_t n = p.T * (p.NH + 2 * p.KVH) * (p.HS / 2);
  const int grid = int(std::min<int64_t>((n + 127) / 128, 16 * int64_t(sm_count())));
  launch_kernel(rope_qkv_kernel, dim3(unsigned(grid)), dim3(128), 0, s, p);
}

void rope_table(const double* inv_freq, int64_t half, int64_t n_pos, void* out, cudaStream_t s) {
  if (half <= 0 || n_pos <= 0) return;
  const int grid = int(std::min<int64_t>((n_pos * half + 255) / 256, 16 * int64_t(sm_count())));
  rope_table_kernel<<<grid, 256, 0, s>>>(inv_freq, half, n_pos, static_cast<float2*>(out));
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
