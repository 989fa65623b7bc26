// The size of the bf16 vote cast's column workspace (votes.h CastWorkspace), in a header without
// CUDA so that the memory planner (train/memory_plan.cpp) counts what the engine allocates.
#pragma once
#include <cstdint>

namespace primal::cuda {

// Rows of per-block column sums the workspace holds: the most blocks a cast launch uses.
constexpr int64_t kCastBlocksMax = 1056;

// part (kCastBlocksMax, I_max) fp32, acc (I_max) fp64, the fold's block sums (I_max / 32 + 1)
// fp64, the counter, and 16-byte alignment of each.
constexpr int64_t cast_workspace_bytes(int64_t I_max) {
  return kCastBlocksMax * I_max * 4 + I_max * 8 + ((I_max + 31) / 32 + 1) * 8 + 16 + 64;
}

// Whether the bf16 cast (votes_fast.cu) serves a matrix with rows of I weights, G weights per
// scale and `bits`-bit indices (with int8 votes, momentum rule): I and G multiples of 8, G / 8 a
// power of two up to 32, rows up to 4 chunks of 8 for each of 320 threads. Such a matrix needs no
// per-tile column sums of its own (VoteState::col_part) where the workspace is attached.
constexpr bool cast_fast_serves(int64_t I, int64_t G, int bits) {
  const int64_t per = G / 8;
  return bits <= 8 && I % 8 == 0 && G % 8 == 0 && per >= 1 && per <= 32 && (per & (per - 1)) == 0 && I <= 10240;
}

}  // namespace primal::cuda
