// Draws of a counter-based stream on the device, for the conformance test against train::Rng.
#include <algorithm>

#include "ops/cuda/check.cuh"
#include "ops/cuda/rng.cuh"

namespace primal::cuda {
namespace {

// Thread j writes draw j + 1 (one next() per call of each kind, as on the CPU).
__global__ void rng_draws_kernel(CounterRng rng, int64_t n, int64_t lo, int64_t hi, uint64_t* u64, float* uni,
                                 int64_t* out_range) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t draw = uint64_t(j) + 1;
    if (u64) u64[j] = rng.at(draw);
    if (uni) uni[j] = rng.uniform_at(draw);
    if (out_range) out_range[j] = rng.range_at(draw, lo, hi);
  }
}

}  // namespace

void rng_stream_draws(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d, int64_t n, int64_t lo,
                      int64_t hi, uint64_t* u64, float* uni, int64_t* rng_range, cudaStream_t s) {
  PRIMAL_CHECK(n >= 0 && hi >= lo && uint64_t(hi - lo) < (uint64_t(1) << 32), "rng_stream_draws: n {} range {}..{}",
               n, lo, hi);
  if (n == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<int64_t>((n + threads - 1) / threads, 4096));
  rng_draws_kernel<<<blocks, threads, 0, s>>>(CounterRng::from_key(seed, a, b, c, d), n, lo, hi, u64, uni, rng_range);
  PRIMAL_CUDA_CHECK_LAUNCH();
}

}  // namespace primal::cuda
