#include "train/lut_weight.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace primal::train {

int lut_bits_of(DType t) {
  switch (t) {
    case DType::LUT4: return 4;
    case DType::LUT8: return 8;
    case DType::LUT16: return 16;
    default: fail("type {} is not a LUT type the trainer supports (LUT4, LUT8, LUT16)", dtype_name(t));
  }
}

int LutWeight::bits() const { return lut_bits_of(type); }

int64_t LutWeight::row_bytes() const {
  const int b = bits();
  return b == 4 ? I / 2 : b == 8 ? I : 2 * I;
}

uint32_t LutWeight::get(int64_t o, int64_t i) const {
  const uint8_t* r = idx.data() + o * row_bytes();
  switch (type) {
    case DType::LUT4: return (r[i / 2] >> ((i & 1) * 4)) & 15u;
    case DType::LUT8: return r[i];
    default: return uint32_t(r[2 * i]) << 8 | r[2 * i + 1];
  }
}

void LutWeight::set(int64_t o, int64_t i, uint32_t v) {
  uint8_t* r = idx.data() + o * row_bytes();
  switch (type) {
    case DType::LUT4: {
      const int sh = int(i & 1) * 4;
      r[i / 2] = uint8_t((r[i / 2] & ~(15u << sh)) | ((v & 15u) << sh));
      break;
    }
    case DType::LUT8: r[i] = uint8_t(v); break;
    default:
      r[2 * i] = uint8_t(v >> 8);
      r[2 * i + 1] = uint8_t(v & 255u);
  }
}

template <class F>
void LutWeight::dequantize_rows(int64_t o0, int64_t n, F* dst) const {
  for (int64_t r = 0; r < n; ++r) {
    const int64_t o = o0 + r;
    const float* s = scale.data() + o * groups();
    F* d = dst + r * I;
    if (type == DType::LUT4) {
      const uint8_t* p = idx.data() + o * row_bytes();
      for (int64_t i = 0; i < I; i += 2) {
        const uint8_t b = p[i / 2];
        d[i] = F(s[i / G] * grid[b & 15u]);
        d[i + 1] = F(s[(i + 1) / G] * grid[b >> 4]);
      }
    } else {
      for (int64_t i = 0; i < I; ++i) d[i] = F(s[i / G] * grid[get(o, i)]);
    }
  }
}

template void LutWeight::dequantize_rows<float>(int64_t, int64_t, float*) const;
template void LutWeight::dequantize_rows<double>(int64_t, int64_t, double*) const;

LutWeight LutWeight::make(DType type, int64_t O, int64_t I, int64_t G, std::vector<float> grid,
                          const std::string& what) {
  LutWeight w;
  w.type = type;
  const int b = lut_bits_of(type);
  PRIMAL_CHECK(O > 0 && I > 0, "{}: empty LUT matrix ({} x {})", what, O, I);
  PRIMAL_CHECK(G > 0 && I % G == 0, "{}: group size {} does not divide the row length {}", what, G, I);
  PRIMAL_CHECK(b != 4 || I % 2 == 0, "{}: LUT4 rows need an even length (got {})", what, I);
  PRIMAL_CHECK(int64_t(grid.size()) == (int64_t(1) << b), "{}: a {} grid needs {} entries, got {}", what,
               dtype_name(type), int64_t(1) << b, grid.size());
  for (size_t k = 0; k < grid.size(); ++k) {
    PRIMAL_CHECK(std::isfinite(grid[k]), "{}: grid entry {} is not finite", what, k);
    PRIMAL_CHECK(k == 0 || grid[k] > grid[k - 1], "{}: grid is not strictly ascending at entry {}", what, k);
  }
  w.O = O;
  w.I = I;
  w.G = G;
  w.grid = std::move(grid);
  w.idx.assign(size_t(O * w.row_bytes()), 0);
  w.scale.assign(size_t(O * (I / G)), 0.0f);
  return w;
}

namespace {

// Nearest grid entry to v (grid ascending): binary search on the midpoints.
uint32_t nearest(const std::vector<float>& g, float v) {
  const auto it = std::lower_bound(g.begin(), g.end(), v);
  if (it == g.begin()) return 0;
  if (it == g.end()) return uint32_t(g.size() - 1);
  const size_t k = size_t(it - g.begin());
  return (v - g[k - 1] <= g[k] - v) ? uint32_t(k - 1) : uint32_t(k);
}

}  // namespace

LutWeight quantize_to_lut(const float* W, int64_t O, int64_t I, DType type, int64_t G, std::vector<float> grid,
                          const std::string& what) {
  LutWeight w = LutWeight::make(type, O, I, G, std::move(grid), what);
  const std::vector<float>& g = w.grid;
  const float gmax = g.back(), gmin = g.front();
  static const float kClip[] = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f};
#pragma omp parallel if (O * I >= (1 << 18))
  {
    std::vector<uint32_t> best(static_cast<size_t>(G)), cur(static_cast<size_t>(G));
#pragma omp for schedule(static)
    for (int64_t o = 0; o < O; ++o) {
      for (int64_t gi = 0; gi < I / G; ++gi) {
        const float* x = W + o * I + gi * G;
        float amax = 0, xmax = 0;
        for (int64_t i = 0; i < G; ++i)
          if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), xmax = x[i];
        double best_err = std::numeric_limits<double>::infinity();
        float best_s = 0;
        std::fill(best.begin(), best.end(), nearest(g, 0.0f));
        if (amax > 0) {
          for (float end : {gmax, gmin}) {
            for (float clip : kClip) {
              float s = xmax * clip / end;
              if (!(std::isfinite(s)) || s == 0) continue;
              for (int pass = 0; pass < 2; ++pass) {
                for (int64_t i = 0; i < G; ++i) cur[size_t(i)] = nearest(g, x[i] / s);
                double num = 0, den = 0;  // least-squares refit of s for these indices
                for (int64_t i = 0; i < G; ++i) {
                  num += double(x[i]) * g[cur[size_t(i)]];
                  den += double(g[cur[size_t(i)]]) * g[cur[size_t(i)]];
                }
                if (den > 0 && num != 0) s = float(num / den);
              }
              double err = 0;
              for (int64_t i = 0; i < G; ++i) {
                const double d = double(x[i]) - double(s) * g[cur[size_t(i)]];
                err += d * d;
              }
              if (err < best_err) best_err = err, best_s = s, best = cur;
            }
          }
        }
        w.scale[size_t(o * (I / G) + gi)] = best_s;
        for (int64_t i = 0; i < G; ++i) w.set(o, gi * G + i, best[size_t(i)]);
      }
    }
  }
  return w;
}

std::vector<float> builtin_grid(const std::string& name, int64_t K) {
  if (name == "iq4nl") {
    PRIMAL_CHECK(K == 16, "grid iq4nl has 16 entries, not {}", K);
    static const int kV[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    std::vector<float> g(16);
    for (int k = 0; k < 16; ++k) g[size_t(k)] = float(kV[k]) / 127.0f;
    return g;
  }
  if (name == "uniform") {
    PRIMAL_CHECK(K >= 4 && K <= 65536, "grid uniform: {} entries is out of range", K);
    std::vector<float> g(static_cast<size_t>(K));
    for (int64_t k = 0; k < K; ++k) g[size_t(k)] = float(double(2 * k - K) / double(K));
    return g;
  }
  fail("unknown grid '{}' (the trainer builds iq4nl and uniform; other grids come with a LUT model)", name);
}

}  // namespace primal::train
