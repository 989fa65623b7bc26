// The step kernels of the GPU trainer that are not layer ops (train_step.h): the residual add, the
// LUT token-embedding gather, the gradient's sum of squares and AdamW. Every floating-point
// operation is an explicitly rounded intrinsic (__fadd_rn, __dmul_rn, ...): nvcc would otherwise
// contract a * b + c into an FMA, which the CPU (x86-64 without -march) never does.
#include <algorithm>
#include <vector>

#include "ops/cuda/check.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/lut_train.cuh"
#include "ops/cuda/train_step.h"

namespace primal::cuda {
namespace {

// ---- residual add -----------------------------------------------------------------------------

__global__ void add_inplace_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = __fadd_rn(y[i], x[i]);
}

// ---- LUT embedding rows -----------------------------------------------------------------------

// out[t, i] = scale[o, i / G] * grid[idx[o, i]] with o = tokens[t], one thread per value (as
// lut_train.cu's dequant_rows_kernel, the row chosen by the token). A token outside [0, O) leaves
// its row alone.
template <int B>
__global__ void embedding_rows_kernel(const LutTrainView w, const int32_t* tokens, int64_t N, int64_t row_bytes,
                                      float* out) {
  const int64_t total = N * w.I, groups = w.I / w.G;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = k / w.I, i = k - t * w.I, o = tokens[t];
    if (o < 0 || o >= w.O) continue;
    const uint32_t q = lut::get_index<B>(w.idx + o * row_bytes, i);
    out[k] = __fmul_rn(w.scale[o * groups + i / w.G], __ldg(w.grid + q));
  }
}

// ---- sum of squares ---------------------------------------------------------------------------

// Two fixed-shape stages, no atomics: block b of ss_blocks(n) sums g[i]^2 for i = b * T + j +
// k * blocks * T (thread j, k = 0, 1, ... in order) and reduces its T threads' sums by a fixed
// tree into scratch[b]; one block then sums the partials the same way. The shape depends on n
// only (never on the device), so the bits do too. Squares of fp32 values are exact in fp64.
constexpr int kSsThreads = 256;     // a power of two (the tree below halves it)
constexpr int64_t kSsPerThread = 8; // values per thread before the grid reaches its cap
constexpr int64_t kSsMaxBlocks = 1024;

int64_t ss_blocks(int64_t n) {
  const int64_t b = (n + kSsThreads * kSsPerThread - 1) / (kSsThreads * kSsPerThread);
  return b < 1 ? 1 : b > kSsMaxBlocks ? kSsMaxBlocks : b;
}

// s: the block's kSsThreads per-thread sums in shared memory; their sum, in thread 0 only
// (s[i] += s[i + h] for h = T/2, T/4, ..., 1).
__device__ double block_tree_sum(double* s) {
  for (int h = kSsThreads / 2; h > 0; h >>= 1) {
    __syncthreads();
    if (int(threadIdx.x) < h) s[threadIdx.x] = __dadd_rn(s[threadIdx.x], s[threadIdx.x + h]);
  }
  return threadIdx.x == 0 ? s[0] : 0.0;  // thread 0 wrote s[0] last: no barrier needed
}

__global__ void __launch_bounds__(kSsThreads) ss_partial_kernel(const float* g, int64_t n, double* partial) {
  __shared__ double s[kSsThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t(kSsThreads) + threadIdx.x; i < n; i += int64_t(gridDim.x) * kSsThreads) {
    const double x = double(g[i]);
    acc = __dadd_rn(acc, __dmul_rn(x, x));
  }
  s[threadIdx.x] = acc;
  const double total = block_tree_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kSsThreads) ss_final_kernel(const double* partial, int64_t nb, double* out) {
  __shared__ double s[kSsThreads];
  double acc = 0.0;
  for (int64_t b = threadIdx.x; b < nb; b += kSsThreads) acc = __dadd_rn(acc, partial[b]);
  s[threadIdx.x] = acc;
  const double total = block_tree_sum(s);
  if (threadIdx.x == 0) *out = total;
}

// ---- AdamW ------------------------------------------------------------------------------------

// adamw.cpp's loop body, one explicitly rounded fp64 operation per C++ operator, in the C++
// evaluation order (left to right for chains of * and -):
//   g = grad * c
//   m = (b1 * m) + ((1 - b1) * g)
//   v = (b2 * v) + (((1 - b2) * g) * g)
//   u = (m / bc1) / (sqrt(v / bc2) + eps)
//   relative:  p = (p - ((lr * |p|) * u)) - ((lr * wd) * p)
//   else:      p = p - (lr * (u + (wd * p)))
// m and v are stored as float(m), float(v); u uses the unrounded fp64 m and v, as the CPU.
__device__ __forceinline__ void adamw_element(float* p, const float* grad, float* m, float* v, int64_t i,
                                              const AdamArgs& a) {
  {
    const double g = __dmul_rn(double(grad[i]), a.clip_scale);
    const double mi = __dadd_rn(__dmul_rn(a.b1, double(m[i])), __dmul_rn(__dsub_rn(1.0, a.b1), g));
    const double vi = __dadd_rn(__dmul_rn(a.b2, double(v[i])), __dmul_rn(__dmul_rn(__dsub_rn(1.0, a.b2), g), g));
    m[i] = __double2float_rn(mi);
    v[i] = __double2float_rn(vi);
    const double u = __ddiv_rn(__ddiv_rn(mi, a.bc1), __dadd_rn(__dsqrt_rn(__ddiv_rn(vi, a.bc2)), a.eps));
    const double pi = double(p[i]);
    const double r = a.relative ? __dsub_rn(__dsub_rn(pi, __dmul_rn(__dmul_rn(a.lr, fabs(pi)), u)),
                                            __dmul_rn(__dmul_rn(a.lr, a.wd), pi))
                                : __dsub_rn(pi, __dmul_rn(a.lr, __dadd_rn(u, __dmul_rn(a.wd, pi))));
    p[i] = __double2float_rn(r);
  }
}

__global__ void adamw_kernel(float* p, const float* grad, float* m, float* v, int64_t n, const AdamArgs a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    adamw_element(p, grad, m, v, i, a);
}

// ---- batches -----------------------------------------------------------------------------------

// One tensor of a batch: its items' pointers and its blocks [block0, block0 + nb) of the launch.
struct BatchDesc {
  const float* g;
  float *p, *m, *v;
  int64_t n, block0, nb;
  double* out;
  AdamArgs a;
};

// ss_partial_kernel for every tensor: block b of tensor k is its block b - block0 of nb.
__global__ void __launch_bounds__(kSsThreads) ss_partial_batch_kernel(const BatchDesc* d, int count, double* partial) {
  __shared__ double s[kSsThreads];
  const BatchDesc& t = d[owner_of(d, count, blockIdx.x)];
  const int64_t lb = int64_t(blockIdx.x) - t.block0;
  double acc = 0.0;
  for (int64_t i = lb * kSsThreads + threadIdx.x; i < t.n; i += t.nb * kSsThreads) {
    const double x = double(t.g[i]);
    acc = __dadd_rn(acc, __dmul_rn(x, x));
  }
  s[threadIdx.x] = acc;
  const double total = block_tree_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// ss_final_kernel for every tensor: block k sums tensor k's partials.
__global__ void __launch_bounds__(kSsThreads) ss_final_batch_kernel(const BatchDesc* d, const double* partial) {
  __shared__ double s[kSsThreads];
  const BatchDesc& t = d[blockIdx.x];
  double acc = 0.0;
  for (int64_t b = threadIdx.x; b < t.nb; b += kSsThreads) acc = __dadd_rn(acc, partial[t.block0 + b]);
  s[threadIdx.x] = acc;
  const double total = block_tree_sum(s);
  if (threadIdx.x == 0) *t.out = total;
}

__global__ void adamw_batch_kernel(const BatchDesc* d, int count) {
  const BatchDesc& t = d[owner_of(d, count, blockIdx.x)];
  const int64_t lb = int64_t(blockIdx.x) - t.block0;
  for (int64_t i = lb * blockDim.x + threadIdx.x; i < t.n; i += t.nb * blockDim.x) adamw_element(t.p, t.g, t.m, t.v, i, t.a);
}

}  // namespace

void add_inplace(float* y, const float* x, int64_t n, cudaStream_t s) {
  PRIMAL_CHECK(n >= 0, "add_inplace: n {}", n);
  if (n == 0) return;
  PRIMAL_CHECK(y && x, "add_inplace: a null pointer");
  add_inplace_kernel<<<lut::blocks_for(n), lut::kThreads, 0, s>>>(y, x, n);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void lut_embedding_rows(float* out, const int32_t* tokens, int64_t N, const LutTrainView& w, cudaStream_t s) {
  check_lut_view(w, "lut_embedding_rows");
  PRIMAL_CHECK(N >= 0, "lut_embedding_rows: N {}", N);
  if (N == 0) return;
  PRIMAL_CHECK(out && tokens, "lut_embedding_rows: a null pointer");
  const int blocks = lut::blocks_for(N * w.I);
  const int64_t rb = w.row_bytes();
#define PRIMAL_LAUNCH(B) embedding_rows_kernel<B><<<blocks, lut::kThreads, 0, s>>>(w, tokens, N, rb, out)
  PRIMAL_LUT_BITS_SWITCH(w.bits(), PRIMAL_LAUNCH)
#undef PRIMAL_LAUNCH
  PRIMAL_CUDA_CHECK_LAUNCH();
}

int64_t sum_squares_scratch(int64_t n) { return ss_blocks(n); }

void sum_squares(const float* g, int64_t n, double* out, double* scratch, cudaStream_t s) {
  PRIMAL_CHECK(n >= 0, "sum_squares: n {}", n);
  PRIMAL_CHECK(out && scratch && (g || n == 0), "sum_squares: a null pointer");
  const int64_t nb = ss_blocks(n);
  ss_partial_kernel<<<unsigned(nb), kSsThreads, 0, s>>>(g, n, scratch);
  PRIMAL_CUDA_CHECK_LAUNCH();
  ss_final_kernel<<<1, kSsThreads, 0, s>>>(scratch, nb, out);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void adamw_update(float* p, const float* grad, float* m, float* v, int64_t n, const AdamArgs& a, cudaStream_t s) {
  PRIMAL_CHECK(n >= 0, "adamw_update: n {}", n);
  if (n == 0) return;
  PRIMAL_CHECK(p && grad && m && v, "adamw_update: a null pointer");
  adamw_kernel<<<lut::blocks_for(n), lut::kThreads, 0, s>>>(p, grad, m, v, n, a);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda

namespace primal::cuda {

size_t batch_desc_bytes(size_t count) { return std::max<size_t>(1, count) * sizeof(BatchDesc); }

int64_t sum_squares_batch_scratch(const std::vector<SumSquaresItem>& items) {
  int64_t b = 0;
  for (const SumSquaresItem& it : items) b += ss_blocks(it.n);
  return std::max<int64_t>(1, b);
}

void sum_squares_batch(const std::vector<SumSquaresItem>& items, double* scratch, void* desc, cudaStream_t s) {
  if (items.empty()) return;
  PRIMAL_CHECK(scratch && desc, "sum_squares_batch: a null pointer");
  std::vector<BatchDesc> d(items.size());
  int64_t b = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const SumSquaresItem& it = items[k];
    PRIMAL_CHECK(it.n >= 0 && it.out && (it.g || it.n == 0), "sum_squares_batch: item {}", k);
    d[k] = BatchDesc{it.g, nullptr, nullptr, nullptr, it.n, b, ss_blocks(it.n), it.out, AdamArgs{}};
    b += d[k].nb;
  }
  PRIMAL_CHECK(b < (int64_t(1) << 31) && items.size() < (size_t(1) << 31), "sum_squares_batch: {} blocks", b);
  copy_to_device_async(desc, d.data(), d.size() * sizeof(BatchDesc), s);
  const auto* dd = static_cast<const BatchDesc*>(desc);
  ss_partial_batch_kernel<<<unsigned(b), kSsThreads, 0, s>>>(dd, int(items.size()), scratch);
  PRIMAL_CUDA_CHECK_LAUNCH();
  ss_final_batch_kernel<<<unsigned(items.size()), kSsThreads, 0, s>>>(dd, scratch);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

void adamw_update_batch(const std::vector<AdamItem>& items, void* desc, cudaStream_t s) {
  std::vector<BatchDesc> d;
  d.reserve(items.size());
  int64_t b = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    const AdamItem& it = items[k];
    PRIMAL_CHECK(it.n >= 0, "adamw_update_batch: item {} n {}", k, it.n);
    if (it.n == 0) continue;
    PRIMAL_CHECK(it.p && it.g && it.m && it.v, "adamw_update_batch: item {}: a null pointer", k);
    const int64_t nb = lut::blocks_for(it.n);  // adamw_update's grid (any grid gives the same bits)
    d.push_back(BatchDesc{it.g, it.p, it.m, it.v, it.n, b, nb, nullptr, it.a});
    b += nb;
  }
  if (d.empty()) return;
  PRIMAL_CHECK(desc, "adamw_update_batch: no descriptor memory");
  PRIMAL_CHECK(b < (int64_t(1) << 31), "adamw_update_batch: {} blocks", b);
  copy_to_device_async(desc, d.data(), d.size() * sizeof(BatchDesc), s);
  adamw_batch_kernel<<<unsigned(b), lut::kThreads, 0, s>>>(static_cast<const BatchDesc*>(desc), int(d.size()));
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
