// The GPU matrix kernels against their CPU twins: GEMV (every format, awkward shapes, each output
// mode, RMSNorm prologue, several segments), dequantization (bit-exact), embedding rows
// (bit-exact) and the cuBLAS GEMM of prefill.
//
// GEMV tolerances: an fp32 dot product of n terms, in any order, is within (n + 2) u sum|w x| of
// the exact value (Higham's gamma_n; +2 for the block scale and the final add); the normalized
// input may differ from the CPU's by an ulp per element (its fp64 sum of squares is summed in
// another order), +2 u sum|w x|. On top of that worst-case bound per element, the errors of all
// rows together must stay at their statistical size: rounding errors of random sign add up to
// about u sqrt(sum_k s_k^2) <= u sqrt(n) sum|w x| (s_k the partial sums), so
// ||err|| <= 4 u sqrt(n) ||sum|w x|||; one wrong weight of a row moves it by ~sum|w x| / n, far
// more for the n here.
// Formats whose GEMV rounds the input to int8 (gemv_quantizes_input: Q4_0, Q8_0, Q4_K, Q6_K)
// are compared with the exact product of the rounded input, formed here by the same fp32 steps
// (so the bounds above hold as they are), and with the fp32 input within the rounding's effect,
// sum_i |w_i| dx / 2 per row (dx = the unit's max|x| / 127).
// Formats with a block offset (Q4_1, Q5_1, Q4_K, Q5_K: w = q d + m) are summed factored,
// d sum(q x) + m sum(x); the two sums add magnitudes |q d| + |m| <= |w| + 2 |m|, and the quantizer
// puts m at the block minimum, within ~3 rms of the weights: both tolerances are 4x there.
#include <gtest/gtest.h>

#include <cmath>

#include "gpu_testing.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cuda/dequant.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemv.h"

using namespace gputest;
using primal::cuda::GemvMode;
using primal::cuda::GemvParams;

namespace {

const DType kLegacy[] = {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q4_1,
                         DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL};
const DType kKQuants[] = {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};

struct Case {
  DType type;
  int64_t I;
  std::vector<int64_t> O;  // rows per segment
  bool norm = false, bias = false;
  GemvMode mode = GemvMode::Store;
};

std::string describe(const Case& c) {
  std::string o;
  for (int64_t v : c.O) o += std::to_string(v) + " ";
  return dtype_name(c.type) + " I=" + std::to_string(c.I) + " O=" + o + (c.norm ? "norm " : "") +
         (c.bias ? "bias " : "") + std::to_string(int(c.mode));
}

void run_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE(describe(c));
  const int64_t I = c.I;
  const int n_seg = int(c.O.size());
  std::vector<Weight> w;
  for (int k = 0; k < n_seg; ++k) w.push_back(make_weight(c.type, c.O[size_t(k)], I, seed + 17 * k));
  const auto x = randn(size_t(I), seed + 1, 2.0f), nw = randn(size_t(I), seed + 2);
  std::vector<float> xn = x;
  if (c.norm) cpu::rmsnorm_forward(xn.data(), x.data(), nw.data(), 1, I, 1e-5f);
  // The input the kernel multiplies with: xn, or its int8 rounding; half[i] = dx / 2 of i's unit.
  const bool q8 = cuda::gemv_quantizes_input(c.type);
  std::vector<double> xq(xn.begin(), xn.end()), half(static_cast<size_t>(I), 0.0);
  if (q8) {
    for (int64_t u = 0; u < I / 32; ++u) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(xn[size_t(32 * u + i)]));
      const float inv = amax > 0 ? 127.0f / amax : 0.0f, dx = amax / 127.0f;
      for (int i = 0; i < 32; ++i) {
        const size_t k = size_t(32 * u + i);
        xq[k] = double(std::nearbyint(xn[k] * inv)) * double(dx);
        half[k] = 0.5 * double(dx);
      }
    }
  }

  const bool offset = c.type == DType::Q4_1 || c.type == DType::Q5_1 || c.type == DType::Q4_K || c.type == DType::Q5_K;
  const double kappa = offset ? 4.0 : 1.0;
  // y[k][o] exactly (fp64) and the bound of an fp32 evaluation.
  std::vector<std::vector<double>> y(static_cast<size_t>(n_seg)), bound(static_cast<size_t>(n_seg));
  std::vector<std::vector<double>> y32(static_cast<size_t>(n_seg)), qerr(static_cast<size_t>(n_seg));
  for (int k = 0; k < n_seg; ++k) {
    for (int64_t o = 0; o < c.O[size_t(k)]; ++o) {
      double s = 0, a = 0, s32 = 0, r = 0;
      for (int64_t i = 0; i < I; ++i) {
        const double wi = w[size_t(k)].deq[size_t(o * I + i)];
        const double p = wi * xq[size_t(i)];
        s += p, a += std::fabs(p);
        s32 += wi * xn[size_t(i)], r += std::fabs(wi) * half[size_t(i)];
      }
      y32[size_t(k)].push_back(s32), qerr[size_t(k)].push_back(r);
      y[size_t(k)].push_back(s);
      bound[size_t(k)].push_back(kappa * double(I + 4) * kU * a + 1e-37);
    }
  }
  const auto xd = to_device(x), nwd = to_device(nw);
  GemvParams p;
  p.n_seg = n_seg, p.x = xd.as<float>(), p.norm_w = c.norm ? nwd.as<float>() : nullptr, p.mode = c.mode;
  std::vector<cuda::DeviceBuffer> outs, biases;
  std::vector<std::vector<float>> init, bias_h;
  for (int k = 0; k < n_seg; ++k) {
    const size_t O = size_t(c.O[size_t(k)]);
    init.push_back(randn(O, seed + 100 + k));
    bias_h.push_back(randn(O, seed + 200 + k));
    outs.push_back(c.mode == GemvMode::Accumulate ? to_device(init.back()) : poisoned(O));
    biases.push_back(to_device(bias_h.back()));
    p.seg[k].w = w[size_t(k)].dev.view;
    p.seg[k].out = outs.back().as<float>();
    p.seg[k].bias = c.bias ? biases.back().as<float>() : nullptr;
  }
  if (c.mode == GemvMode::SwiGLU) p.seg[1].out = p.seg[0].out;
  cuda::gemv(p, nullptr);
  cuda::Stream::sync_stream(nullptr);

  const int n_out = c.mode == GemvMode::SwiGLU ? 1 : n_seg;
  for (int k = 0; k < n_out; ++k) {
    const int64_t O = c.O[size_t(k)];
    const auto got = to_host<float>(outs[size_t(k)], size_t(O));
    std::vector<double> want(static_cast<size_t>(O));
    double err2 = 0, mag2 = 0;
    for (int64_t o = 0; o < O; ++o) {
      double v = y[size_t(k)][size_t(o)], tol = bound[size_t(k)][size_t(o)];
      if (c.mode == GemvMode::Store && c.bias) v += bias_h[size_t(k)][size_t(o)], tol += kU * std::fabs(v);
      if (c.mode == GemvMode::Accumulate) v += init[size_t(k)][size_t(o)], tol += kU * std::fabs(v);
      if (c.mode == GemvMode::SwiGLU) {
        // silu(g) u: |d silu/dg| <= 1.1, so errors eg, eu propagate as 1.1 |u| eg + |silu(g)| eu,
        // plus the fp32 evaluation of silu and the product (a few ulps).
        const double g = v, u = y[1][size_t(o)], sg = g / (1 + std::exp(-g));
        v = sg * u;
        tol = 1.1 * std::fabs(u) * tol + std::fabs(sg) * bound[1][size_t(o)] + 8 * kU * std::fabs(v) + 1e-37;
      }
      want[size_t(o)] = v;
      ASSERT_NEAR(got[size_t(o)], v, tol) << "row " << o << " of segment " << k;
      if (c.mode != GemvMode::SwiGLU)  // against the fp32 input: the input rounding's effect at most
        ASSERT_NEAR(got[size_t(o)], v - y[size_t(k)][size_t(o)] + y32[size_t(k)][size_t(o)], tol + qerr[size_t(k)][size_t(o)])
            << "row " << o << " of segment " << k << " (fp32 input)";
      const double a = tol / (kappa * double(I + 4) * kU);  // the magnitudes summed, in units of the bound
      err2 += (got[size_t(o)] - v) * (got[size_t(o)] - v), mag2 += a * a;
    }
    EXPECT_LE(std::sqrt(err2), 4 * kappa * kU * std::sqrt(double(I)) * std::sqrt(mag2)) << "segment " << k;
  }
}

}  // namespace

TEST(GpuGemv, LegacyAndFloatFormatsAwkwardShapes) {
  REQUIRE_GPU();
  uint32_t seed = 1;
  for (DType t : kLegacy)
    for (int64_t I : {32, 96, 1536, 4128})
      for (int64_t O : {1, 3, 53, 300}) run_case({t, I, {O}}, seed++);
}

TEST(GpuGemv, KQuantsAwkwardShapes) {
  REQUIRE_GPU();
  uint32_t seed = 500;
  for (DType t : kKQuants)
    for (int64_t I : {256, 768, 4096})
      for (int64_t O : {1, 3, 53}) run_case({t, I, {O}}, seed++);
}

TEST(GpuGemv, NormBiasAndSegments) {
  REQUIRE_GPU();
  uint32_t seed = 900;
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::F16, DType::Q6_K, DType::IQ4_NL}) {
    const int64_t I = t == DType::Q6_K ? 512 : 160;
    run_case({t, I, {53}, true, false}, seed++);
    run_case({t, I, {53, 3, 7}, true, true}, seed++);      // q | k | v with biases, one launch
    run_case({t, I, {64, 32, 32}, false, true}, seed++);
  }
}

TEST(GpuGemv, AccumulateAndSwiGLU) {
  REQUIRE_GPU();
  uint32_t seed = 1300;
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::F16, DType::Q4_K, DType::Q5_1}) {
    const int64_t I = (t == DType::Q4_K) ? 256 : 96;
    run_case({t, I, {53}, false, false, GemvMode::Accumulate}, seed++);
    run_case({t, I, {53, 53}, true, false, GemvMode::SwiGLU}, seed++);
    run_case({t, I, {1, 1}, false, false, GemvMode::SwiGLU}, seed++);
  }
}

// Enough rows that two rows per lane group are used (rows >= 8 groups per multiprocessor).
TEST(GpuGemv, LargeMatricesTwoRowsPerGroup) {
  REQUIRE_GPU();
  uint32_t seed = 1700;
  for (DType t : {DType::Q4_0, DType::Q8_0, DType::F16}) {
    run_case({t, 64, {40001}}, seed++);
    run_case({t, 64, {20011, 20011}, true, false, GemvMode::SwiGLU}, seed++);
    run_case({t, 1024, {9000}, true, true}, seed++);
  }
}

TEST(GpuGemv, RejectsInconsistentSegments) {
  REQUIRE_GPU();
  const Weight a = make_weight(DType::Q4_0, 8, 64, 1), b = make_weight(DType::Q8_0, 8, 64, 2);
  const auto x = to_device(randn(64, 3));
  auto out = poisoned(8);
  GemvParams p;
  p.n_seg = 2, p.x = x.as<float>();
  p.seg[0].w = a.dev.view, p.seg[0].out = out.as<float>();
  p.seg[1].w = b.dev.view, p.seg[1].out = out.as<float>();
  EXPECT_THROW(cuda::gemv(p, nullptr), Error);
}

// Every dequantized value equals the CPU's bit for bit (fp16: the CPU value rounded).
TEST(GpuDequant, RowsToFp16AndEmbeddingRowsExact) {
  REQUIRE_GPU();
  uint32_t seed = 2000;
  std::vector<DType> types(std::begin(kLegacy), std::end(kLegacy));
  types.insert(types.end(), std::begin(kKQuants), std::end(kKQuants));
  for (DType t : types) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t O = 37, I = 512;
    const Weight w = make_weight(t, O, I, seed++);
    const int64_t r0 = 5, n = 29;
    cuda::DeviceBuffer h(size_t(n * I) * 2);
    cuda::dequant_rows_f16(w.dev.view, r0, n, h.data(), nullptr);
    const auto got = to_host<uint16_t>(h, size_t(n * I));
    for (int64_t k = 0; k < n * I; ++k)
      ASSERT_EQ(got[size_t(k)], f32_to_f16(w.deq[size_t(r0 * I + k)])) << "element " << k;

    const std::vector<int32_t> ids = {36, 0, 7, 7, 19};
    const auto idd = to_device(ids);
    auto e = poisoned(ids.size() * size_t(I));
    cuda::embed_rows(w.dev.view, idd.as<int32_t>(), int64_t(ids.size()), e.as<float>(), nullptr);
    const auto emb = to_host<float>(e, ids.size() * size_t(I));
    for (size_t t2 = 0; t2 < ids.size(); ++t2)
      for (int64_t i = 0; i < I; ++i)
        ASSERT_EQ(f32_to_bits(emb[t2 * size_t(I) + size_t(i)]), f32_to_bits(w.deq[size_t(ids[t2] * I + i)]))
            << "token " << t2 << " element " << i;
  }
}

// c = a w^T (+ c) through cuBLAS with fp16 operands: the inputs are exact fp16 values, so the
// only error is the fp32 accumulation.
TEST(GpuGemm, Fp16OperandsFp32Accumulation) {
  REQUIRE_GPU();
  cuda::Blas blas;
  for (auto [T, O, I] : {std::tuple<int64_t, int64_t, int64_t>{1, 3, 32}, {3, 53, 96}, {53, 300, 1536}, {512, 257, 64}}) {
    SCOPED_TRACE(std::to_string(T) + "x" + std::to_string(O) + "x" + std::to_string(I));
    auto a = randn(size_t(T * I), 1), w = randn(size_t(O * I), 2), c0 = randn(size_t(T * (O + 5)), 3);
    std::vector<uint16_t> a16(a.size()), w16(w.size());
    for (size_t i = 0; i < a.size(); ++i) a16[i] = f32_to_f16(a[i]), a[i] = f16_to_f32(a16[i]);
    for (size_t i = 0; i < w.size(); ++i) w16[i] = f32_to_f16(w[i]), w[i] = f16_to_f32(w16[i]);
    const auto ad = to_device(a16), wd = to_device(w16);
    for (float beta : {0.0f, 1.0f}) {
      auto cd = to_device(c0);
      const int64_t ldc = O + 5;  // a strided output: columns O.. stay untouched
      cuda::gemm_f16(blas, ad.data(), wd.data(), cd.as<float>(), T, O, I, ldc, beta, nullptr);
      cuda::Stream::sync_stream(nullptr);
      const auto got = to_host<float>(cd, c0.size());
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t o = 0; o < ldc; ++o) {
          const size_t k = size_t(t * ldc + o);
          if (o >= O) {
            ASSERT_EQ(got[k], c0[k]);
            continue;
          }
          double s = beta * c0[k], abs_sum = std::fabs(s);
          for (int64_t i = 0; i < I; ++i) {
            const double p = double(a[size_t(t * I + i)]) * w[size_t(o * I + i)];
            s += p, abs_sum += std::fabs(p);
          }
          ASSERT_NEAR(got[k], s, double(I + 2) * kU * abs_sum + 1e-30) << t << "," << o;
        }
      }
    }
  }
}
