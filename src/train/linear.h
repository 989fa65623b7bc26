// The linear layer of the trainer, for LUT and dense matrices: out = inp W^T (+ bias).
//   out[n, o]  = sum_i inp[n, i] W[o, i] + bias[o]
//   dinp[n, i] = sum_o dout[n, o] W[o, i]             (LUT: through the dequantized W, the
//                                                      straight-through estimator)
//   dW[o, i]   = sum_n dout[n, o] inp[n, i]
//   dscale[o, g] = sum_{i in group g} dW[o, i] grid[idx[o, i]]   (LUT scales)
// A LUT weight gradient is never formed for the whole matrix: it is produced for a tile of R rows
// (matrix.h: lut_tile_rows) and handed at once to a LutTileSink, which turns it into integer votes.
//
// Work split: the forward by (row block of inp, tile of W); dinp by row blocks of inp, each
// summing the tiles of W in order; dW by tiles. Every output element is written by one task,
// and block sizes depend on shapes only, so results do not depend on the thread count.
#pragma once
#include <cstdint>

#include "train/matrix.h"

namespace primal::train {

template <class F>
class LutTileSink {
 public:
  virtual ~LutTileSink() = default;
  // dW: (rows, I), the gradient of the loss with respect to the values W[o0 .. o0+rows-1, :].
  // Called from several threads at once, for disjoint row ranges of the same matrix.
  virtual void tile(const Matrix& m, int64_t o0, int64_t rows, const F* dW) = 0;
  // After every tile of one backward call on m (one thread).
  virtual void done(const Matrix& m) {}
};

// Where the gradients of one linear layer go; null members are not computed.
template <class F>
struct LinearGrad {
  F* dW = nullptr;                 // dense W: (O, I), accumulated
  F* dscale = nullptr;             // LUT W: (O, I / G), accumulated
  F* dbias = nullptr;              // (O), accumulated
  LutTileSink<F>* sink = nullptr;  // LUT W: the index gradient, tile by tile
  bool any() const { return dW || dscale || dbias || sink; }
};

// out: (N, O); inp: (N, I); bias: (O) or null.
template <class F>
void linear_forward(F* out, const F* inp, int64_t N, const Matrix& W, const float* bias);

// dinp: (N, I), overwritten (accumulate = false) or added to; null: not computed.
// dout: (N, O); inp: (N, I) the forward input.
template <class F>
void linear_backward(F* dinp, bool accumulate, const F* dout, const F* inp, int64_t N, const Matrix& W,
                     const LinearGrad<F>& g);

}  // namespace primal::train
