// Block formats of ggml, on the CPU: dequantize rows of any supported type to fp32, quantize
// fp32 rows into the types primal writes, and dot a quantized row with an fp32 vector.
// Layouts follow ggml-common.h (quant/blocks.h; block sizes in core/dtype).
//
// Dequantizable: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
// IQ4_NL; results are bit-identical to ggml's dequantize_row_*.
// Quantizable: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL,
// following ggml's reference quantizers (what llama-quantize runs without an importance matrix),
// so that the same floats give the same bytes.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/tensor_ref.h"

namespace primal {

bool can_dequantize(DType t);
// As can_dequantize(t.type), and true for a LUT tensor whose scale and grid are attached
// (TensorRef::lut; LUT rows cannot be decoded from their bytes alone).
bool can_dequantize(const TensorRef& t);
// dst[0..n) = dequantized src; n a multiple of the type's block size. Throws
// "unsupported tensor type X" for types without a CPU dequantizer.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Row r of a 2-D (or higher) tensor into dst (ne[0] floats); LUT tensors through their lut params.
void dequantize_tensor_row(const TensorRef& t, int64_t r, float* dst);
// All rows of a tensor, dst (nrows, ne[0]) row-major; rows in parallel (OpenMP).
void dequantize_tensor(const TensorRef& t, float* dst);

bool can_quantize(DType t);
// dst = quantized src (row_bytes(t, n) bytes); n a multiple of the block size.
void quantize_row(DType t, const float* src, void* dst, int64_t n);
// nrows rows of n_per_row floats, src (nrows, n_per_row) row-major, into nrows consecutive
// quantized rows; rows in parallel (OpenMP). Returns the bytes written,
// nrows * row_bytes(t, n_per_row). Same bytes as quantize_row row by row.
size_t quantize_rows(DType t, const float* src, void* dst, int64_t nrows, int64_t n_per_row);

// sum_i dequant(row)[i] * x[i] for a row of n elements of type t (any dequantizable type).
// The row is decoded a chunk of whole blocks at a time; products are summed in fp32 within each
// block and the block sums in fp64, so the result is within fp32 rounding of the exact dot of the
// dequantized row with x.
float vec_dot_row(DType t, const void* row, const float* x, int64_t n);

}  // namespace primal
