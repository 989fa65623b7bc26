// Counter-based random streams: a stream is named by a key (seed, step, tensor, purpose, row) and
// produces the same numbers whichever thread runs it and in whatever order the rows are visited,
// so training is bit-identical across thread counts, after a resume, and on another backend that
// implements the same mixing (splitmix64).
#pragma once
#include <cstdint>

namespace primal::train {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class Rng {
 public:
  Rng(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0, uint64_t d = 0) {
    uint64_t s = splitmix64(seed);
    s = splitmix64(s ^ a);
    s = splitmix64(s ^ b);
    s = splitmix64(s ^ c);
    state_ = splitmix64(s ^ d);
  }
  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ull;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 24 random bits (exactly representable as float).
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }
  // Uniform integer in [lo, hi] (hi - lo < 2^32).
  int64_t range(int64_t lo, int64_t hi) {
    const uint64_t n = uint64_t(hi - lo) + 1;
    return lo + int64_t(((next() >> 32) * n) >> 32);
  }
  // Standard normal (Box-Muller on two uniforms), for initialization.
  double normal();

 private:
  uint64_t state_;
};

}  // namespace primal::train
