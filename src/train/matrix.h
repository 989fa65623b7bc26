// A weight matrix of the training model: either LUT (indices + scales + grid, trained by votes
// and AdamW on the scales) or dense fp32 (embeddings, head, or any float matrix that is kept so).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "train/lut_weight.h"

namespace primal::train {

struct Matrix {
  std::string name;           // llama.cpp tensor name, e.g. "blk.3.attn_q.weight"
  int64_t O = 0, I = 0;       // rows (outputs), row length (inputs)
  std::vector<float> dense;   // (O, I) when not LUT, else empty
  std::shared_ptr<LutWeight> lut;  // when LUT

  bool is_lut() const { return lut != nullptr; }
  // Rows o0 .. o0+n-1 as values, dst (n, I).
  template <class F>
  void rows(int64_t o0, int64_t n, F* dst) const {
    if (lut) return lut->dequantize_rows(o0, n, dst);
    const float* src = dense.data() + o0 * I;
    for (int64_t k = 0; k < n * I; ++k) dst[k] = F(src[k]);
  }
};

// Rows of W per tile in the LUT linear layer: a tile of R rows is dequantized at once (about
// 64K values, in L2) and its weight gradient lives only in a buffer of that size. Depends on I
// only, never on the thread count, so every sum has the same order on any machine.
inline int64_t lut_tile_rows(int64_t I) {
  const int64_t r = 65536 / (I > 0 ? I : 1);
  return r < 1 ? 1 : r > 64 ? 64 : r;
}

}  // namespace primal::train
