// Index packing of the LUT tensor types (core/dtype: LUT2, LUT3, LUT4, LUT5, LUT6, LUT8, LUT16) and the
// dequantization of a LUT row. A row of n weights is n indices, packed in order:
//   LUT2  4 indices a byte: index 4j+k in bits 2k..2k+1 of byte j        (n a multiple of 4)
//   LUT3  8 indices in 3 bytes: bytes 3j..3j+2 are a little-endian 24-bit word holding
//         index 8j+k in bits 3k..3k+2                                   (n a multiple of 8)
//   LUT4  2 indices a byte: index 2j in the low nibble of byte j, 2j+1 in the high nibble
//   LUT5  8 indices in 5 bytes: bytes 5j..5j+4 are a little-endian 40-bit word holding
//         index 8j+k in bits 5k..5k+4                                   (n a multiple of 8)
//   LUT6  4 indices in 3 bytes: bytes 3j..3j+2 are a little-endian 24-bit word holding
//         index 4j+k in bits 6k..6k+5                                   (n a multiple of 4)
//   LUT8  1 byte an index
//   LUT16 2 bytes an index, as in the seeds: the base byte (idx >> 8) first, then the fine
//         byte (idx & 255). With a grid sorted ascending the base byte alone is a coarse
//         256-level index into every 256th grid entry.
// W[o, i] = scale[o, i / G] * grid[idx[o, i]], one fp32 product of the fp16 scale (as fp32)
// and the fp32 grid value.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace primal {

bool is_lut(DType t);
int lut_bits(DType t);          // 2, 3, 4, 5, 6, 8 or 16; throws for other types
int64_t lut_entries(DType t);   // 1 << lut_bits
DType lut_type_for_bits(int bits);  // 2, 3, 4, 5, 6, 8, 16; throws otherwise

// dst: row_bytes(t, n) bytes; n a multiple of the type's block (throws otherwise, or for an
// index >= lut_entries(t)).
void pack_lut_row(DType t, const uint16_t* idx, uint8_t* dst, int64_t n);
void unpack_lut_row(DType t, const uint8_t* src, uint16_t* idx, int64_t n);

// dst[i] = f16(scale[i / group]) * grid[idx[i]] for i < n; scale holds n / group fp16 values,
// grid lut_entries(t) floats. n a multiple of group and of the type's block.
void dequantize_lut_row(DType t, const uint8_t* src, const uint16_t* scale, int64_t group, const float* grid,
                        float* dst, int64_t n);

}  // namespace primal
