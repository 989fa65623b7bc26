// Tensor element types. The numeric values are ggml's (they are what GGUF files store), so a
// DType read from a file is used as is. primal's own LUT types use ids far above ggml's range.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace primal {

enum class DType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
  // primal LUT types: packed indices into a sorted grid, with a scale per group of weights held
  // in companion tensors (layout in quant/lut_format.h). Ids far from ggml's range.
  LUT4 = 1000, LUT8 = 1001, LUT16 = 1002, LUT2 = 1003, LUT3 = 1004, LUT5 = 1005, LUT6 = 1006,
};

struct DTypeTraits {
  const char* name;    // ggml's spelling, e.g. "Q4_K"
  int64_t block;       // elements per block
  size_t block_bytes;  // bytes per block
};

// Traits of a known type, or nullopt for an id primal does not know.
std::optional<DTypeTraits> dtype_traits(uint32_t id);
const DTypeTraits& traits(DType t);  // throws Error for an unknown id
std::string dtype_name(DType t);     // "Q4_K", or "type#N" for unknown ids
std::optional<DType> dtype_from_name(std::string_view name);  // case-insensitive

// Bytes of a row of n elements; throws Error when n is not a multiple of the block size.
size_t row_bytes(DType t, int64_t n);

}  // namespace primal
