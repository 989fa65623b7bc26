// Dequantization on the GPU: weight rows to fp16 (the operand of the prefill GEMMs) and token
// embedding rows to fp32. Values equal the CPU's dequantize_row bit for bit (fp16: that value
// rounded to nearest even).
#pragma once
#include <cstdint>

#include "ops/cuda/matrix.h"

namespace primal::cuda {

// out: (n, I) fp16 row-major = rows r0 .. r0+n-1 of w.
void dequant_rows_f16(const MatrixView& w, int64_t r0, int64_t n, void* out, cudaStream_t s);

// out: (T, I) fp32, row t = w[tokens[t]]; tokens: (T) device ids, each in [0, w.rows) (checked by
// the caller: the kernel clamps nothing). reset_key (optional): set to ~0, the start value of
// argmax_key (so that a decode step needs no separate memset).
void embed_rows(const MatrixView& w, const int32_t* tokens, int64_t T, float* out, cudaStream_t s,
                uint64_t* reset_key = nullptr);

// fp32 -> fp16, n elements (round to nearest even).
void f32_to_f16(const float* in, void* out, int64_t n, cudaStream_t s);

}  // namespace primal::cuda
