#include "quant/fp_exact.h"  // first: stored values must equal what dequantize_lut_row computes
#include "quant/lut_quantize.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/error.h"
#include "core/half.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"

namespace primal {

LutGrid::LutGrid(std::vector<float> values) : v_(std::move(values)) {
  validate_grid(v_.data(), int64_t(v_.size()), int64_t(v_.size()), "grid");
  for (size_t i = 0; i + 1 < v_.size(); ++i) mid_.push_back(float((double(v_[i]) + double(v_[i + 1])) / 2));
  zero_ = nearest(0.0f);
}

uint16_t LutGrid::nearest(float v) const {
  if (mid_.size() <= 15) {  // small grids: a branchless count of the midpoints at or below v
    int idx = 0;
    for (float m : mid_) idx += v >= m;
    return uint16_t(idx);
  }
  if (std::isnan(v)) return 0;
  return uint16_t(std::upper_bound(mid_.begin(), mid_.end(), v) - mid_.begin());
}

int lut_scale_trials(int64_t K) { return K <= 16 ? 12 : K <= 256 ? 4 : 1; }

double lut_group_error(const LutGrid& g, const float* x, const float* w, int64_t n, uint16_t scale,
                       const uint16_t* idx) {
  const float s = f16_to_f32(scale);
  double e = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(x[i]) - double(s * g[idx[i]]);  // the stored value, rounded as dequantized
    e += (w ? double(w[i]) : 1.0) * d * d;
  }
  return e;
}

double lut_assign_group(const LutGrid& g, const float* x, const float* w, int64_t n, uint16_t scale, uint16_t* idx) {
  const float s = f16_to_f32(scale);
  if (s == 0 || !std::isfinite(s)) {
    for (int64_t i = 0; i < n; ++i) idx[i] = g.nearest_zero();
  } else {
    const float inv = 1.0f / s;
    for (int64_t i = 0; i < n; ++i) idx[i] = g.nearest(x[i] * inv);
  }
  return lut_group_error(g, x, w, n, scale, idx);
}

namespace {

// Weighted least-squares scale for fixed indices: s = sum w x q / sum w q^2 (0 when undefined).
float ls_scale(const LutGrid& g, const float* x, const float* w, int64_t n, const uint16_t* idx) {
  double sxq = 0, sqq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double wi = w ? double(w[i]) : 1.0, q = g[idx[i]];
    sxq += wi * x[i] * q;
    sqq += wi * q * q;
  }
  return sqq > 0 ? float(sxq / sqq) : 0.0f;
}

}  // namespace

double lut_quantize_group(const LutGrid& g, const float* x, const float* w, int64_t n, uint16_t* idx,
                          uint16_t* scale) {
  float amax = 0, xm = 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), xm = x[i];
  std::vector<uint16_t> trial(static_cast<size_t>(n));
  *scale = 0;
  double best = lut_assign_group(g, x, w, n, 0, idx);  // the all-zero answer
  if (!(amax > 1e-30f) || !std::isfinite(amax)) return best;

  // Try scale s (fp32): round to fp16, assign, keep if better; then the same after an LS refit.
  auto consider = [&](float s) {
    for (int pass = 0; pass < 2; ++pass) {
      const uint16_t s16 = f32_to_f16(s);
      const float sf = f16_to_f32(s16);
      if (sf == 0 || !std::isfinite(sf)) return;
      const double e = lut_assign_group(g, x, w, n, s16, trial.data());
      if (e < best) {
        best = e;
        *scale = s16;
        std::copy(trial.begin(), trial.end(), idx);
      }
      s = ls_scale(g, x, w, n, trial.data());
    }
  };
  const int ntry = lut_scale_trials(g.size());
  const float ends[2] = {g[g.size() - 1], g[0]};  // x* onto the top (s has x*'s sign) or the bottom
  for (float end : ends) {
    const float s0 = xm / end;
    // Ratios 1 + t/(4 ntry) for t in [-ntry, ntry/4]: mostly clipping the largest weight (which
    // buys resolution for the many small ones), a little headroom beyond it.
    for (int t = -ntry; t <= std::max(1, ntry / 4); ++t) consider(s0 * (1.0f + float(t) / float(4 * ntry)));
  }
  // Polish the winner: LS refit and re-assignment until it stops improving.
  for (int it = 0; it < 4 && *scale; ++it) {
    const double before = best;
    consider(ls_scale(g, x, w, n, idx));
    if (!(best < before)) break;
  }
  return best;
}

void check_lut_shape(DType t, int64_t ne0, int64_t group, const std::string& what) {
  PRIMAL_CHECK(is_lut(t), "{}: {} is not a LUT type", what, dtype_name(t));
  PRIMAL_CHECK(group > 0 && ne0 > 0 && ne0 % group == 0, "{}: a group of {} does not divide the row of {} weights",
               what, group, ne0);
  const int64_t block = traits(t).block;
  PRIMAL_CHECK(ne0 % block == 0, "{}: {} packs {} indices together, the row of {} is not a multiple", what,
               dtype_name(t), block, ne0);
}

void LutMatrix::dequantize_row(int64_t r, float* dst) const {
  PRIMAL_CHECK(r >= 0 && r < ne1, "LutMatrix: row {} out of range ({} rows)", r, ne1);
  const int64_t ng = groups_per_row();
  for (int64_t k = 0; k < ng; ++k) {
    const float s = f16_to_f32(scale[size_t(r * ng + k)]);
    for (int64_t i = k * group; i < (k + 1) * group; ++i) dst[i] = s * grid[idx[size_t(r * ne0 + i)]];
  }
}

LutMatrix lut_matrix_shell(int64_t ne0, int64_t ne1, DType t, int64_t group, std::vector<float> grid) {
  check_lut_shape(t, ne0, group, "quantize");
  validate_grid(grid.data(), int64_t(grid.size()), lut_entries(t), dtype_name(t));
  LutMatrix m;
  m.type = t;
  m.ne0 = ne0;
  m.ne1 = ne1;
  m.group = group;
  m.grid = std::move(grid);
  m.idx.resize(size_t(ne0 * ne1));
  m.scale.resize(size_t(ne1 * (ne0 / group)));
  return m;
}

LutMatrix lut_quantize_matrix(const float* W, int64_t ne0, int64_t ne1, DType t, int64_t group,
                              std::vector<float> grid, const float* importance) {
  LutMatrix m = lut_matrix_shell(ne0, ne1, t, group, std::move(grid));
  const LutGrid g(m.grid);
  const int64_t ng = ne0 / group;
  // Per-row sums added in row order afterwards: an OpenMP reduction would add in a schedule-dependent
  // order, and the totals must be reproducible (callers compare them across calls).
  std::vector<double> row_err(size_t(ne1), 0.0), row_energy(size_t(ne1), 0.0);
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t r = 0; r < ne1; ++r)
    for (int64_t k = 0; k < ng; ++k) {
      for (int64_t i = k * group; i < (k + 1) * group; ++i)
        row_energy[size_t(r)] += (importance ? double(importance[i]) : 1.0) * double(W[r * ne0 + i]) * W[r * ne0 + i];
      row_err[size_t(r)] += lut_quantize_group(g, W + r * ne0 + k * group, importance ? importance + k * group : nullptr,
                                               group, m.idx.data() + r * ne0 + k * group, m.scale.data() + r * ng + k);
    }
  m.error = std::accumulate(row_err.begin(), row_err.end(), 0.0);
  m.energy = std::accumulate(row_energy.begin(), row_energy.end(), 0.0);
  return m;
}

double lut_requantize(LutMatrix& m, const float* W, const float* importance) {
  const LutGrid g(m.grid);
  const int64_t ng = m.groups_per_row(), G = m.group;
  std::vector<double> row_err(size_t(m.ne1), 0.0);  // summed in row order below, for reproducible totals
#pragma omp parallel
  {
    std::vector<uint16_t> idx(static_cast<size_t>(G));
#pragma omp for schedule(dynamic, 4)
    for (int64_t r = 0; r < m.ne1; ++r)
      for (int64_t k = 0; k < ng; ++k) {
        const float* x = W + r * m.ne0 + k * G;
        const float* w = importance ? importance + k * G : nullptr;
        uint16_t* cur = m.idx.data() + r * m.ne0 + k * G;
        uint16_t& s = m.scale[size_t(r * ng + k)];
        // Candidates: the current answer, the current scale with nearest indices, a fresh search;
        // the best is kept, so E never grows.
        double e = lut_group_error(g, x, w, G, s, cur);
        const double e1 = lut_assign_group(g, x, w, G, s, idx.data());
        if (e1 < e) {
          e = e1;
          std::copy(idx.begin(), idx.end(), cur);
        }
        uint16_t s2;
        const double e2 = lut_quantize_group(g, x, w, G, idx.data(), &s2);
        if (e2 < e) {
          e = e2;
          s = s2;
          std::copy(idx.begin(), idx.end(), cur);
        }
        row_err[size_t(r)] += e;
      }
  }
  m.error = std::accumulate(row_err.begin(), row_err.end(), 0.0);
  return m.error;
}

}  // namespace primal
