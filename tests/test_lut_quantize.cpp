// The LUT quantizer (quant/lut_quantize.h, quant/lut_kmeans.h): weights that lie on a grid come
// back exactly, the scale search beats the plain absmax scale, the learned grid lowers the error
// at every Lloyd iteration, and shapes that do not fit are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "quant/dequant.h"
#include "quant/lut_grid.h"
#include "quant/lut_kmeans.h"
#include "quant/lut_pack.h"
#include "quant/lut_quantize.h"

using namespace primal;

namespace {

const DType kLut[] = {DType::LUT2, DType::LUT3, DType::LUT4, DType::LUT5, DType::LUT6, DType::LUT8, DType::LUT16};

std::vector<float> gaussian(size_t n, uint32_t seed, float sigma = 0.02f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Weights with a few outliers per row, as real projection matrices have.
std::vector<float> heavy_tailed(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> d(4.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = 0.01f * d(rng);
  return v;
}

}  // namespace

TEST(LutQuantize, NearestIsTheClosestValue) {
  const LutGrid g(prime_grid(16));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.5f, 1.5f);
  for (int k = 0; k < 20000; ++k) {
    const float v = u(rng);
    const uint16_t i = g.nearest(v);
    for (int64_t j = 0; j < g.size(); ++j) ASSERT_LE(std::fabs(v - g[i]), std::fabs(v - g[j]) + 1e-7f) << v;
  }
  const LutGrid big(uniform_grid(65536));
  EXPECT_EQ(big.nearest(0.4f), 32768);
  EXPECT_EQ(big.nearest(0.5f), 32769);  // ties to the upper value
  EXPECT_EQ(big.nearest(-1e9f), 0);
  EXPECT_EQ(big.nearest(1e9f), 65535);
  EXPECT_EQ(big.nearest_zero(), 32768);
}

TEST(LutQuantize, ValuesOnTheGridAreLossless) {
  std::mt19937 rng(5);
  for (DType t : kLut)
    for (GridKind k : {GridKind::Prime, GridKind::NF4, GridKind::Uniform, GridKind::IQ4NL}) {
      if (k == GridKind::IQ4NL && t != DType::LUT4) continue;
      const int64_t K = lut_entries(t), G = 32, rows = 8;
      const auto grid = make_grid(k, K);
      // The entry of largest magnitude is in every group (its scale is then found exactly).
      const uint16_t far = std::fabs(grid.front()) >= std::fabs(grid.back()) ? 0 : uint16_t(K - 1);
      std::uniform_int_distribution<int> pick(0, int(K) - 1);
      std::uniform_real_distribution<float> mag(1e-4f, 0.1f);
      std::vector<float> W(size_t(G * rows));
      std::vector<uint16_t> want_idx(W.size());
      for (int64_t r = 0; r < rows; ++r) {
        const uint16_t s = f32_to_f16(mag(rng) * (r % 3 == 1 ? -1.0f : 1.0f));
        for (int64_t i = 0; i < G; ++i) {
          const uint16_t q = i == (r * 5) % G ? far : uint16_t(pick(rng));
          want_idx[size_t(r * G + i)] = q;
          W[size_t(r * G + i)] = f16_to_f32(s) * grid[q];
        }
      }
      const LutMatrix m = lut_quantize_matrix(W.data(), G, rows, t, G, grid, nullptr);
      EXPECT_EQ(m.error, 0.0) << dtype_name(t) << " " << grid_name(k);
      std::vector<float> back(static_cast<size_t>(G));
      for (int64_t r = 0; r < rows; ++r) {
        m.dequantize_row(r, back.data());
        for (int64_t i = 0; i < G; ++i)
          ASSERT_EQ(back[size_t(i)], W[size_t(r * G + i)]) << dtype_name(t) << " " << grid_name(k) << " row " << r;
      }
    }
}

TEST(LutQuantize, ZeroGroupsAndZeroWeights) {
  const LutGrid g(nf4_grid(16));
  std::vector<float> x(32, 0.0f);
  std::vector<uint16_t> idx(32);
  uint16_t s = 0x1234;
  EXPECT_EQ(lut_quantize_group(g, x.data(), nullptr, 32, idx.data(), &s), 0.0);
  EXPECT_EQ(s, 0);
  for (auto i : idx) EXPECT_EQ(g[i], 0.0f);
}

TEST(LutQuantize, ScaleSearchBeatsAbsmax) {
  // The plain scale maps the largest weight onto the grid's end; the search must never do worse
  // on any group and clearly better overall (clipping pays on heavy tails).
  for (GridKind k : {GridKind::Prime, GridKind::IQ4NL, GridKind::NF4, GridKind::Uniform}) {
    const LutGrid g(make_grid(k, 16));
    const auto W = heavy_tailed(32 * 2000, 9);
    double searched = 0, plain = 0;
    std::vector<uint16_t> idx(32);
    for (size_t b = 0; b < W.size() / 32; ++b) {
      const float* x = W.data() + 32 * b;
      uint16_t s;
      const double e = lut_quantize_group(g, x, nullptr, 32, idx.data(), &s);
      float xm = 0;
      for (int i = 0; i < 32; ++i)
        if (std::fabs(x[i]) > std::fabs(xm)) xm = x[i];
      const float end = std::fabs(g[0]) > std::fabs(g[15]) ? g[0] : g[15];
      const double e0 = lut_assign_group(g, x, nullptr, 32, f32_to_f16(xm / end), idx.data());
      ASSERT_LE(e, e0) << grid_name(k) << " block " << b;
      searched += e;
      plain += e0;
    }
    EXPECT_LT(searched, 0.95 * plain) << grid_name(k) << " " << searched / plain;
  }
}

TEST(LutQuantize, ImportanceShiftsTheErrorToUnimportantColumns) {
  // With column weights, the weighted error falls and the error of the heavy columns falls more.
  const int64_t ne0 = 64, ne1 = 256;
  const auto W = gaussian(size_t(ne0 * ne1), 13);
  std::vector<float> imp(static_cast<size_t>(ne0), 1.0f);
  for (int64_t i = 0; i < ne0; i += 4) imp[size_t(i)] = 50.0f;
  const auto grid = make_grid(GridKind::NF4, 16);
  const LutMatrix plain = lut_quantize_matrix(W.data(), ne0, ne1, DType::LUT4, 32, grid, nullptr);
  const LutMatrix aware = lut_quantize_matrix(W.data(), ne0, ne1, DType::LUT4, 32, grid, imp.data());
  auto weighted = [&](const LutMatrix& m) {
    double e = 0;
    std::vector<float> row(static_cast<size_t>(ne0));
    for (int64_t r = 0; r < ne1; ++r) {
      m.dequantize_row(r, row.data());
      for (int64_t i = 0; i < ne0; ++i) {
        const double d = double(row[size_t(i)]) - W[size_t(r * ne0 + i)];
        e += imp[size_t(i)] * d * d;
      }
    }
    return e;
  };
  EXPECT_NEAR(weighted(aware), aware.error, 1e-9 * aware.error);
  EXPECT_LT(weighted(aware), 0.95 * weighted(plain));
}

TEST(LutKMeans, ErrorFallsAtEveryIteration) {
  for (DType t : {DType::LUT3, DType::LUT4, DType::LUT8}) {
    const int64_t ne0 = 128, ne1 = 512;
    const auto W = heavy_tailed(size_t(ne0 * ne1), 17);
    const KMeansResult r = learn_grid(W.data(), ne0, ne1, t, 32, nullptr, 8);
    ASSERT_GE(r.errors.size(), 3u) << dtype_name(t);
    for (size_t i = 1; i < r.errors.size(); ++i)
      EXPECT_LE(r.errors[i], r.errors[i - 1] * (1 + 1e-12)) << dtype_name(t) << " iteration " << i;
    EXPECT_LT(r.errors.back(), 0.97 * r.errors.front()) << dtype_name(t);
    EXPECT_NO_THROW(validate_grid(r.grid.data(), int64_t(r.grid.size()), lut_entries(t), "learned"));
    // The learned grid quantizes the whole tensor better than the nf4 grid it started from.
    const LutMatrix a = lut_quantize_matrix(W.data(), ne0, ne1, t, 32, r.grid, nullptr);
    const LutMatrix b = lut_quantize_matrix(W.data(), ne0, ne1, t, 32, nf4_grid(lut_entries(t)), nullptr);
    EXPECT_LT(a.error, b.error) << dtype_name(t);
  }
}

TEST(LutKMeans, RequantizeNeverRaisesTheError) {
  const int64_t ne0 = 64, ne1 = 64;
  const auto W = gaussian(size_t(ne0 * ne1), 19);
  LutMatrix m = lut_quantize_matrix(W.data(), ne0, ne1, DType::LUT4, 16, uniform_grid(16), nullptr);
  const double before = m.error;
  m.grid = nf4_grid(16);  // a different grid: the old indices are far from optimal for it
  const double after = lut_requantize(m, W.data(), nullptr);
  EXPECT_GT(after, 0);
  EXPECT_LE(lut_requantize(m, W.data(), nullptr), after);
  EXPECT_LT(after, 4 * before);
}

TEST(LutQuantize, RefusesShapesThatDoNotFit) {
  std::vector<float> W(704 * 2, 0.5f);
  try {
    lut_quantize_matrix(W.data(), 704, 2, DType::LUT4, 128, nf4_grid(16), nullptr);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a group of 128 does not divide the row of 704 weights"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(lut_quantize_matrix(W.data(), 704, 2, DType::LUT8, 64, nf4_grid(16), nullptr), Error);  // grid size
  EXPECT_THROW(lut_quantize_matrix(W.data(), 12, 2, DType::LUT3, 12, nf4_grid(8), nullptr), Error);  // 8 per 3 bytes
  EXPECT_THROW(lut_quantize_matrix(W.data(), 704, 2, DType::Q4_0, 32, nf4_grid(16), nullptr), Error);
}
