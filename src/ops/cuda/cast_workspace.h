// The size of the bf16 vote cast's column workspace (votes.h CastWorkspace), in a header without
// CUDA so that the memory planner (train/memory_plan.cpp) counts what the engine allocates.
#pragma once
#include <cstdint>

namespace primal::cuda {

// Rows of per-block column sums one cast launch writes at most (its most blocks).
constexpr int64_t kCastBlocksMax = 1056;
// Rows of a matrix per cast block: below this the grid shrinks (votes_fast.cu).
constexpr int64_t kCastRowsPerBlock = 2;
// Folds one deferred-fold launch takes at most (votes.h CastFoldQueue).
constexpr int64_t kFoldBatchMax = 16;

// The column sums (floats) a cast of a whole (O, I) matrix writes at most: a row of I per block.
constexpr int64_t cast_part_floats(int64_t O, int64_t I) {
  const int64_t nb = (O + kCastRowsPerBlock - 1) / kCastRowsPerBlock;
  return (nb < kCastBlocksMax ? nb : kCastBlocksMax) * I;
}

// part (part_floats) fp32: at least kCastBlocksMax * I_max (one launch of the longest rows), more
// where whole-matrix casts queue their folds (a layer's matrices: the sum of their
// cast_part_floats); acc (I_max) fp64; the immediate fold's block sums (I_max / 32 + 1) fp64 and
// counter; per queued fold kFoldBatchMax block-sum rows and counters; 16-byte alignment of each.
// floor false: part_floats exactly (the fused weight gradient + cast's workspace, below).
constexpr int64_t cast_workspace_bytes(int64_t I_max, int64_t part_floats, bool floor = true) {
  const int64_t part = !floor || part_floats > kCastBlocksMax * I_max ? part_floats : kCastBlocksMax * I_max;
  const int64_t sums = (I_max + 31) / 32 + 1;
  return part * 4 + I_max * 8 + sums * 8 + 16 + kFoldBatchMax * sums * 8 + kFoldBatchMax * 4 + 6 * 16;
}

// The fused weight gradient + cast (lut_dw_cast.h, lut_train.h CastAside::fused_*): a launch of
// matrices of `rows` rows together writes a row of I column sums per 128 rows of each matrix into
// its column workspace (cast_workspace_bytes without the floor), and needs the tiles' partial row
// sums (one per row and 256 columns) and a counter per 128 rows. Sized for a layer's matrices
// together (a launch takes some of them).
constexpr int64_t dw_fused_part_floats(int64_t O, int64_t I) { return O / 128 * I; }
constexpr int64_t dw_fused_scratch_floats(int64_t rows, int64_t I) { return (rows / 128) * ((I / 256) * 128 + 1) + 4; }

// Vote casts a CUDA graph of one micro-batch replays at most (each a 16-byte slot of its scalars,
// votes.h CastDyn, on the device and page-locked on the host): a cast per trainable matrix, or
// per chunk of rows where a matrix is cast in several.
constexpr int64_t kGraphCastSlots = 16384;
constexpr int64_t graph_cast_bytes() { return kGraphCastSlots * 16; }

// The two bf16 weight-gradient buffers of the casts beside the GEMMs (lut_train.h CastAside), for
// layer matrices of up to max_values = O * I weights.
constexpr int64_t cast_aside_bytes(int64_t max_values) { return 2 * max_values * 2; }

// Whether the bf16 cast (votes_fast.cu) serves a matrix with rows of I weights, G weights per
// scale and `bits`-bit indices (with int8 votes, momentum rule): I and G multiples of 8, G / 8 a
// power of two up to 32, rows up to 4 chunks of 8 for each of 320 threads. Such a matrix needs no
// per-tile column sums of its own (VoteState::col_part) where the workspace is attached.
constexpr bool cast_fast_serves(int64_t I, int64_t G, int bits) {
  const int64_t per = G / 8;
  return bits <= 8 && I % 8 == 0 && G % 8 == 0 && per >= 1 && per <= 32 && (per & (per - 1)) == 0 && I <= 10240;
}

}  // namespace primal::cuda
