// Quantize -> dequantize on synthetic data: error bounds derived from each format, lossless
// round trips of values already on a format's grid (quantize(dequantize(b)) == b), the parallel
// row helpers, and vec_dot_row against dequantize + a plain dot product.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "quant/dequant.h"
#include "quant_spec.h"

using namespace primal;

namespace {

constexpr double kU16 = 1.0 / 2048;  // fp16 unit roundoff 2^-11: |fp16(v) - v| <= kU16 * |v|

// Rows of test data, n floats each: Gaussian at several scales, heavy-tailed, a lone outlier,
// all positive, all negative, constant, all zero.
std::vector<std::vector<float>> test_rows(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.f, 1.f);
  std::uniform_real_distribution<float> unif(0.05f, 1.f);
  std::vector<std::vector<float>> rows;
  for (float s : {0.02f, 1.f, 7.f}) {
    std::vector<float> r(static_cast<size_t>(n));
    for (float& v : r) v = s * gauss(rng);
    rows.push_back(r);
  }
  std::vector<float> r(static_cast<size_t>(n));
  for (float& v : r) v = 0.1f * gauss(rng) / std::sqrt(unif(rng));  // heavy tails
  rows.push_back(r);
  for (float& v : r) v = 0.01f * gauss(rng);
  r[size_t(n) / 3] = 2.5f;  // outlier
  rows.push_back(r);
  for (float& v : r) v = 0.5f + std::fabs(gauss(rng));
  rows.push_back(r);
  for (float& v : r) v = -0.25f - 0.1f * std::fabs(gauss(rng));
  rows.push_back(r);
  rows.push_back(std::vector<float>(size_t(n), 0.375f));
  rows.push_back(std::vector<float>(size_t(n), 0.f));
  return rows;
}

std::vector<float> roundtrip(DType t, const std::vector<float>& x, std::vector<uint8_t>* bytes = nullptr) {
  std::vector<uint8_t> q(row_bytes(t, int64_t(x.size())));
  quantize_row(t, x.data(), q.data(), int64_t(x.size()));
  std::vector<float> y(x.size());
  dequantize_row(t, q.data(), y.data(), int64_t(x.size()));
  if (bytes) *bytes = q;
  return y;
}

}  // namespace

// Q8_0: d = amax/127, q = round(x/d), stored d' = fp16(d). Per element
//   |x - d'q| <= |x - dq| + |q||d - d'| <= d/2 + 127 * kU16 * d,
// plus fp32 rounding in x/d (via 1/d) and in d'q: a few ulps of 127d, covered by 127 * 2^-21 * d.
// Q4_0 / Q5_0: d = max/-N (max the signed largest-magnitude element, N = 8 or 16), codes
// q = min(2N-1, floor(x/d + N + 0.5)), value d'(q - N). With v = x/d in [-N, N]: the error is
// |d|/2 while v <= N - 1/2 and at most |d| above (the top level is N - 1: the code 2N is cut),
// plus N * kU16 * |d| for fp16(d).
// Q4_1 / Q5_1: d = (max - min)/M (M = 15 or 31), q = floor((x - min)/d + 1/2) <= M, value
// d'q + m', m' = fp16(min): error <= d/2 + M * kU16 * d + kU16 * |min|.
TEST(QuantRoundTrip, LegacyFormatsWithinDerivedBounds) {
  const int64_t n = 512;
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q5_0, DType::Q4_1, DType::Q5_1}) {
    int checked = 0;
    for (const auto& x : test_rows(n, 11)) {
      const auto y = roundtrip(t, x);
      for (int64_t b = 0; b < n; b += 32) {
        const float* xb = x.data() + b;
        float amax = 0, smax = 0, mn = xb[0], mx = xb[0];
        for (int i = 0; i < 32; ++i) {
          if (std::fabs(xb[i]) > amax) amax = std::fabs(xb[i]), smax = xb[i];
          mn = std::min(mn, xb[i]), mx = std::max(mx, xb[i]);
        }
        for (int i = 0; i < 32; ++i) {
          const double e = std::fabs(double(xb[i]) - y[size_t(b + i)]);
          double bound;
          if (t == DType::Q8_0) {
            const double d = amax / 127.0;
            bound = d / 2 + 127 * kU16 * d + 127 * d * 0x1p-21;
          } else if (t == DType::Q4_0 || t == DType::Q5_0) {
            const double N = t == DType::Q4_0 ? 8 : 16, d = std::fabs(smax) / N;
            const double v = smax != 0 ? xb[i] / (smax / -N) : 0;
            bound = (v <= N - 0.5 ? d / 2 : d) + N * kU16 * d + N * d * 0x1p-21;
          } else {
            const double M = t == DType::Q4_1 ? 15 : 31, d = (double(mx) - mn) / M;
            bound = d / 2 + M * kU16 * d + kU16 * std::fabs(mn) + (M * d + std::fabs(mn)) * 0x1p-21;
          }
          EXPECT_LE(e, bound) << dtype_name(t) << " element " << b + i << " x=" << xb[i] << " y=" << y[size_t(b + i)];
          ++checked;
        }
      }
    }
    EXPECT_EQ(checked, 9 * 512) << dtype_name(t);
  }
}

// IQ4_NL picks, among 16 candidate code assignments, the one whose weighted least-squares scale
// fits best (weights w = x^2), then re-codes every weight to the nearest level of that scale.
// One candidate maps the largest-magnitude element onto -127, i.e. the naive quantizer with
// scale dn = -max/127 and nearest levels; refitting its scale and re-coding can only lower the
// weighted error. So per block, with E(.) = sum w (x - .)^2:
//   sqrt(E(x')) <= sqrt(E(naive)) + sqrt(sum w) * 127 * |d| * kU16   (the last term: fp16(d)),
// up to fp32 rounding in the sums (a relative 1e-5 of sum w x^2 is allowed for it).
TEST(QuantRoundTrip, IQ4_NLNoWorseThanNaiveScale) {
  const int64_t n = 512;
  int blocks = 0;
  for (const auto& x : test_rows(n, 12)) {
    std::vector<uint8_t> bytes;
    const auto y = roundtrip(DType::IQ4_NL, x, &bytes);
    for (int64_t b = 0; b < n; b += 32) {
      const float* xb = x.data() + b;
      float amax = 0, smax = 0;
      for (int i = 0; i < 32; ++i)
        if (std::fabs(xb[i]) > amax) amax = std::fabs(xb[i]), smax = xb[i];
      const double d = f16_to_f32(uint16_t(bytes[size_t(b / 32 * 18)] | bytes[size_t(b / 32 * 18 + 1)] << 8));
      const double dn = -double(smax) / 127;
      double e_naive = 0, e = 0, sw = 0, swx2 = 0;
      for (int i = 0; i < 32; ++i) {
        const double w = double(xb[i]) * xb[i];
        double best = 1e300;
        for (int v : qspec::kIQ4NL) best = std::min(best, std::fabs(xb[i] - dn * v));
        e_naive += w * best * best;
        e += w * (xb[i] - y[size_t(b + i)]) * (xb[i] - y[size_t(b + i)]);
        sw += w;
        swx2 += w * xb[i] * xb[i];
      }
      EXPECT_LE(std::sqrt(e), std::sqrt(e_naive + 1e-5 * swx2) + std::sqrt(sw) * 127 * std::fabs(d) * kU16 * 1.01)
          << "block " << b / 32;
      ++blocks;
    }
  }
  EXPECT_EQ(blocks, 9 * 16);
}

// K-quants: the last step of every reference quantizer re-codes each weight to the nearest level
// of its sub-block's *stored* scale (and min), so each decoded weight is the level nearest to the
// input among all levels of its sub-block (up to fp32 rounding in (x + m)/d). The levels are
// computed from the block's bytes by the test's own decoder.
TEST(QuantRoundTrip, KQuantsPickNearestStoredLevel) {
  const int64_t n = 1024;
  for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    int lo, hi;
    qspec::code_range(t, &lo, &hi);
    int checked = 0;
    for (const auto& x : test_rows(n, 13)) {
      std::vector<uint8_t> bytes;
      const auto y = roundtrip(t, x, &bytes);
      const size_t bb = traits(t).block_bytes;
      for (int64_t b = 0; b < n / 256; ++b) {
        const qspec::Block k = qspec::decode(t, bytes.data() + size_t(b) * bb);
        for (int i = 0; i < 256; ++i) {
          const double xi = x[size_t(b * 256 + i)];
          double nearest = 1e300, span = 0;
          for (int q = lo; q <= hi; ++q) {
            nearest = std::min(nearest, std::fabs(xi - qspec::level(k, i, q)));
            span = std::max(span, std::fabs(qspec::level(k, i, q)));
          }
          const double e = std::fabs(xi - y[size_t(b * 256 + i)]);
          EXPECT_LE(e, nearest + 1e-6 * (span + std::fabs(xi)))
              << dtype_name(t) << " block " << b << " element " << i << " x=" << xi;
          ++checked;
        }
      }
    }
    EXPECT_EQ(checked, 9 * 1024) << dtype_name(t);
  }
}

// K-quants, overall accuracy on Gaussian rows. A round-to-nearest grid of step D leaves an RMS
// error of about D/sqrt(12). The nominal step of each format over a sub-block is
//   Q2_K: (max - min(min, 0))/3   Q4_K: .../15   Q5_K: .../31   (16, 32, 32 weights)
//   Q3_K: amax/4                  Q6_K: amax/32                 (16 weights)
// The scale searches move the step to trade clipped outliers against a finer grid, and the
// sub-block scales are quantized to 4-8 bits, so we allow the measured RMS error to be up to
// 1.3x the nominal one (on the reference model Q4_K and Q6_K measure 0.88x and 0.93x).
TEST(QuantRoundTrip, KQuantsRmsErrorNearNominal) {
  const int64_t n = 256 * 64;
  std::mt19937 rng(14);
  std::normal_distribution<float> gauss(0.f, 0.05f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = gauss(rng);
  for (DType t : {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    const auto y = roundtrip(t, x);
    const int group = qspec::sub_size(t);
    const double div = t == DType::Q2_K ? 3 : t == DType::Q3_K ? 4 : t == DType::Q4_K ? 15 : t == DType::Q5_K ? 31 : 32;
    const bool offset = qspec::has_mins(t);
    double err2 = 0, pred2 = 0;
    for (int64_t g = 0; g < n; g += group) {
      float mn = 0, mx = x[size_t(g)], amax = 0;
      for (int i = 0; i < group; ++i) {
        const float v = x[size_t(g + i)];
        mn = std::min(mn, v), mx = std::max(mx, v), amax = std::max(amax, std::fabs(v));
        err2 += double(v - y[size_t(g + i)]) * double(v - y[size_t(g + i)]);
      }
      const double D = offset ? (double(mx) - mn) / div : amax / div;
      pred2 += group * D * D / 12;
    }
    const double ratio = std::sqrt(err2 / pred2);
    EXPECT_LE(ratio, 1.3) << dtype_name(t);
    EXPECT_GE(ratio, 0.5) << dtype_name(t);
    std::printf("%-5s RMS error / nominal %.3f  (relative RMS %.4f)\n", dtype_name(t).c_str(), ratio,
                std::sqrt(err2 / double(n)) / 0.05);
  }
}

namespace {

// A random block of type t whose values lie on the format's grid in the way its quantizer can
// reproduce (see LosslessOnGrid).
qspec::Block on_grid_block(DType t, std::mt19937& rng) {
  auto pick = [&](int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); };
  auto sign = [&] { return pick(0, 1) ? 1.f : -1.f; };
  qspec::Block k;
  k.type = t;
  const int n = qspec::block_size(t), ss = qspec::sub_size(t);
  int lo, hi;
  qspec::code_range(t, &lo, &hi);
  const float mag = std::ldexp(1.f + float(pick(0, 1023)) / 1024, pick(-12, 0));  // a full 11-bit fp16 value
  // Which code must be present in every group (the one that fixes the scale), and the group size.
  int anchor = lo, group = n;
  switch (t) {
    case DType::Q8_0:
      lo = -127;  // -128 never comes out: the largest magnitude maps to 127
      anchor = pick(0, 1) ? 127 : -127;
      k.d = f32_to_f16(mag);
      break;
    case DType::Q4_0: case DType::Q5_0: case DType::IQ4_NL:
      k.d = f32_to_f16(sign() * mag);
      break;
    case DType::Q4_1: case DType::Q5_1:
      k.d = f32_to_f16(mag);
      k.dmin = f32_to_f16(sign() * mag * float(pick(1, 20)));  // not 0: -0 would not come back
      break;
    default:  // K-quants
      group = ss;
      k.d = f32_to_f16(qspec::has_mins(t) ? mag : sign() * mag);
      k.dmin = qspec::has_mins(t) ? f32_to_f16(mag * float(pick(1, 4)) / 4) : uint16_t(0);
      break;
  }
  for (int i = 0; i < n; ++i) k.q.push_back(pick(lo, hi));
  for (int g = 0; g < n; g += group) {
    k.q[size_t(g + pick(0, group - 1))] = anchor;
    if (t == DType::Q4_1 || t == DType::Q5_1 || qspec::has_mins(t)) {
      // offset formats: both ends of the code range in every group, at distinct places
      int a = pick(0, group - 1), b;
      do b = pick(0, group - 1); while (b == a);
      k.q[size_t(g + a)] = lo;
      k.q[size_t(g + b)] = hi;
    }
  }
  if (ss) {
    int slo, shi;
    qspec::scale_range(t, &slo, &shi);
    const int nsub = n / ss;
    for (int j = 0; j < nsub; ++j) {
      int s;
      do s = pick(t == DType::Q3_K || t == DType::Q6_K ? slo + 1 : 1, shi); while (s == 0);
      k.sc.push_back(s);
      if (qspec::has_mins(t)) k.mn.push_back(pick(0, shi));
    }
    // The super-scale is fixed by the largest sub-scale: it must be the end of the range that the
    // quantizer maps it to (-32 for Q3_K, -128 for Q6_K, the maximum for the others).
    k.sc[size_t(pick(0, nsub - 1))] = t == DType::Q3_K || t == DType::Q6_K ? slo : shi;
    if (qspec::has_mins(t)) k.mn[size_t(pick(0, nsub - 1))] = shi;
  }
  // Q2_K has only 4 levels per sub-block of 16, and two ways to lose uniqueness: a sub-block
  // holding only codes 0 and 3 (two distinct values fit exactly with codes 0 and 2 as well), or
  // a weight decoding to exactly 0 (the fit weighs by |x|, so it counts for nothing). Either way
  // a second fit is as good as the first and the search may pick it; draw again.
  if (t == DType::Q2_K)
    for (int i = 0; i < n; ++i) {
      bool inner = false;
      for (int j = i / 16 * 16; j < i / 16 * 16 + 16; ++j) inner |= k.q[size_t(j)] == 1 || k.q[size_t(j)] == 2;
      if (qspec::value(k, i) == 0 || !inner) return on_grid_block(t, rng);
    }
  return k;
}

}  // namespace

// Values already on a format's grid quantize back to the same bytes, for the blocks a
// quantizer can reproduce: the scale is set by the element (or sub-scale) of largest magnitude,
// so that one has to sit on the code the quantizer maps it to:
//  - Q8_0: some |q| = 127; Q4_0 / Q5_0 / IQ4_NL: the lowest code (-8, -16, index 0) present
//    (either sign of d); Q4_1 / Q5_1: both 0 and the top code present.
//  - K-quants: in every sub-block the lowest code present (and for the offset formats the top
//    code too), no zero sub-scale, and the largest sub-scale (and min) at the end of its range
//    that the quantizer uses (63 / 15, or -32 for Q3_K, -128 for Q6_K). Q2_K also needs three
//    distinct codes per sub-block and no value exactly 0 (see on_grid_block).
// Then the scale search finds the exact scale, the super-scales are recovered exactly and every
// code rounds back to itself. Also checks that the decoded floats are unchanged.
TEST(QuantRoundTrip, LosslessOnGrid) {
  std::mt19937 rng(15);
  for (DType t : {DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL, DType::Q2_K,
                  DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    const int nblocks = 64, n = qspec::block_size(t);
    std::vector<uint8_t> bytes;
    for (int b = 0; b < nblocks; ++b) {
      const auto e = qspec::encode(on_grid_block(t, rng));
      bytes.insert(bytes.end(), e.begin(), e.end());
    }
    std::vector<float> x(size_t(nblocks * n)), y(x.size());
    dequantize_row(t, bytes.data(), x.data(), int64_t(x.size()));
    std::vector<uint8_t> again(bytes.size());
    quantize_row(t, x.data(), again.data(), int64_t(x.size()));
    dequantize_row(t, again.data(), y.data(), int64_t(y.size()));
    const size_t bb = traits(t).block_bytes;
    int differ = 0;
    for (int b = 0; b < nblocks; ++b) differ += std::memcmp(&bytes[b * bb], &again[b * bb], bb) != 0;
    EXPECT_EQ(differ, 0) << dtype_name(t) << ": " << differ << " of " << nblocks << " blocks re-quantize differently";
    EXPECT_EQ(x, y) << dtype_name(t);
  }
}

// NaN and infinities are garbage in, but must not be undefined behaviour (float -> int
// conversions of non-finite values), crash or hang: every quantizer finishes and finite blocks
// of the same row are unaffected.
TEST(QuantRoundTrip, NonFiniteInputsAreContained) {
  for (DType t : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL, DType::Q2_K,
                  DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    const int64_t blk = traits(t).block;
    std::vector<float> x = test_rows(2 * blk, 19)[1];
    x[1] = NAN;
    x[2] = INFINITY;
    x[3] = -INFINITY;
    std::vector<float> clean(x.begin() + blk, x.end());
    std::vector<uint8_t> bytes, clean_bytes;
    roundtrip(t, x, &bytes);
    roundtrip(t, clean, &clean_bytes);
    const size_t bb = traits(t).block_bytes;
    EXPECT_EQ(std::memcmp(bytes.data() + bb, clean_bytes.data(), bb), 0) << dtype_name(t);
  }
}

// The float formats: F32 is the identity, F16 and BF16 round to nearest even once.
TEST(QuantRoundTrip, FloatFormats) {
  const auto x = test_rows(64, 16)[1];
  EXPECT_EQ(roundtrip(DType::F32, x), x);
  const auto h = roundtrip(DType::F16, x), b = roundtrip(DType::BF16, x);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(h[i], f16_to_f32(f32_to_f16(x[i])));
    EXPECT_EQ(b[i], bf16_to_f32(f32_to_bf16(x[i])));
    EXPECT_LE(std::fabs(h[i] - x[i]), kU16 * std::fabs(x[i]) + 0x1p-25);  // + half the fp16 subnormal step
  }
}

// quantize_rows and dequantize_tensor (parallel over rows) give the bytes and floats of the
// row-by-row functions.
TEST(QuantRoundTrip, RowHelpersMatchSingleRows) {
  const int64_t rows = 37, cols = 512;
  std::mt19937 rng(17);
  std::normal_distribution<float> gauss(0.f, 1.f);
  std::vector<float> x(size_t(rows * cols));
  for (float& v : x) v = gauss(rng);
  for (DType t : {DType::Q4_K, DType::Q8_0, DType::IQ4_NL, DType::F16}) {
    const size_t rb = row_bytes(t, cols);
    std::vector<uint8_t> all(rb * size_t(rows)), one(rb);
    ASSERT_EQ(quantize_rows(t, x.data(), all.data(), rows, cols), all.size());
    for (int64_t r = 0; r < rows; ++r) {
      quantize_row(t, x.data() + r * cols, one.data(), cols);
      EXPECT_EQ(std::memcmp(one.data(), all.data() + size_t(r) * rb, rb), 0) << dtype_name(t) << " row " << r;
    }
    TensorRef ref;
    ref.name = "w";
    ref.type = t;
    ref.ne = {cols, rows};
    ref.data = all.data();
    ref.nbytes = all.size();
    std::vector<float> dense(x.size()), row(static_cast<size_t>(cols));
    dequantize_tensor(ref, dense.data());
    for (int64_t r = 0; r < rows; r += 9) {
      dequantize_tensor_row(ref, r, row.data());
      EXPECT_TRUE(std::equal(row.begin(), row.end(), dense.begin() + r * cols)) << dtype_name(t) << " row " << r;
    }
  }
}

// vec_dot_row against dequantize + a dot product in double. Within each block of B products
// (B = 32 for the per-element float types) fp32 summation errs by at most about B * 2^-24 *
// sum |a_i x_i|; the block sums add up in double and the result is rounded to fp32 once.
TEST(QuantVecDot, MatchesDequantizedDot) {
  std::mt19937 rng(18);
  std::normal_distribution<float> gauss(0.f, 1.f);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                  DType::Q8_0, DType::IQ4_NL, DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    const int64_t blk = traits(t).block;
    // Lengths: one block, a length that is not a multiple of the 256-element decode chunk (or
    // for the per-element types not a multiple of 32 either), and a long row.
    for (int64_t n : {blk == 1 ? int64_t(37) : blk, blk == 256 ? int64_t(768) : blk == 1 ? int64_t(300) : int64_t(288),
                      int64_t(4096)}) {
      std::vector<float> w(static_cast<size_t>(n)), x(static_cast<size_t>(n)), a(static_cast<size_t>(n));
      for (float& v : w) v = gauss(rng);
      for (float& v : x) v = gauss(rng);
      std::vector<uint8_t> q(row_bytes(t, n));
      quantize_row(t, w.data(), q.data(), n);
      dequantize_row(t, q.data(), a.data(), n);
      double ref = 0, mag = 0;
      for (int64_t i = 0; i < n; ++i) ref += double(a[size_t(i)]) * x[size_t(i)], mag += std::fabs(double(a[size_t(i)]) * x[size_t(i)]);
      const double B = double(std::max<int64_t>(blk, 32));
      const double got = vec_dot_row(t, q.data(), x.data(), n);
      EXPECT_LE(std::fabs(got - ref), (B + 1) * 0x1p-24 * mag + 0x1p-24 * std::fabs(ref)) << dtype_name(t) << " n=" << n;
    }
  }
  EXPECT_EQ(vec_dot_row(DType::Q8_0, nullptr, nullptr, 0), 0.0f);
}
