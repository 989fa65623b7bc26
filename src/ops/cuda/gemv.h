// Matrix-vector products for decode (one token): y = W x with W in any GPU format, fp32 x and y.
//
//   y[o] = sum_i W[o, i] * xn[i]     xn = x, or RMSNorm(x) * norm_w when norm_w is given:
//                                    xn[i] = (x[i] * (1 / sqrt(mean(x^2) + eps))) * norm_w[i]
// and then, per output mode:
//   Store       out[o] = y[o] (+ bias[o])
//   Accumulate  out[o] += y[o]                         (the residual connection)
//   SwiGLU      out[o] = silu(y_gate[o]) * y_up[o]     (segment 0 is gate, segment 1 is up)
//
// Up to three matrices with the same input (Q, K and V) go in one launch as "segments", each
// with its own output and bias; they must share the format and the input width I.
// Every block keeps the (normalized) input in shared memory and sweeps groups of rows; each row
// is reduced by a group of 8, 16 or 32 lanes chosen from I so that few lanes idle.
#pragma once
#include <cstdint>

#include "ops/cuda/matrix.h"

namespace primal::cuda {

enum class GemvMode { Store, Accumulate, SwiGLU };

struct GemvSegment {
  MatrixView w;
  float* out = nullptr;          // (O)
  const float* bias = nullptr;   // (O) or null; Store only
};

struct GemvParams {
  GemvSegment seg[3];
  int n_seg = 1;
  const float* x = nullptr;       // (I)
  const float* norm_w = nullptr;  // (I) or null: no normalization
  float eps = 1e-5f;
  GemvMode mode = GemvMode::Store;
};

// Throws Error for inconsistent shapes or formats; launches on `s` (capturable in a graph).
void gemv(const GemvParams& p, cudaStream_t s);

// Whether the GEMV of this format rounds its input to int8 per 32 elements (llama.cpp's q8_1:
// dx = max|x| / 127 in fp32, codes = x * (127 / max|x|) rounded to nearest even) and forms the
// products with integer dot products: Q4_0, Q8_0, Q4_K, Q6_K. The result then is that of the
// rounded input, within sum_i |W[o, i]| dx / 2 of the fp32 one. The other formats use fp32 input.
bool gemv_quantizes_input(DType t);

}  // namespace primal::cuda
