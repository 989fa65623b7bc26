// What the vote kernels of votes.cu (the CPU's twin and the first bf16 kernels) and votes_fast.cu
// (the bf16 mode's cast and apply) share: the matrix as a kernel reads it, the arguments of a cast,
// the bf16 mode's rounding draws and the flip counter.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "ops/cuda/lut_train.h"
#include "ops/cuda/votes.h"
#include "ops/cuda/votes_args.h"

namespace primal::cuda::vk {

inline Mat mat_of(const LutTrainView& w) {
  return {w.idx, w.scale, w.grid, w.O, w.I, w.G, w.groups(), w.row_bytes(), w.K()};
}

// One cast launch's scalars, formed on the host with the CPU's expressions (votes.h).
struct CastArgs {
  bool cast;            // votes are cast (else dscale only)
  bool fast;            // the bf16 mode: the momentum cast's per-weight arithmetic in fp32
  bool seed_rule;       // seed rule, else momentum
  bool sm;              // momentum with second moments
  double lr;            // cfg.lr * sched * lr_mult
  double beta2, eps;
  double bc;            // 1 - beta2^(events + 1), the bias correction of rhat
  double sensitivity;   // the governor's k
  uint64_t prefix;      // key prefix of the rounding stream (seed, step, id, kRound << 32 | events_this_step)
  float* row_sq;        // (O)
  const float* col_norm;  // (I)
};

// The bf16 mode's rounding draws: a 32-bit integer hash (lowbias32) of the row's key and the
// column, a third of the 64-bit splitmix stream's instructions (the cast is instruction-bound);
// the fp32 mode keeps the CPU's stream. votes.cu's bf16 kernels take a 24-bit uniform per hash
// (fast_uniform), votes_fast.cu's cast two 16-bit ones (unit16 of each half).
__device__ __forceinline__ uint32_t fast_hash(uint32_t key, uint32_t i) {
  uint32_t x = key + i * 0x9E3779B9u;
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
__device__ __forceinline__ float fast_uniform(uint32_t key, uint32_t i) {
  return float(fast_hash(key, i) >> 8) * (1.0f / 16777216.0f);
}
// The low 16 bits of h as a uniform in [0, 1) (steps of 2^-16): the bits placed in a float's
// mantissa of [1, 2), minus 1 (two instructions, exact).
__device__ __forceinline__ float unit16(uint32_t h) { return __uint_as_float(0x3f800000u | ((h & 0xffffu) << 7)) - 1.0f; }

// The bf16 cast's tables of a grid of K values, by the threads t = t0, t0 + T, ...: grid_sh[q] the
// value, inv_sh[q] and inv_sh[256 + q] 1 / the gap below and above q (the ends of the grid take
// their one gap).
__device__ __forceinline__ void gap_tables(const float* grid, int K, float* grid_sh, float* inv_sh, int t0, int T) {
  for (int q = t0; q < K; q += T) {
    const float gq = grid[q];
    grid_sh[q] = gq;
    inv_sh[256 + q] = 1.0f / (q < K - 1 ? grid[q + 1] - gq : gq - grid[q - 1]);
    inv_sh[q] = 1.0f / (q > 0 ? gq - grid[q - 1] : grid[1] - gq);
  }
}

// The bf16 momentum cast of one weight (votes_fast.cu, lut_dw_cast.cu): vote v, gradient g, cs =
// -lr U / s (s_pos: s > 0), inv_sh from gap_tables, q its index, denom sqrt(rhat chat) + eps, u
// uniform in [0, 1). x = cs g / (gap denom) in votes, stochastically rounded as floor(x + u):
// floor(x) + 1 with probability frac(x), and 0 for a zero gradient without a test; clamped to
// +-ilim in integers (floor(clamp(x) + u) for every x: ilim is an integer and u < 1; a NaN converts
// to 0 either way), x rounded before u is added (__fadd_rn: an fma of the division's product with u
// moved a vote now and then); the vote saturates at +-vmax.
__device__ __forceinline__ int8_t momentum_vote(int8_t v, float g, float cs, bool s_pos, const float* inv_sh,
                                                uint32_t q, float denom, float u, int ilim, int vmax) {
  const int up = (g > 0) != s_pos;  // the sign of the index change -lr g / s
  const float x = __fdividef(cs * g * inv_sh[256 * up + q], denom);
  const int add = min(max(__float2int_rd(__fadd_rn(x, u)), -ilim), ilim);
  const int nv = int(v) + add;
  return int8_t(nv < -vmax ? -vmax : vmax < nv ? vmax : nv);
}

// One atomic per warp; integer sums are exact in any order, so the total is deterministic.
// Every lane of the warp must call it.
__device__ __forceinline__ void add_count(unsigned long long local, unsigned long long* total) {
  for (int off = 16; off > 0; off /= 2) local += __shfl_xor_sync(0xffffffffu, local, off);
  if ((threadIdx.x & 31) == 0 && local) atomicAdd(total, local);
}

// The momentum apply of 8 consecutive weights with int8 votes (U = 64), without noise or
// cooldown, in two steps: any_unit(word) says whether a vote of the 8 in `word` reaches a unit
// (the common case is none: the caller then touches nothing else); apply8 moves their indices,
// `bytes` being their B packed index bytes (LSB first, quant/lut_pack.h), updates the votes in
// `word` and returns how many indices moved. The same integer steps as votes.cu's
// apply_momentum_kernel.
constexpr int32_t kUnits8 = 64;  // VoteParams::units() of int8 votes

// The bf16 cast's per-call scalars as its kernel reads them, from a cast's CastArgs: the one formula
// of an eager launch's arguments and of a CUDA graph's slots (votes.h cast_dyn).
inline CastDyn cast_dyn_of(const CastArgs& a) {
  CastDyn d;
  d.c0 = float(-a.lr * double(kUnits8));
  d.inv_bc = float(1.0 / a.bc);
  d.prefix = a.prefix;
  return d;
}

// Byte-parallel on each 32-bit half (a third of the per-byte compares' instructions): a vote v
// reaches a unit when v >= 64 (sign clear, bit 6 set) or v <= -64 (sign set and its low 7 bits
// <= 0x40, i.e. (low7 + 0x3f) has no bit 7; no carry leaves a byte: low7 + 0x3f <= 0xbe).
__device__ __forceinline__ bool any_unit(uint2 word) {
  auto half = [](uint32_t x) {
    const uint32_t t = (x & 0x7f7f7f7fu) + 0x3f3f3f3fu;
    return ((~x & (x << 1)) | (x & ~t)) & 0x80808080u;
  };
  return (half(word.x) | half(word.y)) != 0;
}

// In 32-bit arithmetic (K <= 256 for B <= 8) and without a branch per weight: q = 0 leaves the
// index (next = cur) and the vote as they are, so every weight takes the same instructions
// (the 64-bit version with a branch each took ~250 instructions a word, H100 SASS).
template <int B>
__device__ __forceinline__ int apply8(uint2& word, uint8_t* bytes, int64_t K) {
  static_assert(B <= 8, "apply8: indices of at most 8 bits");
  constexpr int32_t U = kUnits8;
  using P = std::conditional_t<B <= 4, uint32_t, uint64_t>;  // the word's 8 B-bit indices
  constexpr P mask = (P(1) << B) - 1;
  int8_t* v = reinterpret_cast<int8_t*>(&word);
  // Read once, changed in a register, written once, instead of a byte read-modify-write per index
  // (one 32-bit word for 4-bit indices: 4-byte aligned where rows are a multiple of 8 long).
  P pk = 0;
  if constexpr (B == 4) {
    if ((reinterpret_cast<uintptr_t>(bytes) & 3) == 0) pk = *reinterpret_cast<const uint32_t*>(bytes);
    else
#pragma unroll
      for (int b = 0; b < B; ++b) pk |= P(bytes[b]) << (8 * b);
  } else {
#pragma unroll
    for (int b = 0; b < B; ++b) pk |= P(bytes[b]) << (8 * b);
  }
  const P pk0 = pk;
  const int32_t last = int32_t(K) - 1;
  int moved_n = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int32_t x = v[e], q = x / U;  // truncates toward zero, as C++ on the CPU
    const int32_t cur = int32_t((pk >> (B * e)) & mask);
    const int32_t next = min(max(cur + q, 0), last), moved = next - cur;
    int32_t y = x - moved * U;
    if (moved != q) y = min(max(y, -(U - 1)), U - 1);  // held at the end of the grid
    pk = (pk & ~(mask << (B * e))) | (P(next) << (B * e));
    moved_n += moved != 0;
    v[e] = int8_t(y);
  }
  if (pk != pk0) {
    if (B == 4 && (reinterpret_cast<uintptr_t>(bytes) & 3) == 0) {
      *reinterpret_cast<uint32_t*>(bytes) = uint32_t(pk);
    } else {
#pragma unroll
      for (int b = 0; b < B; ++b) bytes[b] = uint8_t(pk >> (8 * b));
    }
  }
  return moved_n;
}

}  // namespace primal::cuda::vk

namespace primal::cuda {
struct VoteState;
struct VoteParams;
// votes_fast.cu: the bf16 mode's cast of rows o0 .. o0+rows-1 (lut_grad_tiles), with the column
// statistic in st->ws (its fold, and after the call's last rows col_sq and col_norm: st->folded);
// false, with nothing launched, where its preconditions do not hold.
// Whether cast_rows_fast serves (w, a, st, p).
bool cast_rows_fast_ok(const LutTrainView& w, const vk::CastArgs& a, const VoteState* st, const VoteParams* p);
// dW: fp32 rows, or dWb: bf16 rows (the other null).
bool cast_rows_fast(const LutTrainView& w, const vk::CastArgs& a, VoteState* st, const VoteParams* p, const float* dW,
                    const uint16_t* dWb, int64_t o0, int64_t rows, float* dscale, cudaStream_t s);
// The pieces of cast_rows_fast that a cast in another kernel (lut_dw_cast.h) shares with it:
// its scalars (a CUDA graph's cast: a recorder slot); the region of st->ws->part for a launch's
// column sums, reserving `reserve` floats where the fold is queued (whole matrices), after a flush
// where the queue cannot take it (null without second moments); and after the launch, the fold of
// its nb rows of sums, queued or at once.
// votes.cu: a cast's scalars (lut_grad_tiles' CastArgs) for a call on (votes, params).
vk::CastArgs cast_args_of(const LutTrainView& w, VoteState* votes, const VoteParams* params);
vk::FastArgs fast_args(const LutTrainView& w, const vk::CastArgs& a, VoteState* st, const VoteParams* p);
float* cast_part_reserve(const LutTrainView& w, const vk::CastArgs& a, VoteState* st, int64_t o0, int64_t rows,
                         int64_t reserve, bool* queued, cudaStream_t s);
void cast_part_finish(const LutTrainView& w, const vk::CastArgs& a, VoteState* st, float* part, bool queued, int64_t nb,
                      int64_t o0, int64_t rows, cudaStream_t s);
}  // namespace primal::cuda
