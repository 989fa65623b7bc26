// Linear layer with a stored (possibly quantized) weight: out = inp W^T (+ bias).
//   out[t, o] = sum_i inp[t, i] * W[o, i] + bias[o]
// W is a tensor of O rows of I elements (ggml order: ne[0] = I, ne[1] = O) in any type that
// quant/dequant.h can dequantize. The weight is never expanded whole: rows are dequantized on the
// fly into a small per-thread tile (prefill: tile + sgemm; decode: row by row + dot products).
#pragma once
#include <cstdint>

#include "core/tensor_ref.h"

namespace primal::cpu {

// out: (T, O); inp: (T, I); bias: (O) or null. Rows of W are split across OpenMP threads.
void matmul_forward(float* out, const float* inp, const TensorRef& w, const float* bias, int64_t T);

}  // namespace primal::cpu
