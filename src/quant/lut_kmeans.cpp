#include "quant/fp_exact.h"  // first
#include "quant/lut_kmeans.h"

#include <cmath>

#include "core/half.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"

namespace primal {

double lloyd_step(LutMatrix& m, const float* W, const float* importance) {
  const int64_t K = int64_t(m.grid.size()), ng = m.groups_per_row(), G = m.group;
  // Per grid value: B = sum w s x, C = sum w s^2 (the optimum is B / C).
  std::vector<double> B(size_t(K), 0.0), C(size_t(K), 0.0);
  for (int64_t r = 0; r < m.ne1; ++r)
    for (int64_t k = 0; k < ng; ++k) {
      const double s = f16_to_f32(m.scale[size_t(r * ng + k)]);
      if (s == 0) continue;
      for (int64_t i = k * G; i < (k + 1) * G; ++i) {
        const double w = importance ? double(importance[i]) : 1.0;
        const uint16_t q = m.idx[size_t(r * m.ne0 + i)];
        B[q] += w * s * double(W[r * m.ne0 + i]);
        C[q] += w * s * s;
      }
    }
  std::vector<float> g = m.grid;
  for (int64_t k = 0; k < K; ++k)
    if (C[size_t(k)] > 0) g[size_t(k)] = float(B[size_t(k)] / C[size_t(k)]);
  // The optimum of each value lies inside its own cell, so the order holds; where rounding makes
  // two values meet, the moved one goes back (its share of E then simply does not change).
  for (int64_t k = 0; k < K; ++k) {
    const bool ok = (k == 0 || g[size_t(k)] > g[size_t(k - 1)]) && (k + 1 == K || g[size_t(k)] < g[size_t(k + 1)]);
    if (!ok) g[size_t(k)] = m.grid[size_t(k)];
  }
  // A restored value may still clash with a moved neighbour: fall back to the old grid there.
  for (int64_t k = 1; k < K; ++k)
    if (!(g[size_t(k)] > g[size_t(k - 1)])) g[size_t(k)] = m.grid[size_t(k)], g[size_t(k - 1)] = m.grid[size_t(k - 1)];
  bool sorted = g[0] < 0 && g[size_t(K - 1)] > 0;
  for (int64_t k = 1; k < K && sorted; ++k) sorted = g[size_t(k)] > g[size_t(k - 1)];
  if (sorted) m.grid = std::move(g);
  return lut_requantize(m, W, importance);
}

KMeansResult learn_grid(const float* W, int64_t ne0, int64_t ne1, DType t, int64_t group, const float* importance,
                        int iters) {
  check_lut_shape(t, ne0, group, "learned grid");
  // A strided subset of rows for large tensors: every stride-th row.
  const int64_t stride = std::max<int64_t>(1, (ne0 * ne1 + kLearnWeights - 1) / kLearnWeights);
  std::vector<float> sub;
  const float* X = W;
  int64_t rows = ne1;
  if (stride > 1) {
    rows = (ne1 + stride - 1) / stride;
    sub.resize(size_t(rows * ne0));
    for (int64_t r = 0; r < rows; ++r)
      std::copy(W + r * stride * ne0, W + (r * stride + 1) * ne0, sub.begin() + r * ne0);
    X = sub.data();
  }
  LutMatrix m = lut_quantize_matrix(X, ne0, rows, t, group, nf4_grid(lut_entries(t)), importance);
  KMeansResult res;
  res.errors.push_back(m.error);
  for (int it = 0; it < iters; ++it) {
    const double before = m.error;
    res.errors.push_back(lloyd_step(m, X, importance));
    if (!(m.error < before * (1 - 1e-5))) break;
  }
  res.grid = m.grid;
  return res;
}

}  // namespace primal
