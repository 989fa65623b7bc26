// The scale gradient of a LUT token-embedding table on the GPU, the twin of the end of
// train/forward_backward.cpp (embd_scale_grad):
//   dscale[r, g] += sum over positions t with tokens[t] = r, in increasing t, of
//                   sum_{i in group g} dx[t, i] * grid[idx[r, i]]
// Deterministic without atomics: the host groups the positions by token (CSR, positions in
// increasing order), one block per distinct token, a thread per group walks the positions in
// order with explicitly rounded fp32 operations: the CPU's bits.
#pragma once
#include <cstdint>

#include "ops/cuda/buffer.h"
#include "ops/cuda/lut_train.h"

namespace primal::cuda {

// rows: (n_rows) distinct token ids; start: (n_rows + 1) offsets into pos; pos: positions (N)
// grouped by token, increasing within a token. dx: (N, I); dscale: (O, I / G) accumulated.
// n_rows_dev (device, optional): the number of distinct tokens read when the kernel runs, n_rows
// then being an upper bound (a CUDA graph replayed on other tokens).
void lut_embedding_scale_grad(const LutTrainView& w, const float* dx, const int32_t* rows, const int32_t* start,
                              const int32_t* pos, int64_t n_rows, float* dscale, cudaStream_t s,
                              const int32_t* n_rows_dev = nullptr);

}  // namespace primal::cuda
