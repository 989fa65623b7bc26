// The bf16 mode's LUT weight gradient fused with the momentum vote cast, on Hopper: one kernel
// computes dW = dout^T inp tile by tile on the tensor cores (wgmma, operands brought by TMA) and
// casts each tile into votes, the scale gradient and the column statistic from its registers; the
// tile never reaches device memory (votes.h's cast read it back from a bf16 buffer).
//
// The cast needs each row's sum of g^2 over the whole row (the row statistic of the second
// moments) before the first vote of the row, and a row spans I / 256 tiles. The kernel is
// persistent (one block a multiprocessor, tile t on block t mod grid, the tiles of a row block
// consecutive): each tile publishes its rows' partial sums, then waits until every tile of its row
// block has, and sums the partials in tile order (the same total in every tile). A row block's
// tiles (I / 256 <= grid) are always resident together, so the wait ends.
//
// Tile: 128 rows (two consumer warpgroups of 64) by 256 columns, k steps of 64 tokens in 4
// pipeline stages filled by a producer warp. Rounding: each value is rounded to bf16 as the
// unfused GEMM wrote it; the rest is votes_fast.cu's cast arithmetic (its sums in another order).
#pragma once
#include <cstdint>

#include "ops/cuda/votes_args.h"

namespace primal::cuda {

constexpr int kDwBM = 128, kDwBN = 256;  // the tile

// One matrix of the stacked gradient (q, k, v or gate, up share a launch; device pointers).
struct DwSeg {
  vk::Mat m;               // idx (O, row_bytes), scale (O, groups), grid (K)
  int8_t* votes;           // (O, I)
  float* dscale;           // (O, groups) accumulated, or null
  float* row_sq;           // (O)
  const float* col_norm;   // (I)
  float* part;             // (O / kDwBM, I): the column sums of g^2 / O, one row per row block
  vk::FastArgs f;          // the cast's scalars (f.dyn: a CUDA graph's slot)
  uint64_t prefix;         // the rounding key prefix (f.dyn's when set)
  int rb0;                 // its first row block in the stack
};

struct DwCastLaunch {
  DwSeg seg[3];
  int nseg = 0;
  const uint16_t* dout = nullptr;  // (N, ldd) bf16: matrix k's output gradient in the columns after 0 .. k-1's
  int64_t ldd = 0;
  const uint16_t* inp = nullptr;   // (N, ldi) bf16
  int64_t ldi = 0;
  int64_t N = 0, I = 0, O = 0;     // O: the matrices' rows together
  int bits = 4;                    // index width (2, 4 or 8)
  float* rowpart = nullptr;        // (O / kDwBM, I / kDwBN, kDwBM) the tiles' partial row sums
  unsigned* counters = nullptr;    // (O / kDwBM) zeroed by the launch
  uint16_t* dw_out = nullptr;      // null, or (O, I) bf16: the gradient as the cast read it (tests)
};

// Whether this process can run the kernel: a compute capability 9.0 device, the sm_90a image
// loaded, the driver's tensor-map encoder found.
bool dw_cast_available();
// The shape conditions: O and I multiples of kDwBM and kDwBN, 2-, 4- or 8-bit indices, G a power
// of two in 8 .. 256, strides multiples of 8 values, 16-byte aligned operands and index rows.
bool dw_cast_shape_ok(const DwCastLaunch& L);
void dw_cast_launch(const DwCastLaunch& L, cudaStream_t s);

}  // namespace primal::cuda
