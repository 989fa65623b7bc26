// Quantization of float weights onto a LUT grid: for every group of G weights of a row, an fp16
// scale s and indices such that x[i] ~ s * grid[idx[i]], minimizing the weighted squared error
//   E = sum_i w[i] * (x[i] - s * grid[idx[i]])^2
// where w[i] is the importance of input column i (1 for plain weight error; the mean squared
// activation of that input for the activation-aware option, which makes E the expected squared
// error of the layer's output when inputs are uncorrelated).
//
// Scale search (per group): the element of largest magnitude x* is mapped onto either end of the
// grid (both signs of s: the grids are asymmetric), scaled by a range of clipping ratios; each
// trial assigns every weight to its nearest grid value, is refitted by weighted least squares
// (s = sum w x q / sum w q^2) and re-assigned; a trial is judged with its scale already rounded
// to fp16, i.e. by the error of exactly what is stored. The best trial wins.
#pragma once
#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace primal {

// A sorted grid with a nearest-value lookup.
class LutGrid {
 public:
  explicit LutGrid(std::vector<float> values);  // validated: see validate_grid
  int64_t size() const { return int64_t(v_.size()); }
  const std::vector<float>& values() const { return v_; }
  float operator[](int64_t i) const { return v_[size_t(i)]; }
  // Index of the grid value nearest v (ties to the upper one; NaN gives 0).
  uint16_t nearest(float v) const;
  uint16_t nearest_zero() const { return zero_; }  // the entry nearest 0

 private:
  std::vector<float> v_;
  std::vector<float> mid_;  // (K - 1) midpoints between adjacent values
  uint16_t zero_ = 0;
};

// Trials of the scale search: clipping ratios per sign. More for coarse grids, where the scale
// matters most.
int lut_scale_trials(int64_t K);

// One group: x[0..n), w[0..n) (null: all 1). Writes idx[0..n) and *scale (fp16 bits); returns E
// (computed in fp64 with the stored fp16 scale). An all-zero group gets scale 0 and the index of
// the value nearest 0.
double lut_quantize_group(const LutGrid& g, const float* x, const float* w, int64_t n, uint16_t* idx,
                          uint16_t* scale);

// Indices for a given fp16 scale (nearest grid value to x / s); returns E.
double lut_assign_group(const LutGrid& g, const float* x, const float* w, int64_t n, uint16_t scale, uint16_t* idx);

// E of a group as stored.
double lut_group_error(const LutGrid& g, const float* x, const float* w, int64_t n, uint16_t scale,
                       const uint16_t* idx);

// A quantized matrix in memory: rows of ne0 indices (unpacked), a scale per group.
struct LutMatrix {
  DType type = DType::LUT4;
  int64_t ne0 = 0, ne1 = 0;       // row length (I) and rows (O)
  int64_t group = 0;              // G; ne0 for one scale per row
  std::vector<uint16_t> idx;      // (ne1, ne0)
  std::vector<uint16_t> scale;    // (ne1, ne0 / G) fp16 bits
  std::vector<float> grid;        // (K) ascending
  double error = 0;               // E summed over the matrix
  double energy = 0;              // E of an all-zero answer (the weights' own weighted energy)

  int64_t groups_per_row() const { return ne0 / group; }
  void dequantize_row(int64_t r, float* dst) const;  // dst: ne0 floats
};

// Quantize W: ne1 rows of ne0 floats (row-major), onto `grid` (lut_entries(t) values) with a scale
// per `group` weights (a divisor of ne0); importance: ne0 column weights or null. Rows in
// parallel (OpenMP). Throws for a group that does not divide the row or a grid of the wrong size.
// A matrix of the given shape, type and grid with zeroed indices and scales, after checking that the
// group divides the row and the grid has the type's entry count (refused before any work).
LutMatrix lut_matrix_shell(int64_t ne0, int64_t ne1, DType t, int64_t group, std::vector<float> grid);

LutMatrix lut_quantize_matrix(const float* W, int64_t ne0, int64_t ne1, DType t, int64_t group,
                              std::vector<float> grid, const float* importance);

// Re-assign indices of every group of m for its current grid, keeping the current scale when a
// fresh scale search does no better; returns the new E (never above the old one).
double lut_requantize(LutMatrix& m, const float* W, const float* importance);

// Throws naming `what` unless group divides ne0 and ne0 is whole blocks of t.
void check_lut_shape(DType t, int64_t ne0, int64_t group, const std::string& what);

}  // namespace primal
