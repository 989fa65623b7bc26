// The CPU reference ops against plain fp64 loops written here from the formulas, on small random
// shapes, plus exact identities (one-hot inputs through the matmul, RoPE layouts, decode == prefill).
//
// Tolerances: an fp32 dot product of n terms has |error| <= gamma_n * sum_i |x_i w_i| with
// gamma_n = n u / (1 - n u), u = 2^-24 (Higham, any summation order, FMA only helps); we use
// (n + 2) u * sum|x w| to cover the rounding of the final scaling as well.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/tensor_ref.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/softmax.h"
#include "ops/cpu/swiglu.h"
#include "quant/dequant.h"

using namespace primal;

namespace {

constexpr double kU = 1.0 / 16777216.0;  // unit roundoff of fp32, 2^-24

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A 2-D weight (O rows of I elements) of the given type, quantized from fp32 values.
struct OwnedTensor {
  std::vector<uint8_t> bytes;
  TensorRef ref;
  std::vector<float> deq;  // (O, I) the values the op must see
};

OwnedTensor make_weight(DType type, int64_t O, int64_t I, uint32_t seed) {
  OwnedTensor t;
  const auto src = randn(size_t(O * I), seed, 0.5f);
  const size_t rb = row_bytes(type, I);
  t.bytes.resize(rb * size_t(O));
  for (int64_t o = 0; o < O; ++o) quantize_row(type, src.data() + o * I, t.bytes.data() + size_t(o) * rb, I);
  t.ref = TensorRef{"test.weight", type, {I, O}, t.bytes.data(), t.bytes.size()};
  t.deq.resize(size_t(O * I));
  for (int64_t o = 0; o < O; ++o) dequantize_tensor_row(t.ref, o, t.deq.data() + o * I);
  return t;
}

}  // namespace

TEST(RmsNorm, MatchesFp64Formula) {
  const int64_t T = 5, C = 67;
  const auto x = randn(size_t(T * C), 1, 3.0f), w = randn(size_t(C), 2);
  std::vector<float> y(size_t(T * C));
  cpu::rmsnorm_forward(y.data(), x.data(), w.data(), T, C, 1e-5f);
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += double(x[t * C + c]) * x[t * C + c];
    const double s = 1.0 / std::sqrt(ss / C + 1e-5);
    for (int64_t c = 0; c < C; ++c) {
      const double want = double(x[t * C + c]) * s * w[c];
      // three fp32 roundings (scale, x * scale, * w) of a value of size |want|
      EXPECT_NEAR(y[t * C + c], want, 4 * kU * std::fabs(want) + 1e-30) << t << "," << c;
    }
  }
}

TEST(RmsNorm, InPlaceEqualsOutOfPlace) {
  const int64_t T = 3, C = 32;
  auto x = randn(size_t(T * C), 3), w = randn(size_t(C), 4);
  std::vector<float> y(size_t(T * C));
  cpu::rmsnorm_forward(y.data(), x.data(), w.data(), T, C, 1e-6f);
  cpu::rmsnorm_forward(x.data(), x.data(), w.data(), T, C, 1e-6f);
  EXPECT_EQ(x, y);
}

TEST(SwiGlu, MatchesFp64Formula) {
  const int64_t N = 1000;
  const auto g = randn(size_t(N), 5, 4.0f), u = randn(size_t(N), 6);
  std::vector<float> y(static_cast<size_t>(N));
  cpu::swiglu_forward(y.data(), g.data(), u.data(), N);
  for (int64_t i = 0; i < N; ++i) {
    const double want = double(g[i]) / (1 + std::exp(-double(g[i]))) * u[i];
    // exp, add, divide, multiply: a few ulps of fp32 (libm's expf is within 1 ulp)
    EXPECT_NEAR(y[i], want, 8 * kU * std::fabs(want) + 1e-30) << i;
  }
}

TEST(Rope, MatchesFp64RotationInBothLayouts) {
  const int64_t T = 4, NH = 3, HS = 16, pos0 = 7;
  for (bool neox : {false, true}) {
    for (int64_t n_rot : {int64_t(16), int64_t(8)}) {
      cpu::RopeParams p;
      p.head_dim = HS;
      p.n_rot = n_rot;
      p.neox = neox;
      p.inv_freq = cpu::rope_inv_freq(n_rot, 10000.0, 1.0, nullptr);
      const auto x0 = randn(size_t(T * NH * HS), 7);
      auto x = x0;
      cpu::rope_forward(x.data(), T, NH, pos0, p);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < NH; ++h) {
          const float* a = x0.data() + (t * NH + h) * HS;
          const float* b = x.data() + (t * NH + h) * HS;
          std::vector<double> want(a, a + HS);
          for (int64_t i = 0; i < n_rot / 2; ++i) {
            const double ang = double(pos0 + t) * std::pow(10000.0, -2.0 * double(i) / double(n_rot));
            const int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + n_rot / 2 : 2 * i + 1;
            want[size_t(i0)] = a[i0] * std::cos(ang) - a[i1] * std::sin(ang);
            want[size_t(i1)] = a[i0] * std::sin(ang) + a[i1] * std::cos(ang);
          }
          for (int64_t d = 0; d < HS; ++d)
            EXPECT_NEAR(b[d], want[size_t(d)], 4 * kU * (std::fabs(a[d]) + 4)) << neox << " " << n_rot << " d=" << d;
        }
    }
  }
}

// llama.cpp's converter permutes the Q/K rows of each head so that the "pairs" layout applied to
// the permuted vector is the "halves" (HF) layout applied to the original: element (i) of the
// first half goes to 2i, element (i + d/2) to 2i + 1. Both must give the same numbers, bit for bit.
TEST(Rope, PairsLayoutOnPermutedRowsEqualsHalvesLayout) {
  const int64_t T = 3, NH = 2, HS = 32, pos0 = 100;
  cpu::RopeParams p;
  p.head_dim = HS;
  p.n_rot = HS;
  p.inv_freq = cpu::rope_inv_freq(HS, 500000.0, 1.0, nullptr);
  const auto x = randn(size_t(T * NH * HS), 8);
  auto perm = [&](const std::vector<float>& v) {
    std::vector<float> out(v.size());
    for (int64_t r = 0; r < T * NH; ++r)
      for (int64_t i = 0; i < HS / 2; ++i) {
        out[size_t(r * HS + 2 * i)] = v[size_t(r * HS + i)];
        out[size_t(r * HS + 2 * i + 1)] = v[size_t(r * HS + i + HS / 2)];
      }
    return out;
  };
  auto halves = x;
  p.neox = true;
  cpu::rope_forward(halves.data(), T, NH, pos0, p);
  auto pairs = perm(x);
  p.neox = false;
  cpu::rope_forward(pairs.data(), T, NH, pos0, p);
  EXPECT_EQ(pairs, perm(halves));
}

TEST(Rope, PositionZeroIsIdentityAndScalingDividesFrequencies) {
  cpu::RopeParams p;
  p.head_dim = p.n_rot = 8;
  p.inv_freq = cpu::rope_inv_freq(8, 10000.0, 1.0, nullptr);
  const auto x0 = randn(16, 9);
  auto x = x0;
  cpu::rope_forward(x.data(), 1, 2, 0, p);
  EXPECT_EQ(x, x0);
  // linear scaling by 4 at position 8 == no scaling at position 2
  const auto a = cpu::rope_inv_freq(8, 10000.0, 4.0, nullptr);
  for (size_t i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(a[i] * 4.0, p.inv_freq[i]);
  const float ff[4] = {1.0f, 2.0f, 4.0f, 8.0f};
  const auto b = cpu::rope_inv_freq(8, 10000.0, 1.0, ff);
  for (size_t i = 0; i < 4; ++i) EXPECT_DOUBLE_EQ(b[i] * ff[i], p.inv_freq[i]);
}

// Llama 3.1's published scaling (factor 8, low 1, high 4, original context 8192, theta 500000,
// head 128): the 64 divisors are 1 for wavelengths below 2048, 8 above 8192, blended between.
TEST(Rope, Llama3FrequencyFactors) {
  const auto f = cpu::llama3_freq_factors(128, 500000.0, 8.0, 1.0, 4.0, 8192.0);
  ASSERT_EQ(f.size(), 64u);
  for (size_t i = 0; i < f.size(); ++i) {
    const double wavelen = 2 * M_PI * std::pow(500000.0, 2.0 * double(i) / 128.0);
    if (wavelen < 2048) EXPECT_EQ(f[i], 1.0f) << i;
    else if (wavelen > 8192) EXPECT_EQ(f[i], 8.0f) << i;
    else {
      const double s = (8192.0 / wavelen - 1.0) / 3.0;
      EXPECT_NEAR(f[i], 1.0 / ((1 - s) / 8.0 + s), 1e-6) << i;
    }
  }
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[63], 8.0f);
}

namespace {
// Naive causal GQA attention in fp64.
std::vector<double> attention_ref(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, int64_t T, int64_t pos0, int64_t NH, int64_t KVH,
                                  int64_t HS) {
  std::vector<double> out(size_t(T * NH * HS), 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < NH; ++h) {
      const int64_t kvh = h / (NH / KVH), p = pos0 + t;
      std::vector<double> s(size_t(p + 1));
      double mx = -1e300;
      for (int64_t j = 0; j <= p; ++j) {
        double d = 0;
        for (int64_t e = 0; e < HS; ++e) d += double(q[size_t((t * NH + h) * HS + e)]) * k[size_t((j * KVH + kvh) * HS + e)];
        s[size_t(j)] = d / std::sqrt(double(HS));
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (auto& e : s) z += (e = std::exp(e - mx));
      for (int64_t j = 0; j <= p; ++j)
        for (int64_t e = 0; e < HS; ++e)
          out[size_t((t * NH + h) * HS + e)] += s[size_t(j)] / z * v[size_t((j * KVH + kvh) * HS + e)];
    }
  return out;
}
}  // namespace

TEST(Attention, MatchesFp64WithGqaAndCachedPrefix) {
  const int64_t T = 5, pos0 = 6, NH = 6, KVH = 2, HS = 8, P = pos0 + T;
  const auto q = randn(size_t(T * NH * HS), 10), k = randn(size_t(P * KVH * HS), 11), v = randn(size_t(P * KVH * HS), 12);
  std::vector<float> out(size_t(T * NH * HS));
  cpu::attention_forward(out.data(), q.data(), k.data(), v.data(), T, pos0, NH, KVH, HS);
  const auto want = attention_ref(q, k, v, T, pos0, NH, KVH, HS);
  // Scores with |q.k| / sqrt(HS) of a few units carry ~HS ulps of error; through the softmax and
  // the weighted sum of unit-size values that is ~1e-5 absolute at most.
  for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], want[i], 2e-5) << i;
}

// Long enough for the sgemm path (T >= kAttentionGemmMinT, two blocks of 64 queries, the second
// partial), after a cached prefix.
TEST(Attention, GemmPathMatchesFp64) {
  const int64_t T = 70, pos0 = 9, NH = 4, KVH = 2, HS = 16, P = pos0 + T;
  ASSERT_GE(T, cpu::kAttentionGemmMinT);
  const auto q = randn(size_t(T * NH * HS), 21), k = randn(size_t(P * KVH * HS), 22), v = randn(size_t(P * KVH * HS), 23);
  std::vector<float> out(size_t(T * NH * HS));
  cpu::attention_forward(out.data(), q.data(), k.data(), v.data(), T, pos0, NH, KVH, HS);
  const auto want = attention_ref(q, k, v, T, pos0, NH, KVH, HS);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 2e-5) << i;
  // and the row loops, one query at a time over the same cache, agree with it
  for (int64_t t = 0; t < T; t += 13) {
    std::vector<float> one(size_t(NH * HS));
    cpu::attention_forward(one.data(), q.data() + t * NH * HS, k.data(), v.data(), 1, pos0 + t, NH, KVH, HS);
    for (int64_t i = 0; i < NH * HS; ++i) EXPECT_NEAR(one[size_t(i)], out[size_t(t * NH * HS + i)], 2e-5);
  }
}

TEST(Attention, DecodeOneByOneEqualsPrefill) {
  const int64_t T = 7, NH = 4, KVH = 4, HS = 16;
  const auto q = randn(size_t(T * NH * HS), 13), k = randn(size_t(T * KVH * HS), 14), v = randn(size_t(T * KVH * HS), 15);
  std::vector<float> batch(size_t(T * NH * HS)), step(size_t(T * NH * HS));
  cpu::attention_forward(batch.data(), q.data(), k.data(), v.data(), T, 0, NH, KVH, HS);
  for (int64_t t = 0; t < T; ++t)
    cpu::attention_forward(step.data() + t * NH * HS, q.data() + t * NH * HS, k.data(), v.data(), 1, t, NH, KVH, HS);
  ASSERT_LT(T, cpu::kAttentionGemmMinT);
  EXPECT_EQ(batch, step);  // same loops, same order: bit-identical
}

TEST(Attention, FirstPositionReturnsItsValue) {
  // A query at position 0 sees only key 0: the softmax weight is exactly 1.
  const int64_t NH = 4, KVH = 2, HS = 8;
  const auto q = randn(size_t(NH * HS), 16), k = randn(size_t(KVH * HS), 17), v = randn(size_t(KVH * HS), 18);
  std::vector<float> out(size_t(NH * HS));
  cpu::attention_forward(out.data(), q.data(), k.data(), v.data(), 1, 0, NH, KVH, HS);
  for (int64_t h = 0; h < NH; ++h)
    for (int64_t d = 0; d < HS; ++d) EXPECT_EQ(out[size_t(h * HS + d)], v[size_t((h / 2) * HS + d)]);
}

namespace {
void check_matmul(DType type, int64_t T, int64_t O, int64_t I, bool with_bias) {
  const OwnedTensor w = make_weight(type, O, I, uint32_t(100 + T + O));
  const auto x = randn(size_t(T * I), uint32_t(200 + T));
  const auto b = randn(size_t(O), 300);
  std::vector<float> y(size_t(T * O), NAN);
  cpu::matmul_forward(y.data(), x.data(), w.ref, with_bias ? b.data() : nullptr, T);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < O; ++o) {
      double want = with_bias ? b[size_t(o)] : 0.0, mag = std::fabs(want);
      for (int64_t i = 0; i < I; ++i) {
        const double p = double(x[size_t(t * I + i)]) * w.deq[size_t(o * I + i)];
        want += p;
        mag += std::fabs(p);
      }
      ASSERT_NEAR(y[size_t(t * O + o)], want, double(I + 2) * kU * mag)
          << dtype_name(type) << " T=" << T << " O=" << O << " I=" << I << " t=" << t << " o=" << o;
    }
}
}  // namespace

TEST(Matmul, MatchesFp64ForEveryPathAndType) {
  for (DType type : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
    check_matmul(type, 1, 37, 64, false);    // decode path
    check_matmul(type, 3, 5, 32, true);      // decode path, several tokens, bias
    check_matmul(type, 4, 300, 512, false);  // tile path: tiles of 128 rows, a remainder of 44
    check_matmul(type, 53, 1000, 64, true);  // tile path, odd T, one tile
  }
}

// A one-hot input row e_i selects column i of W: every output is a single product by 1 plus zeros,
// so both paths must reproduce the dequantized weights bit for bit.
TEST(Matmul, OneHotInputsReproduceDequantizedWeightsExactly) {
  const int64_t O = 300, I = 96;
  const OwnedTensor w = make_weight(DType::Q8_0, O, I, 42);
  for (int64_t T : {int64_t(1), int64_t(2), int64_t(I)}) {
    std::vector<float> x(size_t(T * I), 0.0f), y(size_t(T * O));
    for (int64_t t = 0; t < T; ++t) x[size_t(t * I + (t * 37) % I)] = 1.0f;
    cpu::matmul_forward(y.data(), x.data(), w.ref, nullptr, T);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t o = 0; o < O; ++o) ASSERT_EQ(y[size_t(t * O + o)], w.deq[size_t(o * I + (t * 37) % I)]) << T;
  }
}

TEST(Matmul, RejectsBadWeights) {
  const OwnedTensor w = make_weight(DType::Q8_0, 4, 32, 1);
  std::vector<float> x(32), y(4);
  TensorRef bad = w.ref;
  bad.nbytes -= 1;
  EXPECT_THROW(cpu::matmul_forward(y.data(), x.data(), bad, nullptr, 1), Error);
  TensorRef vec = w.ref;
  vec.ne = {128};
  EXPECT_THROW(cpu::matmul_forward(y.data(), x.data(), vec, nullptr, 1), Error);
  TensorRef unk = w.ref;
  unk.type = DType::IQ2_XXS;
  EXPECT_THROW(cpu::matmul_forward(y.data(), x.data(), unk, nullptr, 1), Error);
}

TEST(Embedding, CopiesDequantizedRowsAndRejectsBadIds) {
  const OwnedTensor table = make_weight(DType::Q8_0, 10, 64, 7);
  const int32_t ids[3] = {9, 0, 9};
  std::vector<float> out(3 * 64);
  cpu::embedding_forward(out.data(), ids, 3, table.ref);
  for (int t = 0; t < 3; ++t)
    for (int c = 0; c < 64; ++c) EXPECT_EQ(out[size_t(t * 64 + c)], table.deq[size_t(ids[t] * 64 + c)]);
  const int32_t bad[2] = {3, 10};
  EXPECT_THROW(cpu::embedding_forward(out.data(), bad, 2, table.ref), Error);
  const int32_t neg[1] = {-1};
  EXPECT_THROW(cpu::embedding_forward(out.data(), neg, 1, table.ref), Error);
}

TEST(Softmax, MatchesFp64AndCrossEntropyIsMinusLogProb) {
  const int64_t V = 5000;
  const auto x = randn(size_t(V), 20, 5.0f);
  std::vector<float> p(static_cast<size_t>(V));
  cpu::softmax_forward(p.data(), x.data(), V);
  double mx = -1e300, z = 0;
  for (float v : x) mx = std::max(mx, double(v));
  for (float v : x) z += std::exp(double(v) - mx);
  double total = 0;
  for (int64_t i = 0; i < V; ++i) {
    const double want = std::exp(double(x[size_t(i)]) - mx) / z;
    // x - max rounds with error u |x - max|, which exp turns into that relative error; then the
    // exp (1 ulp), the normalizer and the product (1 ulp each)
    const double d = std::fabs(double(x[size_t(i)]) - mx);
    EXPECT_NEAR(p[size_t(i)], want, (d + 4) * kU * want + 1e-30);
    total += p[size_t(i)];
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
  for (int32_t y : {0, 17, int32_t(V - 1)}) {
    const double want = std::log(z) + mx - double(x[size_t(y)]);
    // fp32 exp terms: each within an ulp, so log(sum) is within ~2u relative of the fp64 one
    EXPECT_NEAR(cpu::cross_entropy_forward(x.data(), V, y), want, 1e-6) << y;
  }
  // uniform logits: nll = log V exactly up to the fp64 log
  std::vector<float> u(size_t(V), 3.25f);
  EXPECT_NEAR(cpu::cross_entropy_forward(u.data(), V, 5), std::log(double(V)), 1e-12);
  EXPECT_THROW(cpu::cross_entropy_forward(u.data(), V, int32_t(V)), Error);
}
