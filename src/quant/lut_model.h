// `primal quantize`: a float model (F32/F16/BF16 GGUF, or an HF checkpoint folder) into a LUT
// model (quant/lut_format.h). Every matrix (2-D *.weight: the blocks' projections, the token
// embedding and the output head) becomes a LUT tensor; norms and other vectors are copied.
//
// Everything that can be refused is checked before any file is created: the input's types, a
// group that does not divide a row, a grid that does not exist at the format's size, an
// unreadable calibration text. An HF folder is first converted to a temporary GGUF of its own
// float type (io/convert: llama.cpp's names, Q/K permutation and tokenizer metadata; lossless),
// removed afterwards. The output is written under a temporary name and renamed when complete.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor_ref.h"
#include "quant/lut_grid.h"

namespace primal {

class ModelSource;

struct LutQuantOptions {
  DType type = DType::LUT4;         // LUT2..6/8/16 for every matrix (the base width when mixed)
  GridKind grid = GridKind::IQ4NL;
  int64_t group = 32;               // weights per scale; 0 = one scale per row
  std::map<std::string, DType> tensor_types;  // per-matrix overrides (name -> LUT type)
  double mixed_bits = 0;            // > 0: mixed precision under this average (bits per weight)
  std::vector<int64_t> mixed_groups;  // mixed precision: scale groups tried per matrix (empty: group)
  std::string sensitivity_file;     // mixed precision: measured KLs kept here and reused (lut_mixed.h)
  std::string calib;                // calibration text (activation-aware scales, mixed precision)
  bool act_aware = false;           // weight the scale search by the calibration activations
  bool gptq = false;                // error-compensating quantization on the calibration H
  int64_t calib_tokens = 4096;      // tokens of the calibration text used
  int64_t calib_ctx = 512;          // window length of the calibration forward
  int kmeans_iters = 10;            // Lloyd iterations of learned grids
  bool allow_requantize = false;    // accept already quantized inputs (dequantized first)
  std::function<void(const std::string&)> log;  // progress lines; may be empty
};

// One matrix's decision.
struct LutTensorPlan {
  std::string name;
  DType type = DType::LUT4;
  int64_t group = 0;  // resolved (row length for "row")
  int64_t ne0 = 0, ne1 = 0;
};

// The matrices of `src` to quantize and their formats under `o` (without mixed precision).
// Throws, naming the model and tensor, for anything that cannot be quantized as asked.
std::vector<LutTensorPlan> plan_lut_model(const ModelSource& src, const LutQuantOptions& o);

// Bits of a matrix stored as plan p: indices, fp16 scales, and its own grid when learned.
double lut_tensor_bits(const LutTensorPlan& p, bool own_grid);

// Matrix t quantized as p with o's grid (learned: Lloyd's algorithm, o.kmeans_iters); with
// o.act_aware the scale search is weighted by the calibration importance of t's inputs, with
// o.gptq the matrix is quantized by lut_gptq on its input's H (stats may be null without them).
struct LutMatrix;
struct CalibStats;
LutMatrix quantize_planned(const TensorRef& t, const LutTensorPlan& p, const LutQuantOptions& o,
                           const CalibStats* stats);

void quantize_model(const std::string& in, const std::string& out, const LutQuantOptions& o);

}  // namespace primal
