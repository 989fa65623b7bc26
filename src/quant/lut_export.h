// `primal export`: a primal model (LUT or float GGUF) as a standard GGUF that llama.cpp runs, its
// matrices in IQ4_NL, Q8_0 or F16.
//
// Exact where the formats coincide (the dequantized weights are bit-identical):
//   IQ4_NL  from LUT4 with a group of 32 and the iq4nl grid (the integers -127 ... 113): the block
//           scale is the LUT scale and the codes are the indices (d * kvalues[q] is the same fp32
//           product as scale * grid[idx]);
//   Q8_0    from LUT8 with a group of 32 and the uniform grid (-128 ... 127): q = idx - 128.
// Any other matrix is dequantized to fp32 and quantized again with ggml's reference quantizer for
// the target type (F16: rounded to nearest). Vectors (norms) are copied; the LUT companions
// (scales, grids) and primal.* metadata are dropped, general.file_type is set as llama-quantize
// sets it. Checks run before the output is created; it is written under a temporary name.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "core/dtype.h"
#include "core/tensor_ref.h"

namespace primal {

struct ExportOptions {
  DType type = DType::IQ4_NL;  // IQ4_NL, Q8_0 or F16 for the matrices
  std::function<void(const std::string&)> log;
};

struct ExportReport {
  int64_t exact = 0;        // matrices carried over without any change of their values
  int64_t requantized = 0;  // matrices dequantized and quantized again
};

// True when matrix t (a LUT tensor with its params attached) converts to `type` without loss.
bool lut_exports_exactly(const TensorRef& t, DType type);
// One row of t in `type` (row_bytes(type, ne0) bytes at dst).
void export_row(const TensorRef& t, int64_t r, DType type, uint8_t* dst);

ExportReport export_model(const std::string& in, const std::string& out, const ExportOptions& o);

// llama.cpp's general.file_type for a model whose matrices are `t`: F16 1, Q8_0 7, IQ4_NL 25.
uint32_t llama_ftype_for(DType t);

}  // namespace primal
