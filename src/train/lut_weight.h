// A LUT weight matrix as the trainer holds it:  W[o, i] = scale[o, i / G] * grid[idx[o, i]]
// with the grid sorted ascending, so that "one bucket up/down" is idx + 1 / idx - 1.
//
// The layout is the one of `primal quantize` (quant/lut_format.h, quant/lut_pack.h): the indices
// are packed exactly as the GGUF tensor stores them (LUT2 four a byte, LUT3 eight in three bytes, LUT5 eight in five, LUT6 four in three,
// LUT4 two a byte low nibble first, LUT8 one byte, LUT16 base byte then fine byte), so loading
// and saving are copies; the trainer only adds single-index get/set for the vote rules. Persistent
// state per weight is the packed index; the scales are fp32 float parameters here (O * I / G of
// them, trained by AdamW; the model file stores them as fp16, checkpoints keep the fp32 values)
// and the grid is fixed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace primal {
struct TensorRef;
struct LutMatrix;
}  // namespace primal

namespace primal::train {

struct LutWeight {
  DType type = DType::LUT4;    // LUT2..LUT6, LUT8 or LUT16
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

  // An empty weight of the given shape and type (indices 0, scales 0); checks the shape against
  // the type's packing, G against I and the grid (quant/lut_grid.h validate_grid). `what` names
  // the tensor in errors.
  static LutWeight make(DType type, int64_t O, int64_t I, int64_t G, std::vector<float> grid, const std::string& what);
  // A quantized matrix of quant/lut_quantize (unpacked indices, fp16 scales), packed.
  static LutWeight from_matrix(const LutMatrix& m, const std::string& grid_name, const std::string& what);
  // A LUT tensor of a loaded model (its scale and grid attached: TensorRef::lut), copied.
  static LutWeight from_tensor(const TensorRef& t, const std::string& grid_name);
};

// Quantize float rows W (O, I) onto `grid` with a scale per G weights, with the quantizer of
// `primal quantize` (quant/lut_quantize.h: scale search judged with the fp16 scale it stores).
LutWeight quantize_to_lut(const float* W, int64_t O, int64_t I, DType type, int64_t G, std::vector<float> grid,
                          const std::string& what);
// The same with a grid by name (quant/lut_grid.h: prime, iq4nl, nf4, uniform, or learned, which
// runs Lloyd's algorithm on W as `primal quantize --grid learned` does).
LutWeight quantize_to_lut(const float* W, int64_t O, int64_t I, DType type, int64_t G, const std::string& grid_name,
                          const std::string& what);

}  // namespace primal::train
