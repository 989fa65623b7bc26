// A LUT weight matrix as the trainer holds it:  W[o, i] = scale[o, i / G] * grid[idx[o, i]]
// with the grid sorted ascending, so that "one bucket up/down" is idx + 1 / idx - 1.
//
// Persistent state per weight is only the packed index (LUT4: half a byte); the scales are fp32
// float parameters (O * I / G of them, trained by AdamW) and the grid is fixed. The indices are
// packed exactly as the GGUF tensor stores them (LUT4: index 2j in the low nibble of byte j, 2j+1
// in the high nibble; LUT8: one byte; LUT16: base byte idx >> 8 then fine byte idx & 255), so
// loading and saving are copies.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace primal::train {

struct LutWeight {
  DType type = DType::LUT4;    // LUT4, LUT8 or LUT16
  int64_t O = 0, I = 0;        // rows, row length
  int64_t G = 0;               // weights per scale; divides I (G = I: one scale per row)
  std::vector<float> grid;     // (K) strictly ascending, K = 2^bits
  std::string grid_name;       // informational ("iq4nl", "learned", ...)
  std::vector<uint8_t> idx;    // (O, row_bytes()) packed indices
  std::vector<float> scale;    // (O, I / G)

  int bits() const;
  int64_t K() const { return int64_t(1) << bits(); }
  int64_t groups() const { return I / G; }     // scales per row
  int64_t row_bytes() const;                   // packed bytes of one row of indices

  uint32_t get(int64_t o, int64_t i) const;
  void set(int64_t o, int64_t i, uint32_t v);  // v < K
  // Rows o0 .. o0+n-1 dequantized into dst (n, I): one product of the fp32 scale and grid value,
  // rounded once to F.
  template <class F>
  void dequantize_rows(int64_t o0, int64_t n, F* dst) const;

  // An empty weight of the given shape and type (indices 0, scales 0); checks G divides I and
  // the grid has K ascending entries. `what` names the tensor in errors.
  static LutWeight make(DType type, int64_t O, int64_t I, int64_t G, std::vector<float> grid, const std::string& what);
};

int lut_bits_of(DType t);  // 4, 8, 16; throws for other types

// Quantize float rows W (O, I) onto `grid` with a scale per G weights: per group, the scale is
// chosen among a few clipping ratios of max|w| (mapped onto either end of the grid) and refitted
// by least squares; indices are the nearest grid values. A plain weight-error quantizer for
// training from float models and random init; `primal quantize` (quant/) has the better ones.
LutWeight quantize_to_lut(const float* W, int64_t O, int64_t I, DType type, int64_t G, std::vector<float> grid,
                          const std::string& what);

// Grids the trainer can build by itself (for --init random and float models): "iq4nl" (16
// entries: llama.cpp's IQ4_NL levels / 127), "uniform" (K evenly spaced values in [-1, 1 - 2/K]).
std::vector<float> builtin_grid(const std::string& name, int64_t K);

}  // namespace primal::train
