#include "ops/cpu/rope.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace primal::cpu {

std::vector<double> rope_inv_freq(int64_t n_rot, double theta, double linear_factor,
                                  const float* freq_factors) {
  PRIMAL_CHECK(n_rot > 0 && n_rot % 2 == 0, "rope: n_rot {} must be positive and even", n_rot);
  PRIMAL_CHECK(theta > 0 && linear_factor > 0, "rope: invalid theta {} or scaling factor {}", theta,
               linear_factor);
  std::vector<double> f(size_t(n_rot / 2));
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    double v = std::pow(theta, -double(2 * i) / double(n_rot)) / linear_factor;
    if (freq_factors) {
      PRIMAL_CHECK(freq_factors[i] > 0, "rope: frequency factor {} of pair {} is not positive",
                   freq_factors[i], i);
      v /= double(freq_factors[i]);
    }
    f[size_t(i)] = v;
  }
  return f;
}

std::vector<float> llama3_freq_factors(int64_t n_rot, double theta, double factor, double low_freq_factor,
                                       double high_freq_factor, double orig_ctx) {
  PRIMAL_CHECK(factor > 0 && low_freq_factor > 0 && high_freq_factor > low_freq_factor && orig_ctx > 0,
               "rope: invalid llama3 scaling (factor {}, low {}, high {}, original context {})", factor,
               low_freq_factor, high_freq_factor, orig_ctx);
  const double low_wavelen = orig_ctx / low_freq_factor;
  const double high_wavelen = orig_ctx / high_freq_factor;
  std::vector<float> out(size_t(n_rot / 2));
  for (int64_t i = 0; i < n_rot / 2; ++i) {
    const double freq = std::pow(theta, -double(2 * i) / double(n_rot));
    const double wavelen = 2 * std::numbers::pi / freq;
    double div = 1;
    if (wavelen > low_wavelen) {
      div = factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (orig_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      div = 1 / ((1 - smooth) / factor + smooth);
    }
    out[size_t(i)] = float(div);
  }
  return out;
}

void rope_forward(float* x, int64_t T, int64_t n_heads, int64_t pos0, const RopeParams& p) {
  const int64_t HS = p.head_dim, half = p.n_rot / 2;
  PRIMAL_CHECK(int64_t(p.inv_freq.size()) == half && p.n_rot <= HS, "rope: inconsistent parameters");
  // The pair (a, b) of index i: offsets (2i, 2i+1) or (i, i + half).
  const int64_t step = p.neox ? 1 : 2, other = p.neox ? half : 1;
#pragma omp parallel for schedule(static) if (T > 1)
  for (int64_t t = 0; t < T; ++t) {
    const double pos = double(pos0 + t);
    for (int64_t i = 0; i < half; ++i) {
      // The angle in fp64: at positions of 10^5 an fp32 product would lose ~0.01 rad.
      const double ang = pos * p.inv_freq[size_t(i)];
      const float c = float(std::cos(ang)), s = float(std::sin(ang));
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * HS + i * step;
        const float a = v[0], b = v[other];
        v[0] = a * c - b * s;
        v[other] = a * s + b * c;
      }
    }
  }
}

}  // namespace primal::cpu
