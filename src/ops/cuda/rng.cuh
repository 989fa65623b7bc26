// The trainer's counter-based random streams (train/rng.h) on the device, bit for bit.
//
// train::Rng(seed, a, b, c, d) hashes its key into a state s0 with splitmix64, and its n-th call
// of next() (n = 1, 2, ...) returns mix(s0 + n * golden): the n-th draw of a stream is a pure
// function of (key, n). A kernel therefore gives every element its own draw number instead of
// stepping one generator through the row in order, and still reproduces the CPU's numbers.
// Every function here is plain integer arithmetic, compiled for the host and the device alike
// (this header also compiles as ordinary C++, so host tests can check it against train::Rng).
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"

#if defined(__CUDACC__)
#define PRIMAL_HD __host__ __device__ __forceinline__
#else
#define PRIMAL_HD inline
#endif

namespace primal::cuda {

constexpr uint64_t kRngGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's finalizer (train::Rng::next() after its state increment).
PRIMAL_HD uint64_t rng_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// train::splitmix64.
PRIMAL_HD uint64_t rng_splitmix64(uint64_t x) { return rng_mix(x + kRngGolden); }

// The hash of the first four key words (seed, a, b, c): rows of one tensor share it, so a
// launcher forms it once on the host and a kernel adds only the row (d).
PRIMAL_HD uint64_t rng_key_prefix(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t s = rng_splitmix64(seed);
  s = rng_splitmix64(s ^ a);
  s = rng_splitmix64(s ^ b);
  return rng_splitmix64(s ^ c);
}

// The stream train::Rng(seed, a, b, c, d), addressed by draw number.
struct CounterRng {
  uint64_t s0 = 0;  // train::Rng's state after construction

  static PRIMAL_HD CounterRng from_prefix(uint64_t prefix, uint64_t d) {
    CounterRng r;
    r.s0 = rng_splitmix64(prefix ^ d);
    return r;
  }
  static PRIMAL_HD CounterRng from_key(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0) {
    return from_prefix(rng_key_prefix(seed, a, b, c), d);
  }
  // The n-th next() (n >= 1); unsigned arithmetic wraps modulo 2^64 as the CPU's state does.
  PRIMAL_HD uint64_t at(uint64_t n) const { return rng_mix(s0 + n * kRngGolden); }
  // Rng::uniform() as the n-th draw: 24 random bits in [0, 1), exact in fp32.
  PRIMAL_HD float uniform_at(uint64_t n) const { return float(at(n) >> 40) * (1.0f / 16777216.0f); }
  // Rng::range(lo, hi) as the n-th draw (hi - lo < 2^32).
  PRIMAL_HD int64_t range_at(uint64_t n, int64_t lo, int64_t hi) const {
    const uint64_t k = uint64_t(hi - lo) + 1;
    return lo + int64_t(((at(n) >> 32) * k) >> 32);
  }
};

// Conformance entry point: draws 1..n of the stream (seed, a, b, c, d) computed on the device.
// u64: (n) next() values; uni: (n) uniform(); rng_range: (n) range(lo, hi). Device pointers; a null
// output is skipped. Asynchronous on s.
void rng_stream_draws(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d, int64_t n, int64_t lo,
                      int64_t hi, uint64_t* u64, float* uni, int64_t* rng_range, cudaStream_t s);

}  // namespace primal::cuda
