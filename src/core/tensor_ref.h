// A read-only view of a stored tensor (in a GGUF mapping or a safetensors mapping).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace primal {

// The companions of a LUT index tensor (types LUT2..LUT6, LUT8, LUT16), found by the loader
// (quant/lut_format.h): W[o, i] = f16(scale[o * ne0 / group + i / group]) * grid[idx[o, i]].
struct LutParams {
  const uint16_t* scale = nullptr;  // (ne1, ne0 / group) fp16
  int64_t group = 0;                // weights per scale
  const float* grid = nullptr;      // (n_grid) strictly ascending
  int64_t n_grid = 0;
};

struct TensorRef {
  std::string name;             // llama.cpp name, e.g. "blk.0.attn_q.weight"
  DType type = DType::F32;
  std::vector<int64_t> ne;      // ggml order: ne[0] is the contiguous (row) dimension
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  LutParams lut;                // LUT types only; empty otherwise

  int64_t nelements() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;
    return n;
  }
  int64_t row_size() const { return ne.empty() ? 1 : ne[0]; }            // elements per row
  int64_t nrows() const { return ne.empty() ? 1 : nelements() / ne[0]; }
  size_t row_stride() const { return nbytes / size_t(nrows()); }         // bytes per row
  const uint8_t* row(int64_t r) const { return data + size_t(r) * row_stride(); }
};

}  // namespace primal
