// The LUT grids (quant/lut_grid.h): every generator value by value where the values are known
// (prime, nf4 against bitsandbytes' published NF4 table, iq4nl, uniform), the structure of the
// large prime grids, and the validation of grids read from files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/lut_grid.h"

using namespace primal;

namespace {

std::vector<float> f(std::initializer_list<double> v) {
  std::vector<float> out;
  for (double x : v) out.push_back(float(x));
  return out;
}

std::string error_of(auto&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(LutGrid, PrimeSixteenIsTheCoreAndThreeBridges) {
  // 0, ±1/p for p = 1, 2, 3, 5, 7, 11, then the midpoints 3/4 (widest gap (1/2, 1), positive first),
  // -3/4 (its mirror) and 5/8 (the gaps of 1/4 nearest 0 are (1/2, 3/4) and its mirror).
  const auto want = f({-1.0, -3.0 / 4, -1.0 / 2, -1.0 / 3, -1.0 / 5, -1.0 / 7, -1.0 / 11, 0.0, 1.0 / 11, 1.0 / 7,
                       1.0 / 5, 1.0 / 3, 1.0 / 2, 5.0 / 8, 3.0 / 4, 1.0});
  EXPECT_EQ(prime_grid(16), want);
  EXPECT_EQ(make_grid(GridKind::Prime, 16), want);
}

TEST(LutGrid, PrimeSmallGridsTakeTheLargestReciprocals) {
  EXPECT_EQ(prime_grid(4), f({-1.0, 0.0, 0.5, 1.0}));  // core 0, ±1; bridge 1/2
  EXPECT_EQ(prime_grid(8), f({-1.0, -0.5, -1.0 / 3, 0.0, 1.0 / 3, 0.5, 0.75, 1.0}));
}

TEST(LutGrid, PrimeLargeGridsRefineEveryGapEvenly) {
  const std::vector<float> core = prime_grid(16);
  for (int64_t K : {256, 65536}) {
    const auto g = prime_grid(K);
    ASSERT_EQ(int64_t(g.size()), K);
    EXPECT_EQ(g.front(), -1.0f);
    EXPECT_EQ(g.back(), 1.0f);
    // The 13 prime values stay exact members (bridges only add).
    for (double p : {1.0, 2.0, 3.0, 5.0, 7.0, 11.0}) {
      EXPECT_TRUE(std::binary_search(g.begin(), g.end(), float(1 / p))) << K << " 1/" << p;
      EXPECT_TRUE(std::binary_search(g.begin(), g.end(), float(-1 / p))) << K << " -1/" << p;
    }
    EXPECT_TRUE(std::binary_search(g.begin(), g.end(), 0.0f));
    // Bridges come in mirrored pairs, positive first: one more positive value than negative.
    const auto pos = std::count_if(g.begin(), g.end(), [](float x) { return x > 0; });
    const auto neg = std::count_if(g.begin(), g.end(), [](float x) { return x < 0; });
    EXPECT_EQ(pos, neg + 1) << K;
    // Always splitting the widest gap leaves no gap more than twice another (up to rounding).
    double lo = 1e9, hi = 0;
    for (size_t i = 1; i < g.size(); ++i) {
      ASSERT_LT(g[i - 1], g[i]) << K << " at " << i;
      lo = std::min(lo, double(g[i]) - double(g[i - 1]));
      hi = std::max(hi, double(g[i]) - double(g[i - 1]));
    }
    EXPECT_LE(hi / lo, 2.0 * (1 + 1e-3)) << K;  // fp32 storage rounds the gaps of the 65536 grid
    EXPECT_GT(hi / lo, 1.9) << K;
  }
}

TEST(LutGrid, Nf4MatchesBitsandbytes) {
  // bitsandbytes' NF4 table (functional.py, also in the QLoRA paper's appendix). It computes the
  // probabilities in fp32, we in fp64: the values agree to 2.5e-7.
  const double nf4[16] = {-1.0,
                          -0.6961928009986877,
                          -0.5250730514526367,
                          -0.39491748809814453,
                          -0.28444138169288635,
                          -0.18477343022823334,
                          -0.09105003625154495,
                          0.0,
                          0.07958029955625534,
                          0.16093020141124725,
                          0.24611230194568634,
                          0.33791524171829224,
                          0.44070982933044434,
                          0.5626170039176941,
                          0.7229568362236023,
                          1.0};
  const auto g = nf4_grid(16);
  ASSERT_EQ(g.size(), 16u);
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(g[size_t(i)], nf4[i], 2.5e-7) << i;
  EXPECT_EQ(g[7], 0.0f);
  EXPECT_EQ(g[0], -1.0f);
  EXPECT_EQ(g[15], 1.0f);
  // Other widths: the same construction, K/2 positive and K/2 - 1 negative values and 0.
  for (int64_t K : {4, 8, 256}) {
    const auto h = nf4_grid(K);
    ASSERT_EQ(int64_t(h.size()), K);
    EXPECT_EQ(std::count_if(h.begin(), h.end(), [](float x) { return x > 0; }), K / 2);
    EXPECT_EQ(std::count_if(h.begin(), h.end(), [](float x) { return x < 0; }), K / 2 - 1);
    EXPECT_EQ(h.back(), 1.0f);
  }
}

TEST(LutGrid, NormalQuantile) {
  EXPECT_EQ(normal_quantile(0.5), 0.0);
  EXPECT_NEAR(normal_quantile(0.975), 1.959963984540054, 1e-13);
  EXPECT_NEAR(normal_quantile(0.001), -3.090232306167814, 1e-13);
  EXPECT_NEAR(normal_quantile(1e-10), -6.361340902404056, 1e-12);
  EXPECT_NEAR(normal_quantile(0.9677083333333334) + normal_quantile(1 - 0.9677083333333334), 0.0, 1e-14);
  EXPECT_THROW(normal_quantile(0.0), Error);
  EXPECT_THROW(normal_quantile(1.0), Error);
}

TEST(LutGrid, Iq4nlAndUniform) {
  EXPECT_EQ(iq4nl_grid(), f({-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}));
  EXPECT_EQ(uniform_grid(4), f({-2, -1, 0, 1}));
  const auto u = uniform_grid(256);
  EXPECT_EQ(u.front(), -128.0f);
  EXPECT_EQ(u.back(), 127.0f);
  EXPECT_EQ(u[128], 0.0f);
  const auto u16 = uniform_grid(65536);
  EXPECT_EQ(u16.front(), -32768.0f);
  EXPECT_EQ(u16.back(), 32767.0f);
}

TEST(LutGrid, NamesAndSizes) {
  for (auto k : {GridKind::Prime, GridKind::IQ4NL, GridKind::NF4, GridKind::Uniform, GridKind::Learned})
    EXPECT_EQ(grid_kind_from_name(grid_name(k)), k);
  EXPECT_EQ(grid_kind_from_name("IQ4_NL"), GridKind::IQ4NL);
  EXPECT_FALSE(grid_kind_from_name("nf5").has_value());
  EXPECT_NE(error_of([] { make_grid(GridKind::IQ4NL, 256); }).find("iq4nl has 16 entries"), std::string::npos);
  EXPECT_THROW(make_grid(GridKind::Learned, 16), Error);
  EXPECT_THROW(prime_grid(2), Error);
  EXPECT_THROW(uniform_grid(7), Error);
  for (auto k : {GridKind::Prime, GridKind::NF4, GridKind::Uniform})
    for (int64_t K : {4, 8, 16, 256, 65536}) {
      const auto g = make_grid(k, K);
      EXPECT_NO_THROW(validate_grid(g.data(), int64_t(g.size()), K, "t")) << grid_name(k) << " " << K;
    }
}

TEST(LutGrid, ValidationNamesTheProblem) {
  auto msg = [](std::vector<float> g, int64_t K) {
    return error_of([&] { validate_grid(g.data(), int64_t(g.size()), K, "file.gguf: W"); });
  };
  EXPECT_NE(msg(uniform_grid(16), 256).find("file.gguf: W: grid has 16 entries, the format needs 256"),
            std::string::npos);
  EXPECT_NE(msg({-1, 1, 0, 2}, 4).find("not strictly ascending at entry 2"), std::string::npos);
  EXPECT_NE(msg({-1, 0, 0, 2}, 4).find("not strictly ascending"), std::string::npos);
  EXPECT_NE(msg({-1, 0, std::numeric_limits<float>::quiet_NaN(), 2}, 4).find("entry 2 is not finite"),
            std::string::npos);
  EXPECT_NE(msg({1, 2, 3, 4}, 4).find("negative and positive"), std::string::npos);
  EXPECT_EQ(msg({-1, 0, 1, 2}, 4), "(no error)");
}
