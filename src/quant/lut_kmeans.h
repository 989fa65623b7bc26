// The "learned" grid: per tensor, Lloyd's algorithm (1-D k-means) on the weights divided by their
// group scales. Starting from nf4's K values and a full scale search, each iteration
//  1. moves every grid value to the weighted least-squares optimum of the weights assigned to it,
//       g_k = sum w s x / sum w s^2   over the weights x (with group scale s) whose index is k
//     (each value minimizes its own share of E exactly; an empty or collapsing one stays), then
//  2. re-quantizes every group with the new grid, keeping its previous answer when no better.
// Both steps can only lower E = sum w (x - s g[idx])^2, so the error is monotone.
// Large tensors learn on a strided subset of their rows (at most kLearnWeights weights), then
// the whole tensor is quantized once with the learned grid.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/lut_quantize.h"

namespace primal {

constexpr int64_t kLearnWeights = int64_t(1) << 20;

struct KMeansResult {
  std::vector<float> grid;      // (K) ascending
  std::vector<double> errors;   // E after the initial quantization and after each iteration
};

// Learn a grid of lut_entries(t) values for W (ne1 rows of ne0; importance as lut_quantize_matrix)
// with `iters` Lloyd iterations on (a subset of) its rows; stops early when an iteration gains
// less than a relative 1e-5.
KMeansResult learn_grid(const float* W, int64_t ne0, int64_t ne1, DType t, int64_t group, const float* importance,
                        int iters);

// One Lloyd iteration on m (step 1 then step 2 above); returns the new E.
double lloyd_step(LutMatrix& m, const float* W, const float* importance);

}  // namespace primal
