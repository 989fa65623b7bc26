// A read-only view of a stored tensor (in a GGUF mapping or a safetensors mapping).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace primal {

struct TensorRef {
  std::string name;             // llama.cpp name, e.g. "blk.0.attn_q.weight"
  DType type = DType::F32;
  std::vector<int64_t> ne;      // ggml order: ne[0] is the contiguous (row) dimension
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

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
