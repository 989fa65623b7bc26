#include "quant/lut_grid.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numbers>
#include <queue>

#include "core/error.h"
#include "quant/blocks.h"

namespace primal {

std::optional<GridKind> grid_kind_from_name(std::string_view name) {
  std::string s(name);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (s == "prime") return GridKind::Prime;
  if (s == "iq4nl" || s == "iq4_nl") return GridKind::IQ4NL;
  if (s == "nf4") return GridKind::NF4;
  if (s == "uniform") return GridKind::Uniform;
  if (s == "learned") return GridKind::Learned;
  return std::nullopt;
}

const char* grid_name(GridKind k) {
  switch (k) {
    case GridKind::Prime: return "prime";
    case GridKind::IQ4NL: return "iq4nl";
    case GridKind::NF4: return "nf4";
    case GridKind::Uniform: return "uniform";
    case GridKind::Learned: return "learned";
  }
  return "?";
}

const char* grid_names() { return "prime, iq4nl, nf4, uniform, learned"; }

std::vector<float> prime_grid(int64_t K) {
  PRIMAL_CHECK(K >= 4 && K <= 65536, "prime grid: {} entries (4 to 65536)", K);
  static constexpr int kPrimes[] = {1, 2, 3, 5, 7, 11};  // 1 first: the grid spans [-1, 1]
  const int64_t m = std::min<int64_t>(6, (K - 1) / 2);
  std::vector<double> v = {0.0};
  for (int64_t k = 0; k < m; ++k) {
    v.push_back(1.0 / kPrimes[k]);
    v.push_back(-1.0 / kPrimes[k]);
  }
  std::sort(v.begin(), v.end());
  // Bridges: split the widest gap at its midpoint until K values. A gap is (lo, hi); the queue
  // pops the widest, then the one whose midpoint is nearest 0, then the positive one.
  struct Gap {
    double lo, hi;
  };
  auto before = [](const Gap& a, const Gap& b) {  // true when b is popped before a
    const double wa = a.hi - a.lo, wb = b.hi - b.lo;
    if (wa != wb) return wa < wb;
    const double ma = (a.lo + a.hi) / 2, mb = (b.lo + b.hi) / 2;
    if (std::fabs(ma) != std::fabs(mb)) return std::fabs(ma) > std::fabs(mb);
    return ma < mb;
  };
  std::priority_queue<Gap, std::vector<Gap>, decltype(before)> gaps(before);
  for (size_t i = 0; i + 1 < v.size(); ++i) gaps.push({v[i], v[i + 1]});
  while (int64_t(v.size()) < K) {
    const Gap g = gaps.top();
    gaps.pop();
    const double mid = (g.lo + g.hi) / 2;
    v.push_back(mid);
    gaps.push({g.lo, mid});
    gaps.push({mid, g.hi});
  }
  std::sort(v.begin(), v.end());
  return std::vector<float>(v.begin(), v.end());
}

std::vector<float> iq4nl_grid() { return std::vector<float>(kvalues_iq4nl, kvalues_iq4nl + 16); }

double normal_quantile(double p) {
  PRIMAL_CHECK(p > 0 && p < 1, "normal_quantile: p = {} is outside (0, 1)", p);
  // Acklam's rational approximation (relative error 1.2e-9), then one Halley step on
  // Phi(x) - p, which brings it to full double precision.
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01,  -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  constexpr double lo = 0.02425;
  double x;
  if (p < lo) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - lo) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = std::sqrt(-2 * std::log(1 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  const double e = 0.5 * std::erfc(-x / std::numbers::sqrt2) - p;
  const double u = e * std::sqrt(2 * std::numbers::pi) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

std::vector<float> nf4_grid(int64_t K) {
  PRIMAL_CHECK(K >= 4 && K <= 65536 && K % 2 == 0, "nf4 grid: {} entries (an even number, 4 to 65536)", K);
  const double offset = ((1 - 1 / (2.0 * double(K - 1))) + (1 - 1 / (2.0 * double(K)))) / 2;
  // linspace(offset, 1/2, n)[i] for i < n - 1
  auto lin = [&](int64_t n, int64_t i) { return offset + (0.5 - offset) * double(i) / double(n - 1); };
  std::vector<double> v = {0.0};
  for (int64_t i = 0; i < K / 2; ++i) v.push_back(normal_quantile(lin(K / 2 + 1, i)));
  for (int64_t i = 0; i < K / 2 - 1; ++i) v.push_back(-normal_quantile(lin(K / 2, i)));
  std::sort(v.begin(), v.end());
  const double top = v.back();
  std::vector<float> g;
  for (double x : v) g.push_back(float(x / top));
  return g;
}

std::vector<float> uniform_grid(int64_t K) {
  PRIMAL_CHECK(K >= 4 && K <= 65536 && K % 2 == 0, "uniform grid: {} entries (an even number, 4 to 65536)", K);
  std::vector<float> g;
  for (int64_t i = 0; i < K; ++i) g.push_back(float(i - K / 2));
  return g;
}

std::vector<float> make_grid(GridKind k, int64_t K) {
  switch (k) {
    case GridKind::Prime: return prime_grid(K);
    case GridKind::IQ4NL:
      PRIMAL_CHECK(K == 16, "grid iq4nl has 16 entries (lut4 only); this format needs {}", K);
      return iq4nl_grid();
    case GridKind::NF4: return nf4_grid(K);
    case GridKind::Uniform: return uniform_grid(K);
    case GridKind::Learned: fail("grid 'learned' is computed from the weights (lut_kmeans), not generated");
  }
  fail("unknown grid kind");
}

void validate_grid(const float* g, int64_t n, int64_t K, const std::string& what) {
  PRIMAL_CHECK(n == K, "{}: grid has {} entries, the format needs {}", what, n, K);
  for (int64_t i = 0; i < n; ++i) {
    PRIMAL_CHECK(std::isfinite(g[i]), "{}: grid entry {} is not finite", what, i);
    PRIMAL_CHECK(i == 0 || g[i - 1] < g[i], "{}: grid is not strictly ascending at entry {} ({} after {})", what,
                 i, g[i], g[i - 1]);
  }
  PRIMAL_CHECK(g[0] < 0 && g[n - 1] > 0, "{}: grid must hold negative and positive values ({} ... {})", what, g[0],
               g[n - 1]);
}

}  // namespace primal
