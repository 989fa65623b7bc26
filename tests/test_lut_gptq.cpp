// Error-compensating quantization (quant/lut_gptq.h) and the mixed-precision allocation
// (quant/lut_mixed.h) on synthetic data with known answers.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "quant/lut_grid.h"
#include "quant/lut_gptq.h"
#include "quant/lut_mixed.h"

using namespace primal;

namespace {

// H = mean of a a^T over N samples of correlated inputs a = L z (z standard normal), plus a few
// large-magnitude channels, as the activations before a projection look.
std::vector<double> make_hessian(int64_t n, int64_t N, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> z(0, 1);
  std::vector<double> mix(size_t(n * n));
  for (auto& m : mix) m = z(rng) / std::sqrt(double(n));
  for (int64_t i = 0; i < n; ++i) mix[size_t(i * n + i)] += 1.0;
  std::vector<double> H(size_t(n * n), 0.0), a(static_cast<size_t>(n)), zz(static_cast<size_t>(n));
  for (int64_t s = 0; s < N; ++s) {
    for (auto& v : zz) v = z(rng);
    for (int64_t i = 0; i < n; ++i) {
      double v = 0;
      for (int64_t k = 0; k < n; ++k) v += mix[size_t(i * n + k)] * zz[size_t(k)];
      a[size_t(i)] = v * (i % 17 == 3 ? 8.0 : 1.0);
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < n; ++k) H[size_t(i * n + k)] += a[size_t(i)] * a[size_t(k)] / double(N);
  }
  return H;
}

}  // namespace

TEST(LutGptq, InverseFactorIsTheCholeskyOfTheInverse) {
  const int64_t n = 48;
  const auto H = make_hessian(n, 400, 1);
  const double damp = 0.01;
  const auto U = gptq_inverse_factor(H, n, damp);
  // U upper triangular with a positive diagonal, and U^T U (H + damp * mean diag I) = I.
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += H[size_t(i * n + i)] / double(n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_GT(U[size_t(i * n + i)], 0) << i;
    for (int64_t j = 0; j < i; ++j) EXPECT_EQ(U[size_t(i * n + j)], 0.0) << i << " " << j;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;  // (U^T U Hd)[i][j]
      for (int64_t k = 0; k < n; ++k) {
        double utu = 0;
        for (int64_t m = 0; m <= std::min(i, k); ++m) utu += U[size_t(m * n + i)] * U[size_t(m * n + k)];
        s += utu * (H[size_t(k * n + j)] + (k == j ? damp * mean : 0.0));
      }
      ASSERT_NEAR(s, i == j ? 1.0 : 0.0, 1e-9) << i << " " << j;
    }
  std::vector<double> bad(size_t(4), 0.0);
  bad[0] = 1, bad[3] = -50;  // negative definite direction beyond the damping
  EXPECT_THROW(gptq_inverse_factor(bad, 2), Error);
}

TEST(LutGptq, CompensationLowersTheOutputError) {
  // On correlated inputs the compensated answer must beat the independent one on the output
  // error it minimizes, for every grid.
  const int64_t ne0 = 96, ne1 = 64;
  const auto H = make_hessian(ne0, 600, 2);
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0, 0.02f);
  std::vector<float> W(size_t(ne0 * ne1));
  for (auto& w : W) w = d(rng);
  std::vector<float> diag(static_cast<size_t>(ne0));
  for (int64_t i = 0; i < ne0; ++i) diag[size_t(i)] = float(H[size_t(i * ne0 + i)]);
  for (GridKind k : {GridKind::NF4, GridKind::IQ4NL, GridKind::Prime, GridKind::Uniform}) {
    const auto grid = make_grid(k, 16);
    const LutMatrix plain = lut_quantize_matrix(W.data(), ne0, ne1, DType::LUT4, 32, grid, diag.data());
    const LutMatrix comp = lut_quantize_matrix_gptq(W.data(), ne0, ne1, DType::LUT4, 32, grid, H);
    const double e_plain = output_error(W.data(), plain, H), e_comp = output_error(W.data(), comp, H);
    EXPECT_NEAR(comp.error, e_comp, 1e-9 * e_comp);
    EXPECT_NEAR(comp.energy, output_energy(W.data(), ne0, ne1, H), 1e-9 * comp.energy);
    EXPECT_LT(e_comp, 0.9 * e_plain) << grid_name(k);
    EXPECT_LT(e_comp / comp.energy, 0.02) << grid_name(k);
  }
}

TEST(LutGptq, IdentityHessianIsPlainRounding) {
  // With H = I no column informs another: every index is the nearest grid value for the scale
  // the group search chose, and the error is the weight error.
  const int64_t n = 64, rows = 8;
  std::vector<double> I(size_t(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) I[size_t(i * n + i)] = 1.0;
  std::mt19937 rng(4);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> W(size_t(n * rows));
  for (auto& w : W) w = d(rng);
  const auto grid = nf4_grid(16);
  const LutMatrix a = lut_quantize_matrix_gptq(W.data(), n, rows, DType::LUT4, 32, grid, I);
  const LutMatrix b = lut_quantize_matrix(W.data(), n, rows, DType::LUT4, 32, grid, nullptr);
  EXPECT_EQ(a.idx, b.idx);
  EXPECT_EQ(a.scale, b.scale);
}

TEST(LutMixed, AllocationFollowsTheBestGainPerBit) {
  // Two matrices of 100 weights: A is sensitive, B is not. Widths cost 2, 3, 4, 8 bits a weight.
  auto cand = [](double k2, double k3, double k4, double k8) {
    return std::vector<MixedCandidate>{{DType::LUT2, 200, k2}, {DType::LUT3, 300, k3}, {DType::LUT4, 400, k4},
                                       {DType::LUT8, 800, k8}};
  };
  const std::vector<std::vector<MixedCandidate>> c = {cand(1.0, 0.3, 0.1, 0.001), cand(0.05, 0.02, 0.01, 0.0001)};
  // 700 bits: A goes to 4 bits first (0.9 gain for 200 bits), B to 3 (0.03 for 100).
  EXPECT_EQ(allocate_bits(c, 0, 700), (std::vector<size_t>{2, 1}));
  EXPECT_EQ(allocate_bits(c, 0, 400), (std::vector<size_t>{0, 0}));  // every upgrade needs 100 more
  EXPECT_EQ(allocate_bits(c, 0, 500), (std::vector<size_t>{1, 0}));
  EXPECT_EQ(allocate_bits(c, 0, 1600), (std::vector<size_t>{3, 3}));
  EXPECT_EQ(allocate_bits(c, 100, 700), (std::vector<size_t>{2, 0}));  // fixed bits count
  EXPECT_THROW(allocate_bits(c, 0, 399), Error);                       // not even the narrowest fits
  // A non-convex curve: 3 bits are no better than 2, 4 bits much better; the jump is still found.
  const std::vector<std::vector<MixedCandidate>> nc = {cand(1.0, 1.0, 0.1, 0.09)};
  EXPECT_EQ(allocate_bits(nc, 0, 450), (std::vector<size_t>{2}));
}
