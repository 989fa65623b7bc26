// Error-compensating LUT quantization (GPTQ, Frantar et al. 2022, with a LUT grid and group
// scales). The objective is the layer's output error on the calibration activations,
//   E = sum_o (W[o] - Q[o]) H (W[o] - Q[o])^T,   H = mean over tokens of a a^T  (ne0 x ne0)
// instead of the weight error. Each row is quantized one column at a time; the error of column j
// is pushed onto the columns not yet quantized through the inverse of H, which is what makes the
// remaining columns absorb it:
//   U = upper Cholesky factor of H^-1 (H^-1 = U^T U), with H damped by 1% of its mean diagonal;
//   q_j = nearest grid value of w_j / s,   e = (w_j - s q_j) / U[j][j],
//   w_k -= e * U[j][k] for k > j.
// The scale of a group is chosen when the row reaches it, by the scale search of lut_quantize.h on
// the group's current (already compensated) weights with diag(H) as importance. Rows are
// independent and run in parallel.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/lut_quantize.h"

namespace primal {

// U for a (n x n, row-major, symmetric positive semi-definite) H: upper-triangular, row-major.
// Throws when H is not positive definite even after damping.
std::vector<double> gptq_inverse_factor(const std::vector<double>& H, int64_t n, double damp = 0.01);

// W: ne1 rows of ne0 (row-major); H: ne0 x ne0. Same result type as lut_quantize_matrix, whose
// `error` here is E above (the output error), not the weight error.
LutMatrix lut_quantize_matrix_gptq(const float* W, int64_t ne0, int64_t ne1, DType t, int64_t group,
                                   std::vector<float> grid, const std::vector<double>& H);

// E = sum_o (W[o] - Q[o]) H (W[o] - Q[o])^T of a quantized matrix of W.
double output_error(const float* W, const LutMatrix& m, const std::vector<double>& H);
// sum_o W[o] H W[o]^T: the output energy, to make E relative.
double output_energy(const float* W, int64_t ne0, int64_t ne1, const std::vector<double>& H);

}  // namespace primal
