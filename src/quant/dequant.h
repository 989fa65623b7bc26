// Block formats of ggml, on the CPU: dequantize rows of any supported type to fp32, and quantize
// fp32 rows into the types primal writes. Layouts follow ggml-common.h (block sizes in core/dtype).
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/tensor_ref.h"

namespace primal {

bool can_dequantize(DType t);
// dst[0..n) = dequantized src; n a multiple of the type's block size. Throws
// "unsupported tensor type X" for types without a CPU dequantizer.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Row r of a 2-D (or higher) tensor into dst (ne[0] floats).
void dequantize_tensor_row(const TensorRef& t, int64_t r, float* dst);

bool can_quantize(DType t);
// dst = quantized src (row_bytes(t, n) bytes); n a multiple of the block size.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace primal
