#include <algorithm>
#include <cstring>

#include "ops/cuda/check.cuh"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/sampling.h"

namespace primal::cuda {
namespace {

__host__ __device__ __forceinline__ uint32_t ordered(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__host__ __device__ __forceinline__ float unordered(uint32_t o) {
  const uint32_t u = (o & 0x80000000u) ? (o & 0x7fffffffu) : ~o;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
__device__ __forceinline__ uint64_t make_key(float logit, uint32_t id) {
  return uint64_t(~ordered(logit)) << 32 | id;
}
constexpr uint64_t kNoKey = ~uint64_t(0);

__global__ void penalty_kernel(float* logits, const int32_t* ids, int n, float penalty) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float& l = logits[ids[i]];
  l = l > 0 ? l / penalty : l * penalty;
}

__global__ void argmax_kernel(const float* logits, int64_t V, unsigned long long* key) {
  pdl_trigger();
  pdl_wait();
  uint64_t best = kNoKey;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < V; i += int64_t(gridDim.x) * blockDim.x)
    best = min(best, make_key(logits[i], uint32_t(i)));
  for (int o = 16; o > 0; o /= 2) best = min(best, (uint64_t)__shfl_xor_sync(0xffffffffu, (unsigned long long)best, o));
  if (threadIdx.x % 32 == 0) atomicMin(key, (unsigned long long)best);
}

// One block sorts kChunk keys ascending in shared memory (bitonic) and keeps the first k.
constexpr int kChunk = 2048;
constexpr int kSortThreads = 1024;

__device__ void bitonic_sort(uint64_t* a) {
  for (int size = 2; size <= kChunk; size *= 2) {
    for (int stride = size / 2; stride > 0; stride /= 2) {
      __syncthreads();
      for (int t = threadIdx.x; t < kChunk / 2; t += blockDim.x) {
        const int i = 2 * stride * (t / stride) + t % stride, j = i + stride;
        const bool up = (i & size) == 0;
        const uint64_t x = a[i], y = a[j];
        if ((x > y) == up) a[i] = y, a[j] = x;
      }
    }
  }
  __syncthreads();
}

// Pass 1: chunk c of the logits -> its k best keys at out[c * k ..].
__global__ void __launch_bounds__(kSortThreads) topk_logits_kernel(const float* logits, int64_t V, int k, uint64_t* out) {
  __shared__ uint64_t a[kChunk];
  const int64_t base = int64_t(blockIdx.x) * kChunk;
  for (int i = threadIdx.x; i < kChunk; i += blockDim.x)
    a[i] = base + i < V ? make_key(logits[base + i], uint32_t(base + i)) : kNoKey;
  bitonic_sort(a);
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[int64_t(blockIdx.x) * k + i] = a[i];
}

// Later passes: n keys -> the k best of each chunk.
__global__ void __launch_bounds__(kSortThreads) topk_keys_kernel(const uint64_t* in, int64_t n, int k, uint64_t* out) {
  __shared__ uint64_t a[kChunk];
  const int64_t base = int64_t(blockIdx.x) * kChunk;
  for (int i = threadIdx.x; i < kChunk; i += blockDim.x) a[i] = base + i < n ? in[base + i] : kNoKey;
  bitonic_sort(a);
  for (int i = threadIdx.x; i < k; i += blockDim.x) out[int64_t(blockIdx.x) * k + i] = a[i];
}

__global__ void advance_kernel(const uint64_t* key, int32_t* token, int32_t* pos) {
  *token = int32_t(*key & 0xffffffffu);
  *pos += 1;
}

int64_t chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

}  // namespace

uint64_t logit_key(float logit, int32_t id) { return uint64_t(~ordered(logit)) << 32 | uint32_t(id); }
float key_logit(uint64_t key) { return unordered(~uint32_t(key >> 32)); }

void apply_penalty(float* logits, const int32_t* ids, int n, float penalty, cudaStream_t s) {
  if (n <= 0 || penalty == 1.0f) return;
  penalty_kernel<<<(n + 255) / 256, 256, 0, s>>>(logits, ids, n, penalty);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void argmax_key(const float* logits, int64_t V, uint64_t* key, cudaStream_t s, bool reset) {
  PRIMAL_CHECK(V > 0, "argmax: empty vocabulary");
  if (reset) fill_bytes_async(key, 0xff, sizeof(uint64_t), s);
  const int grid = int(std::min<int64_t>((V + 255) / 256, 2 * int64_t(sm_count())));
  launch_kernel(argmax_kernel, dim3(grid), dim3(256), 0, s, logits, V, reinterpret_cast<unsigned long long*>(key));
}

size_t top_k_scratch_bytes(int64_t V, int k) {
  // Two ping-pong arrays of the first pass's output size.
  return 2 * size_t(chunks(V)) * size_t(k) * sizeof(uint64_t);
}

void top_k_keys(const float* logits, int64_t V, int k, void* scratch, uint64_t* out, cudaStream_t s) {
  PRIMAL_CHECK(k >= 1 && k <= kMaxTopK && k <= V, "top-k: k = {} (1..{}, at most V = {})", k, kMaxTopK, V);
  uint64_t* buf[2] = {static_cast<uint64_t*>(scratch), static_cast<uint64_t*>(scratch) + chunks(V) * k};
  int64_t n = chunks(V);  // blocks of the first pass
  topk_logits_kernel<<<unsigned(n), kSortThreads, 0, s>>>(logits, V, k, n == 1 ? out : buf[0]);
  PRIMAL_CUDA_CHECK_LAUNCH();
  int cur = 0;
  for (int64_t m = n * k; n > 1; m = n * k) {  // m candidate keys in buf[cur]
    n = chunks(m);
    topk_keys_kernel<<<unsigned(n), kSortThreads, 0, s>>>(buf[cur], m, k, n == 1 ? out : buf[1 - cur]);
    PRIMAL_CUDA_CHECK_LAUNCH();
    cur = 1 - cur;
  }
}

void advance_token(const uint64_t* key, int32_t* token, int32_t* pos, cudaStream_t s) {
  advance_kernel<<<1, 1, 0, s>>>(key, token, pos);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
