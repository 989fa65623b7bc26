// primal's LUT models in GGUF (format version 1).
//
// A LUT weight W of ne0 x ne1 (ggml order: ne1 rows of ne0) is three tensors:
//   W          type LUT2..LUT6/LUT8/LUT16, shape [ne0, ne1]: the packed indices
//              (quant/lut_pack.h), so GGUF's fixed per-type block sizes hold;
//   W.scale    F16 [ne0 / G, ne1]: the scale of each group of G consecutive weights of a row
//              (G = ne0 for one scale per row); G is read from this shape;
//   the grid   F32 [K], K = 2^bits, strictly ascending: W.grid when the tensor has its own
//              (learned grids), else the grid shared by all tensors of that type,
//              lut_grid.LUT4 (lut_grid.LUT8, ...).
//   W[o, i] = f16_to_f32(W.scale[o, i / G]) * grid[W[o, i]]   (one fp32 product)
// Metadata (informational; the tensors alone define the weights):
//   primal.lut.version u32 = 1
//   primal.lut.format  str   "lut2", "lut3", "lut4", "lut8", "lut16" or "mixed"
//   primal.lut.grid    str   grid name (quant/lut_grid.h)
//   primal.lut.group   u32   G, 0 for one scale per row
//   primal.lut.mixed_bits f32   the average-bits budget of a mixed-precision model
//   primal.lut.activation_aware bool, primal.lut.gptq bool, primal.lut.calibration str (file
//                      name), when a calibration text was used
// Other tensors (norms F32, anything not quantized) are stored as in the source.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor_ref.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "quant/lut_quantize.h"

namespace primal {

constexpr uint32_t kLutFormatVersion = 1;

std::string lut_scale_name(const std::string& weight);   // "W.scale"
std::string lut_grid_name(const std::string& weight);    // "W.grid"
std::string lut_shared_grid_name(DType t);               // "lut_grid.LUT4"
// True for the companion tensors (scales, grids), which are not model parameters.
bool is_lut_companion(const std::string& name);

// For every LUT tensor in `tensors`, find its scale and grid among them, validate them (types,
// shapes, grid sorted, scales finite) and fill its `lut`. Throws naming `source` and the tensor.
void attach_lut_params(std::vector<TensorRef>& tensors, const std::string& source);

// Add a quantized matrix to a writer: W (packed), W.scale and, when own_grid, W.grid. The matrix
// is produced by `make` when the writer reaches W (so a model is written holding one matrix), and
// released after its last companion is written.
using LutMaker = std::function<LutMatrix()>;
void add_lut_tensors(GgufWriter& w, const std::string& name, DType t, int64_t ne0, int64_t ne1, int64_t group,
                     bool own_grid, LutMaker make);

// A quantized matrix packed as it is stored, in memory, and a TensorRef viewing it (for the
// forward pass: mixed precision runs the model with one matrix swapped for its LUT version).
struct PackedLut {
  std::vector<uint8_t> bytes;    // (ne1, row_bytes(type, ne0))
  std::vector<uint16_t> scale;   // (ne1, ne0 / group) fp16
  std::vector<float> grid;       // (K)
  TensorRef ref;                 // points into the vectors above: do not copy a PackedLut
  PackedLut() = default;
  PackedLut(const PackedLut&) = delete;
  PackedLut& operator=(const PackedLut&) = delete;
};
std::unique_ptr<PackedLut> pack_lut_matrix(const std::string& name, const LutMatrix& m);

// Size of a model file: bits of all tensor data over all parameters (what llama.cpp reports as
// BPW), and the same over the linear layers of the blocks only (blk.*.weight matrices with their
// scales and grids; shared grids shared out by parameter count).
struct LutSizeReport {
  int64_t params = 0, linear_params = 0;
  double bits = 0, linear_bits = 0;
  double bpw() const { return params ? bits / double(params) : 0; }
  double linear_bpw() const { return linear_params ? linear_bits / double(linear_params) : 0; }
};
LutSizeReport model_size_report(const GgufFile& f);

}  // namespace primal
