// What the training-attention GPU tests share (test_attention_train_cuda, test_attention_gemm_cuda):
// NaN-poisoned outputs with sentinel guards, norm-relative errors, the term magnitudes M_dq and
// M_dk that dq and dk are measured against (see test_attention_train_cuda.cpp's header), and the
// random inputs, and the attention Shape they take.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gpu_testing.h"

namespace attntest {
using namespace gputest;

// A batch of B sequences of T tokens, NH query heads over KVH KV heads of size HS.
struct Shape {
  int64_t B, T, NH, KVH, HS;
  std::string str() const {
    return "B " + std::to_string(B) + " T " + std::to_string(T) + " NH " + std::to_string(NH) + " KVH " +
           std::to_string(KVH) + " HS " + std::to_string(HS);
  }
};

constexpr float kSq = 1.5f, kSk = 1.5f;  // rms of q and k: scores of rms 2.25, peaked softmax rows
constexpr size_t kGuard = 64;            // floats past every output, which no kernel may write
constexpr float kSentinel = 12345.0f;

inline std::vector<double> widen(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// A device buffer of n floats filled with `fill` (NaN: an element left unwritten shows), followed
// by kGuard sentinels (an element written past the end shows).
inline cuda::DeviceBuffer guarded(size_t n, float fill = std::numeric_limits<float>::quiet_NaN()) {
  std::vector<float> h(n + kGuard, fill);
  std::fill(h.begin() + ptrdiff_t(n), h.end(), kSentinel);
  return to_device(h);
}
// The first n floats; fails the test if a guard float changed.
inline std::vector<float> unguard(const cuda::DeviceBuffer& b, size_t n, const char* what) {
  auto h = to_host<float>(b, n + kGuard);
  for (size_t i = n; i < h.size(); ++i) EXPECT_EQ(h[i], kSentinel) << what << ": written past the end at " << i - n;
  h.resize(n);
  return h;
}

// sqrt(mean((got - want)^2)), +inf where got is not finite.
inline double rms_err(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    e += (got[i] - want[i]) * (got[i] - want[i]);
  }
  return std::sqrt(e / double(want.size()));
}
inline double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s / double(v.size()));
}
// ||got - want|| / ||mag||, +inf where got is not finite.
inline double err_vs(const std::vector<float>& got, const std::vector<double>& want, const std::vector<double>& mag) {
  return rms_err(got, want) / rms(mag);
}

// M_dq, M_dk of the header comment, from the fp64 inputs and the reference out and lse.
template <class Shape>
void term_magnitudes(const Shape& sh, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, const std::vector<double>& dout, const std::vector<double>& out,
                     const std::vector<double>& lse, std::vector<double>& mdq, std::vector<double>& mdk) {
  const int64_t T = sh.T, NH = sh.NH, KVH = sh.KVH, HS = sh.HS, G = NH / KVH;
  const double scale = 1.0 / std::sqrt(double(HS));
  mdq.assign(q.size(), 0.0);
  mdk.assign(k.size(), 0.0);
  for (int64_t b = 0; b < sh.B; ++b)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const size_t qi = size_t(((b * T + t) * NH + h) * HS);
        double D = 0;
        for (int64_t d = 0; d < HS; ++d) D += dout[qi + size_t(d)] * out[qi + size_t(d)];
        for (int64_t j = 0; j <= t; ++j) {
          const size_t kj = size_t(((b * T + j) * KVH + h / G) * HS);
          double s = 0, dp = 0;
          for (int64_t d = 0; d < HS; ++d) {
            s += q[qi + size_t(d)] * k[kj + size_t(d)];
            dp += dout[qi + size_t(d)] * v[kj + size_t(d)];
          }
          const double p = std::exp(s * scale - lse[size_t((b * NH + h) * T + t)]);
          const double w = p * (std::fabs(dp) + std::fabs(D)) * scale;
          for (int64_t d = 0; d < HS; ++d) {
            mdq[qi + size_t(d)] += w * std::fabs(k[kj + size_t(d)]);
            mdk[kj + size_t(d)] += w * std::fabs(q[qi + size_t(d)]);
          }
        }
      }
}

struct Inputs {
  std::vector<float> q, k, v, dout;  // (B, T, NH, HS), (B, T, KVH, HS) x 2, (B, T, NH, HS)
};
template <class Shape>
Inputs make_inputs(const Shape& sh, uint32_t seed) {
  const size_t nq = size_t(sh.B * sh.T * sh.NH * sh.HS), nk = size_t(sh.B * sh.T * sh.KVH * sh.HS);
  return {randn(nq, seed, kSq), randn(nk, seed + 1, kSk), randn(nk, seed + 2), randn(nq, seed + 3)};
}

}  // namespace attntest
