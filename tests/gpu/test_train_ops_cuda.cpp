// The trainer's GPU row-wise and element-wise ops (ops/cuda/train_ops.h) against their CPU twins
// on random inputs of realistic and odd shapes, the reductions' run-to-run reproducibility bit
// for bit, and the error paths. Tolerances are derived at each check; u = 2^-24 is the fp32 unit
// roundoff (an ulp is at most 2u relative) and e = 2^-53 the fp64 one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>

#include "gpu_testing.h"
#include "ops/cpu/cross_entropy_backward.h"
#include "ops/cpu/embedding_backward.h"
#include "ops/cpu/rmsnorm_backward.h"
#include "ops/cpu/rope_backward.h"
#include "ops/cpu/swiglu_backward.h"
#include "ops/cuda/train_ops.h"

using namespace gputest;

namespace {

constexpr double kE = 1.0 / 9007199254740992.0;  // fp64 unit roundoff 2^-53
constexpr double kTiny = 1e-37;                  // absolute floor: values that are exactly 0

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

std::vector<int32_t> random_ids(size_t n, int64_t V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, int32_t(V - 1));
  std::vector<int32_t> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

cuda::DeviceBuffer poisoned_f64(size_t n) { return to_device(std::vector<double>(n, std::nan(""))); }

}  // namespace

// ---- RMSNorm ---------------------------------------------------------------------------------

// Both sides round r = 1/sqrt(ss/C + eps) once from fp64 sums of squares that differ in order by
// ~C e relative: the same fp32 r but for rare ties, then one ulp apart (2u|r|). y = (x r) w:
// equal when r is; else the exact products differ by 2u and each side rounds twice (u each):
// 6u |y|.
TEST(GpuTrainRmsNorm, ForwardMatchesCpu) {
  REQUIRE_GPU();
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 256}, {3, 37}, {300, 256}, {53, 4096}, {2, 1}}) {
    SCOPED_TRACE(std::to_string(N) + " x " + std::to_string(C));
    const auto x = randn(size_t(N * C), 1, 3.0f), w = randn(size_t(C), 2);
    std::vector<float> ref(x.size()), rref(static_cast<size_t>(N));
    cpu::rmsnorm_forward_train(ref.data(), rref.data(), x.data(), w.data(), N, C, 1e-5f);
    const auto xd = to_device(x), wd = to_device(w);
    auto out = poisoned(x.size()), rstd = poisoned(size_t(N));
    cuda::rmsnorm_forward_train(out.as<float>(), rstd.as<float>(), xd.as<float>(), wd.as<float>(), N, C, 1e-5f,
                                nullptr);
    const auto got = to_host<float>(out, x.size()), rgot = to_host<float>(rstd, size_t(N));
    for (int64_t t = 0; t < N; ++t) ASSERT_NEAR(rgot[size_t(t)], rref[size_t(t)], 2 * kU * rref[size_t(t)]) << t;
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(got[i], ref[i], 6 * kU * std::fabs(ref[i]) + kTiny) << i;
    // In place (out = inp), as the CPU allows: the same bits.
    auto io = to_device(x), rstd2 = poisoned(size_t(N));
    cuda::rmsnorm_forward_train(io.as<float>(), rstd2.as<float>(), io.as<float>(), wd.as<float>(), N, C, 1e-5f,
                                nullptr);
    EXPECT_TRUE(same_bits(to_host<float>(io, x.size()), got));
    EXPECT_TRUE(same_bits(to_host<float>(rstd2, size_t(N)), rgot));
  }
}

// Backward from the same rstd. dx[c] += a (dy w) - b x: a = r on both sides; b = float(r^3 dot/C)
// from fp64 dots of different order (~C e relative, far below fp32) is the same float but for
// rare ties, then one ulp apart: b x moves by 2u|b x|, and the two later roundings (the
// difference, the accumulation) may then differ by an ulp each, 2u |a dy w - b x| + 2u |dx|:
// in all 4u (|a dy w| + |b x|) + 2u |dx|.
// dw[c] += float(s): s summed in fp64 in another order (apart by at most 2 N e sum|terms|); the
// fp32 rounding of s and of the accumulation may then differ by an ulp each, 2u (|s| + |dw|),
// with |s| <= |dw| + |dw0|: 4u (|dw| + |dw0|).
TEST(GpuTrainRmsNorm, BackwardMatchesCpu) {
  REQUIRE_GPU();
  // (4500, 4501 and 5000 rows: enough for the slabs' fused pass, 16 rows a block, on an H100; its
  // blocks take two rows at a time, and 4501 leaves the last block an odd 5.)
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 256}, {3, 37}, {300, 256}, {77, 4096}, {300, 37}, {2, 1},
                      {4500, 1536}, {4501, 64}, {5000, 37}}) {
    SCOPED_TRACE(std::to_string(N) + " x " + std::to_string(C));
    const auto x = randn(size_t(N * C), 3, 2.0f), w = randn(size_t(C), 4), dy = randn(size_t(N * C), 5);
    const auto dx0 = randn(size_t(N * C), 6), dw0 = randn(size_t(C), 7);
    std::vector<float> y(x.size()), rstd(static_cast<size_t>(N));
    cpu::rmsnorm_forward_train(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    auto dx_ref = dx0, dw_ref = dw0;
    cpu::rmsnorm_backward(dx_ref.data(), dw_ref.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);

    const auto xd = to_device(x), wd = to_device(w), dyd = to_device(dy), rd = to_device(rstd);
    auto dxd = to_device(dx0), dwd = to_device(dw0);
    cuda::rmsnorm_backward(dxd.as<float>(), dwd.as<float>(), dyd.as<float>(), xd.as<float>(), wd.as<float>(),
                           rd.as<float>(), N, C, nullptr);
    const auto dx = to_host<float>(dxd, x.size()), dw = to_host<float>(dwd, size_t(C));
    for (int64_t t = 0; t < N; ++t) {
      const double r = rstd[size_t(t)];
      double dot = 0;
      for (int64_t c = 0; c < C; ++c) dot += double(dy[size_t(t * C + c)]) * w[size_t(c)] * x[size_t(t * C + c)];
      const double b = r * r * r * dot / double(C);
      for (int64_t c = 0; c < C; ++c) {
        const size_t i = size_t(t * C + c);
        const double tol = 4 * kU * (std::fabs(r * dy[i] * w[size_t(c)]) + std::fabs(b * x[i])) +
                           2 * kU * std::fabs(dx_ref[i]) + kTiny;
        ASSERT_NEAR(dx[i], dx_ref[i], tol) << t << "," << c;
      }
    }
    // dw against the CPU's: fp64 sums (any order) rounded once, and the accumulation's rounding.
    auto check_dw = [&](const std::vector<float>& got, const char* what) {
      for (int64_t c = 0; c < C; ++c) {
        double abs_terms = 0;
        for (int64_t t = 0; t < N; ++t)
          abs_terms += std::fabs(double(dy[size_t(t * C + c)]) * x[size_t(t * C + c)] * rstd[size_t(t)]);
        const double tol = 4 * kU * (std::fabs(dw_ref[size_t(c)]) + std::fabs(dw0[size_t(c)])) +
                           2 * double(N) * kE * abs_terms + kTiny;
        ASSERT_NEAR(got[size_t(c)], dw_ref[size_t(c)], tol) << what << " " << c;
      }
    };
    check_dw(dw, "one pass");
    // The weight gradient summed in row slabs (the bf16 mode's): within the same bound, and the
    // same input gradient.
    auto dxs = to_device(dx0), dws = to_device(dw0);
    cuda::DeviceBuffer slabs(size_t(cuda::rmsnorm_dw_scratch_doubles(N, C)) * sizeof(double));
    cuda::rmsnorm_backward(dxs.as<float>(), dws.as<float>(), dyd.as<float>(), xd.as<float>(), wd.as<float>(),
                           rd.as<float>(), N, C, nullptr, nullptr, slabs.as<double>());
    EXPECT_TRUE(same_bits(to_host<float>(dxs, x.size()), dx));
    check_dw(to_host<float>(dws, size_t(C)), "slabs");
    // Without a weight gradient: the same input gradient.
    auto dxd2 = to_device(dx0);
    cuda::rmsnorm_backward(dxd2.as<float>(), nullptr, dyd.as<float>(), xd.as<float>(), wd.as<float>(), rd.as<float>(),
                           N, C, nullptr);
    EXPECT_TRUE(same_bits(to_host<float>(dxd2, x.size()), dx));
  }
}

// A bias gradient in the norm gradient's slabs: dst[c] += float(fp64 sum of the column), in a fixed
// order (bitwise reproducible); against the exact sum: the fp64 sum's error (N e sum|x|) and two
// fp32 roundings (the sum's, the accumulation's).
TEST(GpuTrainColumnSums, AddsEachColumnsSumOnce) {
  REQUIRE_GPU();
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 256}, {300, 37}, {8192, 256}, {513, 1536}, {2, 1}}) {
    SCOPED_TRACE(std::to_string(N) + " x " + std::to_string(C));
    const auto x = randn(size_t(N * C), 8), d0 = randn(size_t(C), 9);
    const auto xd = to_device(x);
    auto dd = to_device(d0), dd2 = to_device(d0);
    cuda::DeviceBuffer slabs(size_t(cuda::rmsnorm_dw_scratch_doubles(N, C)) * sizeof(double));
    cuda::column_sums_add(dd.as<float>(), xd.as<float>(), N, C, slabs.as<double>(), nullptr);
    cuda::column_sums_add(dd2.as<float>(), xd.as<float>(), N, C, slabs.as<double>(), nullptr);
    const auto got = to_host<float>(dd, size_t(C));
    EXPECT_TRUE(same_bits(got, to_host<float>(dd2, size_t(C))));
    for (int64_t c = 0; c < C; ++c) {
      double sum = 0, abs_sum = 0;
      for (int64_t t = 0; t < N; ++t) sum += x[size_t(t * C + c)], abs_sum += std::fabs(x[size_t(t * C + c)]);
      const double ref = double(d0[size_t(c)]) + sum;
      const double tol = 2 * kU * (std::fabs(sum) + std::fabs(ref)) + 2 * double(N) * kE * abs_sum + kTiny;
      ASSERT_NEAR(got[size_t(c)], ref, tol) << c;
    }
  }
}

// The bf16 mode's q, k, v bias gradients: column blocks of one bf16 matrix with rows ld apart, each
// block's sums added to its own destination (a null one skipped), reproducibly, within the fp64
// sum's two roundings of the exact sums of the bf16 values.
TEST(GpuTrainColumnSums, AddsBf16ColumnBlocksToTheirDestinations) {
  REQUIRE_GPU();
  // (rows of a multiple of 8 values take the 16-byte kernel; 77 apart the 2-byte one)
  for (auto [N, ld] : {std::pair<int64_t, int64_t>{8192, 2048 + 8}, {300, 80}, {1, 72}, {50, 77}}) {
    SCOPED_TRACE(std::to_string(N) + " rows " + std::to_string(ld) + " apart");
    const int64_t widths[3] = {ld >= 2048 ? 1536 : 40, ld >= 2048 ? 256 : 16, ld >= 2048 ? 256 : 16};
    const int64_t C = widths[0] + widths[1] + widths[2];
    const auto xf = randn(size_t(N * ld), 21);
    std::vector<uint16_t> x(xf.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = f32_to_bf16(xf[i]);
    const auto xd = to_device(x);
    cuda::DeviceBuffer slabs(size_t(cuda::rmsnorm_dw_scratch_doubles(N, C)) * sizeof(double));
    std::vector<float> d0[3];
    std::vector<cuda::DeviceBuffer> dd;
    for (int k = 0; k < 3; ++k) d0[k] = randn(size_t(widths[k]), 22 + k), dd.push_back(to_device(d0[k]));
    std::vector<float> got[2][3];
    for (int run = 0; run < 2; ++run) {
      for (int k = 0; k < 3; ++k) cuda::copy_to_device(dd[size_t(k)].data(), d0[k].data(), d0[k].size() * 4);
      cuda::column_sums_bf16_add({{dd[0].as<float>(), widths[0]}, {nullptr, widths[1]}, {dd[2].as<float>(), widths[2]}},
                                 xd.as<uint16_t>(), ld, N, slabs.as<double>(), cuda::rmsnorm_dw_scratch_doubles(N, C),
                                 nullptr);
      for (int k = 0; k < 3; ++k) got[run][k] = to_host<float>(dd[size_t(k)], size_t(widths[k]));
    }
    EXPECT_TRUE(same_bits(got[1][1], d0[1])) << "a block without a destination was written";
    for (int k : {0, 2}) {
      EXPECT_TRUE(same_bits(got[0][k], got[1][k]));
      const int64_t c0 = k == 0 ? 0 : widths[0] + widths[1];
      for (int64_t c = 0; c < widths[k]; ++c) {
        double sum = 0;  // the bf16 values' sum is exact in fp64 for these N
        for (int64_t t = 0; t < N; ++t) sum += double(bf16_to_f32(x[size_t(t * ld + c0 + c)]));
        const double ref = double(d0[k][size_t(c)]) + sum;
        ASSERT_NEAR(got[0][k][size_t(c)], ref, 2 * kU * (std::fabs(sum) + std::fabs(ref)) + kTiny) << k << ", " << c;
      }
    }
  }
}

// The weight gradient is a reduction over rows: it must not depend on scheduling. Odd sizes
// (rows not a multiple of the 32 row groups, columns not of the 32-column tiles).
TEST(GpuTrainRmsNorm, BackwardIsBitwiseReproducible) {
  REQUIRE_GPU();
  const int64_t N = 1001, C = 300;
  const auto x = randn(size_t(N * C), 8), w = randn(size_t(C), 9), dy = randn(size_t(N * C), 10);
  const auto dx0 = randn(size_t(N * C), 11), dw0 = randn(size_t(C), 12);
  const auto xd = to_device(x), wd = to_device(w), dyd = to_device(dy);
  auto rd = poisoned(size_t(N)), yd = poisoned(x.size());
  cuda::rmsnorm_forward_train(yd.as<float>(), rd.as<float>(), xd.as<float>(), wd.as<float>(), N, C, 1e-6f, nullptr);
  std::vector<float> dx[2], dw[2];
  for (int run = 0; run < 2; ++run) {
    auto dxd = to_device(dx0), dwd = to_device(dw0);
    cuda::rmsnorm_backward(dxd.as<float>(), dwd.as<float>(), dyd.as<float>(), xd.as<float>(), wd.as<float>(),
                           rd.as<float>(), N, C, nullptr);
    dx[run] = to_host<float>(dxd, x.size());
    dw[run] = to_host<float>(dwd, size_t(C));
  }
  EXPECT_TRUE(same_bits(dx[0], dx[1]));
  EXPECT_TRUE(same_bits(dw[0], dw[1]));
  EXPECT_FALSE(same_bits(dw[0], dw0));  // it did accumulate
}

// ---- RoPE ------------------------------------------------------------------------------------

// Rotation of B sequences (positions pos0..pos0+T-1 each) against the CPU's per-sequence calls,
// both layouts, both directions, partial rotation, llama3 per-pair divisors and linear scaling
// folded into inv_freq as the CPU folds them, and positions of 10^5.
// The angle is the same fp64 product on both sides and the rotation the same four fp32 products,
// so values agree bit for bit unless the two libraries' fp64 cos or sin round to different fp32
// values (a tie within a few fp64 ulps: ~2^-26 per value): then cos or sin is one fp32 ulp apart
// (<= u, both being at most 1), moving the result by u (|a| + |b|), and the products and the sum
// may round differently on each side (2u each, relative to terms bounded by |a| + |b|):
// 8u (|a| + |b|) for the pair (a, b). Dimensions past n_rot are untouched: exact.
TEST(GpuTrainRope, MatchesCpuBothLayoutsBatched) {
  REQUIRE_GPU();
  struct Case {
    int64_t B, T, NH, HS, n_rot, pos0;
    double linear;
    bool llama3;
  };
  const Case cases[] = {{1, 1, 1, 2, 2, 0, 1.0, false},   {1, 37, 3, 64, 64, 5, 1.0, false},
                        {4, 53, 8, 128, 128, 0, 1.0, true}, {3, 300, 2, 64, 32, 0, 4.0, false},
                        {1, 7, 5, 96, 96, 100000, 1.0, true}};
  for (const Case& k : cases) {
    for (bool neox : {false, true}) {
      for (bool inverse : {false, true}) {
        SCOPED_TRACE("B " + std::to_string(k.B) + " T " + std::to_string(k.T) + " HS " + std::to_string(k.HS) +
                     " n_rot " + std::to_string(k.n_rot) + " neox " + std::to_string(neox) + " inverse " +
                     std::to_string(inverse));
        std::vector<float> factors;
        if (k.llama3) factors = cpu::llama3_freq_factors(k.n_rot, 5e5, 8.0, 1.0, 4.0, 8192.0);
        cpu::RopeParams rp;
        rp.head_dim = k.HS, rp.n_rot = k.n_rot, rp.neox = neox;
        rp.inv_freq = cpu::rope_inv_freq(k.n_rot, 5e5, k.linear, k.llama3 ? factors.data() : nullptr);
        const int64_t seq = k.T * k.NH * k.HS, half = k.n_rot / 2;
        const auto x = randn(size_t(k.B * seq), 13, 2.0f);
        auto ref = x;
        for (int64_t b = 0; b < k.B; ++b) cpu::rope_rotate(ref.data() + b * seq, k.T, k.NH, k.pos0, rp, inverse);

        auto xd = to_device(x);
        const auto fd = to_device(rp.inv_freq);
        cuda::RopeTrainParams p;
        p.head_dim = k.HS, p.n_rot = k.n_rot, p.neox = neox, p.inv_freq = fd.as<double>();
        cuda::rope_rotate(xd.as<float>(), k.B, k.T, k.NH, k.pos0, p, inverse, nullptr);
        const auto got = to_host<float>(xd, x.size());
        for (size_t i = 0; i < x.size(); ++i) {
          const int64_t e = int64_t(i % size_t(k.HS));  // the element within its head
          if (e >= k.n_rot) {
            ASSERT_EQ(got[i], x[i]) << i;
            continue;
          }
          const int64_t partner = neox ? (e < half ? e + half : e - half) : (e ^ 1);
          const double tol = 8 * kU * (std::fabs(x[i]) + std::fabs(x[i - size_t(e) + size_t(partner)]));
          ASSERT_NEAR(got[i], ref[i], tol) << i;
        }
        // With the cos/sin table of the positions (the trainer's): the same bits; with the bf16
        // copy (every dimension rotated): each value rounded to nearest even.
        const int64_t len = k.pos0 + k.T;
        auto table = to_device(std::vector<float>(size_t(len * k.n_rot), std::nanf("")));
        cuda::rope_table(table.as<float>(), len, p, nullptr);
        p.cos_sin = table.as<float>(), p.table_len = len;
        auto xt = to_device(x);
        const bool whole = k.n_rot == k.HS;
        auto xb = to_device(std::vector<uint16_t>(x.size(), 0xFFFF));
        cuda::rope_rotate(xt.as<float>(), k.B, k.T, k.NH, k.pos0, p, inverse, nullptr,
                          whole ? xb.as<uint16_t>() : nullptr);
        const auto got_t = to_host<float>(xt, x.size());
        ASSERT_EQ(std::memcmp(got_t.data(), got.data(), got.size() * sizeof(float)), 0) << "with the table";
        if (whole) {
          const auto b = to_host<uint16_t>(xb, x.size());
          for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(b[i], f32_to_bf16(got[i])) << "bf16 copy " << i;
          // The bf16 copy alone (write_f32 false): the same copy, x untouched.
          auto xo = to_device(x);
          auto xb2 = to_device(std::vector<uint16_t>(x.size(), 0xFFFF));
          cuda::rope_rotate(xo.as<float>(), k.B, k.T, k.NH, k.pos0, p, inverse, nullptr, xb2.as<uint16_t>(), false);
          EXPECT_EQ(to_host<uint16_t>(xb2, x.size()), b) << "bf16 copy alone";
          const auto xo_h = to_host<float>(xo, x.size());
          EXPECT_EQ(std::memcmp(xo_h.data(), x.data(), x.size() * sizeof(float)), 0) << "x written";
          // The copy into rows 4 values wider (a column block of a wider matrix), with the table
          // and without it (the per-frequency kernel): the same values, the padding untouched.
          const int64_t row = k.NH * k.HS, ld = row + 4, rows = k.B * k.T;
          for (const bool with_table : {true, false}) {
            cuda::RopeTrainParams pw = p;
            if (!with_table) pw.cos_sin = nullptr, pw.table_len = 0;
            auto xs = to_device(x);
            auto xb3 = to_device(std::vector<uint16_t>(size_t(rows * ld), 0xFFFF));
            cuda::rope_rotate(xs.as<float>(), k.B, k.T, k.NH, k.pos0, pw, inverse, nullptr, xb3.as<uint16_t>(), true, ld);
            const auto h3 = to_host<uint16_t>(xb3, size_t(rows * ld));
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t c = 0; c < ld; ++c)
                ASSERT_EQ(h3[size_t(r * ld + c)], c < row ? b[size_t(r * row + c)] : uint16_t(0xFFFF))
                    << "strided bf16 copy, table " << with_table << " row " << r << " col " << c;
            // A bias added inside the kernel = the rotation of x + bias (each sum rounded once).
            const auto bias = randn(size_t(row), 21, 0.5f);
            auto xpb = x;
            for (size_t i2 = 0; i2 < xpb.size(); ++i2) xpb[i2] += bias[i2 % size_t(row)];
            auto xpd = to_device(xpb), xd4 = to_device(x);
            const auto bd = to_device(bias);
            auto want4 = to_device(std::vector<uint16_t>(x.size(), 0xFFFF)), got4 = to_device(std::vector<uint16_t>(x.size(), 0xFFFF));
            cuda::rope_rotate(xpd.as<float>(), k.B, k.T, k.NH, k.pos0, pw, inverse, nullptr, want4.as<uint16_t>(), false);
            cuda::rope_rotate(xd4.as<float>(), k.B, k.T, k.NH, k.pos0, pw, inverse, nullptr, got4.as<uint16_t>(), false, 0,
                              bd.as<float>());
            EXPECT_EQ(to_host<uint16_t>(got4, x.size()), to_host<uint16_t>(want4, x.size()))
                << "bias in the kernel, table " << with_table;
            // x read as a column block of rows ld apart: the same copy.
            std::vector<float> xw(size_t(rows * ld), std::nanf(""));
            for (int64_t r = 0; r < rows; ++r)
              std::copy(x.begin() + r * row, x.begin() + (r + 1) * row, xw.begin() + r * ld);
            auto xwd2 = to_device(xw);
            auto got5 = to_device(std::vector<uint16_t>(x.size(), 0xFFFF));
            cuda::rope_rotate(xwd2.as<float>(), k.B, k.T, k.NH, k.pos0, pw, inverse, nullptr, got5.as<uint16_t>(), false,
                              0, nullptr, ld);
            EXPECT_EQ(to_host<uint16_t>(got5, x.size()), b) << "strided input, table " << with_table;
          }
          // bf16 values rotated in place (the forward from bf16 q, k; the inverse on bf16 gradients,
          // as a column block of rows 8 values wider): the bf16 copy of the fp32 rotation of the
          // widened values, bit for bit, the padding untouched; refused where the kernel does not serve.
          if (k.pos0 == 0) {
            std::vector<uint16_t> x16(x.size());
            std::vector<float> xw(x.size());
            for (size_t i = 0; i < x.size(); ++i) x16[i] = f32_to_bf16(x[i]), xw[i] = bf16_to_f32(x16[i]);
            auto xwd = to_device(xw);
            auto want = to_device(std::vector<uint16_t>(x.size(), 0xFFFF));
            cuda::rope_rotate(xwd.as<float>(), k.B, k.T, k.NH, 0, p, inverse, nullptr, want.as<uint16_t>(), false);
            const auto want_h = to_host<uint16_t>(want, x.size());
            const int64_t row = k.NH * k.HS, ld = row + 8, rows = k.B * k.T;
            std::vector<uint16_t> wide(size_t(rows * ld), 0xFFFF);
            for (int64_t r = 0; r < rows; ++r)
              std::copy(x16.begin() + r * row, x16.begin() + (r + 1) * row, wide.begin() + r * ld);
            auto in16 = to_device(x16), inw = to_device(wide);
            if (cuda::rope_bf16_inplace_ok(p, k.T)) {
              if (inverse) {
                cuda::rope_backward_train_bf16(in16.as<uint16_t>(), k.B, k.T, k.NH, p, 0, nullptr);
                cuda::rope_backward_train_bf16(inw.as<uint16_t>(), k.B, k.T, k.NH, p, ld, nullptr);
                const auto hw = to_host<uint16_t>(inw, wide.size());
                for (int64_t r = 0; r < rows; ++r)
                  for (int64_t c = 0; c < ld; ++c)
                    ASSERT_EQ(hw[size_t(r * ld + c)], c < row ? want_h[size_t(r * row + c)] : uint16_t(0xFFFF))
                        << "bf16 inverse in place, rows " << ld << " apart: row " << r << " col " << c;
              } else {
                cuda::rope_forward_train_bf16(in16.as<uint16_t>(), k.B, k.T, k.NH, p, nullptr);
              }
              EXPECT_EQ(to_host<uint16_t>(in16, x.size()), want_h) << "bf16 in place, inverse " << inverse;
            } else {
              EXPECT_THROW(cuda::rope_forward_train_bf16(in16.as<uint16_t>(), k.B, k.T, k.NH, p, nullptr), Error);
              EXPECT_THROW(cuda::rope_backward_train_bf16(in16.as<uint16_t>(), k.B, k.T, k.NH, p, 0, nullptr), Error);
            }
          }
        } else {
          EXPECT_THROW(cuda::rope_rotate(xt.as<float>(), k.B, k.T, k.NH, k.pos0, p, inverse, nullptr, xb.as<uint16_t>()),
                       Error);
        }
      }
    }
  }
}

// ---- SwiGLU ----------------------------------------------------------------------------------

// Relative to the exact values, the GPU's expf is within 2 ulps (4u) and glibc's within 1 (2u).
// Forward y = g / (1 + e) * u: 1 + e within 5u (GPU) / 3u (CPU), then two roundings: 7u / 5u,
// 12u apart; checked at 16u |y|.
// Backward with sg = 1 / (1 + e) (6u / 4u) and phi = 1 + g (1 - sg):
//   dup = (d g) sg: 8u / 6u, checked at 16u |dup|;
//   phi: 1 - sg is off by 6u sg + u |1 - sg| <= 7u absolute, g (1 - sg) by 8u |g| with its
//   rounding, phi by 8u |g| + u |phi|; the prefactor (d u) sg by 8u relative, the product one
//   more rounding: |d u sg| (10u |phi| + 8u |g|) on the GPU, less on the CPU; phi may be ~0
//   (g near -1.28), hence the absolute form 20u |d u sg| (|phi| + |g|).
TEST(GpuTrainSwiGLU, ForwardAndBackwardMatchCpu) {
  REQUIRE_GPU();
  for (int64_t N : {int64_t(1), int64_t(37), int64_t(300 * 256 + 5)}) {
    SCOPED_TRACE(N);
    const auto g = randn(size_t(N), 14, 3.0f), u = randn(size_t(N), 15), d = randn(size_t(N), 16);
    std::vector<float> y(static_cast<size_t>(N)), dg(static_cast<size_t>(N)), du(static_cast<size_t>(N));
    cpu::swiglu_forward_train(y.data(), g.data(), u.data(), N);
    cpu::swiglu_backward(dg.data(), du.data(), d.data(), g.data(), u.data(), N);

    const auto gd = to_device(g), ud = to_device(u), dd = to_device(d);
    auto yd = poisoned(size_t(N)), dgd = poisoned(size_t(N)), dud = poisoned(size_t(N));
    cuda::swiglu_forward_train(yd.as<float>(), gd.as<float>(), ud.as<float>(), N, nullptr);
    cuda::swiglu_backward(dgd.as<float>(), dud.as<float>(), dd.as<float>(), gd.as<float>(), ud.as<float>(), N,
                          nullptr);
    const auto yg = to_host<float>(yd, size_t(N)), dgg = to_host<float>(dgd, size_t(N)),
               dug = to_host<float>(dud, size_t(N));
    for (size_t i = 0; i < size_t(N); ++i) {
      ASSERT_NEAR(yg[i], y[i], 16 * kU * std::fabs(y[i]) + kTiny) << i;
      ASSERT_NEAR(dug[i], du[i], 16 * kU * std::fabs(du[i]) + kTiny) << i;
      const double sg = 1 / (1 + std::exp(-double(g[i]))), phi = 1 + g[i] * (1 - sg);
      const double tol = 20 * kU * std::fabs(double(d[i]) * u[i] * sg) * (std::fabs(phi) + std::fabs(g[i])) + kTiny;
      ASSERT_NEAR(dgg[i], dg[i], tol) << i;
    }
    // dgate written over dout, as the CPU allows: the same bits.
    auto io = to_device(d), dud2 = poisoned(size_t(N));
    cuda::swiglu_backward(io.as<float>(), dud2.as<float>(), io.as<float>(), gd.as<float>(), ud.as<float>(), N,
                          nullptr);
    EXPECT_TRUE(same_bits(to_host<float>(io, size_t(N)), dgg));
    EXPECT_TRUE(same_bits(to_host<float>(dud2, size_t(N)), dug));
  }
}

// ---- Token embedding -------------------------------------------------------------------------

// A gather: exact.
TEST(GpuTrainEmbedding, ForwardGathersRowsExactly) {
  REQUIRE_GPU();
  for (auto [N, V, C] : {std::tuple<int64_t, int64_t, int64_t>{1, 11, 37}, {300, 11, 256}, {257, 50257, 64}}) {
    SCOPED_TRACE(std::to_string(N) + " " + std::to_string(V) + " " + std::to_string(C));
    const auto table = randn(size_t(V * C), 17);
    auto ids = random_ids(size_t(N), V, 18);
    ids[0] = int32_t(V - 1);  // the last row
    if (N > 1) ids[1] = 0;
    std::vector<float> ref(size_t(N * C));
    cpu::embedding_forward_train(ref.data(), ids.data(), N, table.data(), V, C);
    const auto td = to_device(table), idd = to_device(ids);
    cuda::DeviceBuffer flag(sizeof(int32_t));
    auto out = poisoned(ref.size());
    cuda::embedding_forward_train(out.as<float>(), idd.as<int32_t>(), N, td.as<float>(), V, C, flag.as<int32_t>(),
                                  nullptr);
    EXPECT_TRUE(same_bits(to_host<float>(out, ref.size()), ref));
  }
}

// Ids outside [0, V) throw the CPU's error, naming the first bad position; the flag is reset by
// each call, so a good call after a bad one succeeds.
TEST(GpuTrainEmbedding, ForwardRefusesIdsOutsideTheVocabulary) {
  REQUIRE_GPU();
  const int64_t V = 11, C = 37, N = 9;
  const auto table = randn(size_t(V * C), 19);
  const auto td = to_device(table);
  cuda::DeviceBuffer flag(sizeof(int32_t));
  auto out = poisoned(size_t(N * C));
  auto message = [&](const std::vector<int32_t>& ids, bool gpu) -> std::string {
    std::vector<float> host(size_t(N * C));
    const auto idd = to_device(ids);
    try {
      if (gpu)
        cuda::embedding_forward_train(out.as<float>(), idd.as<int32_t>(), N, td.as<float>(), V, C,
                                      flag.as<int32_t>(), nullptr);
      else
        cpu::embedding_forward_train(host.data(), ids.data(), N, table.data(), V, C);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::vector<int32_t> ids = {0, 1, 2, 3, 11, 5, -1, 7, 10};
  EXPECT_NE(message(ids, true).find("token id 11 at position 4"), std::string::npos) << message(ids, true);
  EXPECT_EQ(message(ids, true), message(ids, false));
  ids[4] = 4;
  EXPECT_NE(message(ids, true).find("token id -1 at position 6"), std::string::npos) << message(ids, true);
  EXPECT_EQ(message(ids, true), message(ids, false));
  ids[6] = 6;
  EXPECT_EQ(message(ids, true), "");
  std::vector<float> ref(size_t(N * C));
  cpu::embedding_forward_train(ref.data(), ids.data(), N, table.data(), V, C);
  EXPECT_TRUE(same_bits(to_host<float>(out, ref.size()), ref));
}

// Every element of dtable is updated by one thread, adding the positions of its id in increasing
// order onto the old value in fp32: the CPU's additions in the CPU's order, so the same bits, on
// every run. Repeats: 11 ids over 300 positions (~27 each), one id taking every third position
// among 50257, one id for all positions; columns not a multiple of the 32-column tiles.
TEST(GpuTrainEmbedding, BackwardEqualsCpuBitwiseAndIsReproducible) {
  REQUIRE_GPU();
  for (auto [N, V, C, mode] : {std::tuple<int64_t, int64_t, int64_t, int>{1, 11, 37, 0}, {300, 11, 256, 0},
                               {300, 50257, 37, 0}, {1000, 50257, 256, 1}, {300, 11, 64, 2}}) {
    SCOPED_TRACE(std::to_string(N) + " " + std::to_string(V) + " " + std::to_string(C) + " mode " +
                 std::to_string(mode));
    auto ids = random_ids(size_t(N), V, 20);
    for (int64_t t = 0; t < N; ++t) {
      if (mode == 1 && t % 3 == 0) ids[size_t(t)] = 13;
      if (mode == 2) ids[size_t(t)] = 7;
    }
    const auto dt0 = randn(size_t(V * C), 21), dy = randn(size_t(N * C), 22);
    auto ref = dt0;
    cpu::embedding_backward(ref.data(), dy.data(), ids.data(), N, C);
    const auto idd = to_device(ids), dyd = to_device(dy);
    for (int run = 0; run < 2; ++run) {
      auto dtd = to_device(dt0);
      cuda::embedding_backward(dtd.as<float>(), dyd.as<float>(), idd.as<int32_t>(), N, V, C, nullptr);
      ASSERT_TRUE(same_bits(to_host<float>(dtd, ref.size()), ref)) << "run " << run;
    }
  }
}

// ---- Cross-entropy ---------------------------------------------------------------------------

// Per row: the same max and the same fp32 differences x - max on both sides; the exps within
// 4u (GPU) and 2u (CPU) of exact, so the fp64 sums S within 6u relative (their own fp64 order
// adds ~V e), the nll = log S + max - x_y within 6u absolute: checked at 8u + (V + 8) e (1 + |nll|).
// Gradient scale * e_i * float(scale / S): the exp 6u apart, the factor 6u + two roundings, the
// product one more rounding per side: 16u relative on q_i (the softmax part), checked at 20u; at
// the target, minus float(scale), one more rounding per side: 2u |g|. Unscored rows: exactly 0.
TEST(GpuTrainCrossEntropy, LossAndGradientMatchCpu) {
  REQUIRE_GPU();
  for (auto [n, V] : {std::pair<int64_t, int64_t>{1, 11}, {300, 11}, {40, 50257}, {7, 37}}) {
    SCOPED_TRACE(std::to_string(n) + " x " + std::to_string(V));
    auto x = randn(size_t(n * V), 23, 3.0f);
    for (int64_t i = 0; i < V; ++i) x[size_t(i)] += 40.0f;  // large logits: the max must be subtracted
    auto y = random_ids(size_t(n), V, 24);
    int64_t scored = 0;
    for (int64_t r = 0; r < n; ++r) {
      if (r % 5 == 3) y[size_t(r)] = -1;  // unscored rows
      scored += y[size_t(r)] >= 0;
    }
    const double scale = 1.0 / double(scored);
    std::vector<double> nll(static_cast<size_t>(n)), nll_b(static_cast<size_t>(n));
    auto g = x;
    for (int64_t r = 0; r < n; ++r) {
      nll[size_t(r)] = cpu::cross_entropy_row(x.data() + r * V, V, y[size_t(r)]);
      nll_b[size_t(r)] = cpu::cross_entropy_backward_row(g.data() + r * V, V, y[size_t(r)], scale);
    }
    auto xd = to_device(x);
    const auto yd = to_device(y);
    auto ld = poisoned_f64(size_t(n));
    cuda::cross_entropy_rows(xd.as<float>(), yd.as<int32_t>(), n, V, ld.as<double>(), nullptr);
    const auto lg = to_host<double>(ld, size_t(n));
    EXPECT_TRUE(same_bits(to_host<float>(xd, x.size()), x));  // evaluation leaves the logits alone
    auto lbd = poisoned_f64(size_t(n));
    cuda::cross_entropy_backward_rows(xd.as<float>(), yd.as<int32_t>(), n, V, scale, lbd.as<double>(), nullptr);
    const auto lbg = to_host<double>(lbd, size_t(n));
    const auto gg = to_host<float>(xd, x.size());
    for (int64_t r = 0; r < n; ++r) {
      const int32_t t = y[size_t(r)];
      if (t < 0) {
        ASSERT_EQ(lg[size_t(r)], 0.0) << r;
        ASSERT_EQ(lbg[size_t(r)], 0.0) << r;
        for (int64_t i = 0; i < V; ++i) ASSERT_EQ(gg[size_t(r * V + i)], 0.0f) << r << "," << i;
        continue;
      }
      const double tol = 8 * kU + double(V + 8) * kE * (1 + std::fabs(nll[size_t(r)]));
      ASSERT_NEAR(lg[size_t(r)], nll[size_t(r)], tol) << r;
      ASSERT_NEAR(lbg[size_t(r)], nll_b[size_t(r)], tol) << r;
      for (int64_t i = 0; i < V; ++i) {
        const double want = g[size_t(r * V + i)], q = want + (i == t ? double(float(scale)) : 0.0);
        ASSERT_NEAR(gg[size_t(r * V + i)], want, 20 * kU * std::fabs(q) + 2 * kU * std::fabs(want) + kTiny)
            << r << "," << i;
      }
    }
  }
}

// A target outside the vocabulary (the CPU throws) poisons its row: NaN loss and gradient.
TEST(GpuTrainCrossEntropy, TargetOutsideTheVocabularyGivesNaN) {
  REQUIRE_GPU();
  const int64_t n = 2, V = 11;
  const auto x = randn(size_t(n * V), 25);
  const std::vector<int32_t> y = {3, int32_t(V)};
  auto xd = to_device(x);
  const auto yd = to_device(y);
  auto ld = poisoned_f64(size_t(n));
  cuda::cross_entropy_backward_rows(xd.as<float>(), yd.as<int32_t>(), n, V, 0.5, ld.as<double>(), nullptr);
  const auto l = to_host<double>(ld, size_t(n));
  const auto g = to_host<float>(xd, x.size());
  EXPECT_TRUE(std::isfinite(l[0]));
  EXPECT_TRUE(std::isnan(l[1]));
  for (int64_t i = 0; i < V; ++i) {
    EXPECT_TRUE(std::isfinite(g[size_t(i)])) << i;
    EXPECT_TRUE(std::isnan(g[size_t(V + i)])) << i;
  }
}

// ---- KL to a teacher -------------------------------------------------------------------------

// Everything in fp64 on both sides, so the two agree to a few e relative in each quantity:
// the log-normalizers ls, lt (V exps of <= 2 ulps summed, a log, an addition) within
// E = (V + 8) e (1 + |ls| + |lt|); each lp_i, lq_i within d = E + 2e L, L = max_i |lp_i| + |lq_i|;
// p_i within p_i (d + 4e); each term p (lp - lq) within p ((d + 6e) |lp - lq| + 2d), and the sum of
// V terms (sum p = 1, |lp - lq| <= L) within (d + (V + 6) e) L + 2d; both sides: twice that.
// Gradient scale (q - p) in fp64: within scale (q + p)(d + 5e) per side, then the fp32 rounding
// may round the two to neighbours: 2u |g|. A row that is its own teacher: exactly 0 on both.
TEST(GpuTrainKl, LossAndGradientMatchCpu) {
  REQUIRE_GPU();
  for (auto [n, V] : {std::pair<int64_t, int64_t>{1, 11}, {64, 37}, {12, 50257}}) {
    SCOPED_TRACE(std::to_string(n) + " x " + std::to_string(V));
    const auto x = randn(size_t(n * V), 26, 2.0f), noise = randn(size_t(n * V), 27, 0.5f);
    const auto other = randn(size_t(V), 28, 3.0f);
    std::vector<float> tch(x.size());
    for (size_t i = 0; i < x.size(); ++i) tch[i] = x[i] + noise[i];
    for (int64_t i = 0; i < V; ++i) {
      tch[size_t(i)] = x[size_t(i)];                      // row 0: its own teacher
      if (n > 1) tch[size_t(V + i)] = other[size_t(i)];  // row 1: an unrelated teacher
    }
    const double scale = 1.0 / double(n);
    std::vector<double> kl(static_cast<size_t>(n)), kl_b(static_cast<size_t>(n));
    auto g = x;
    for (int64_t r = 0; r < n; ++r) {
      kl[size_t(r)] = cpu::kl_row(x.data() + r * V, tch.data() + r * V, V);
      kl_b[size_t(r)] = cpu::kl_backward_row(g.data() + r * V, tch.data() + r * V, V, scale);
    }
    auto xd = to_device(x);
    const auto td = to_device(tch);
    auto ld = poisoned_f64(size_t(n)), lbd = poisoned_f64(size_t(n));
    cuda::kl_rows(xd.as<float>(), td.as<float>(), n, V, ld.as<double>(), nullptr);
    EXPECT_TRUE(same_bits(to_host<float>(xd, x.size()), x));
    cuda::kl_backward_rows(xd.as<float>(), td.as<float>(), n, V, scale, lbd.as<double>(), nullptr);
    const auto lg = to_host<double>(ld, size_t(n)), lbg = to_host<double>(lbd, size_t(n));
    const auto gg = to_host<float>(xd, x.size());
    EXPECT_TRUE(same_bits(to_host<float>(td, tch.size()), tch));  // the teacher is untouched
    for (int64_t r = 0; r < n; ++r) {
      const float* xs = x.data() + r * V;
      const float* ts = tch.data() + r * V;
      auto lse = [&](const float* v) {
        double m = -INFINITY, s = 0;
        for (int64_t i = 0; i < V; ++i) m = std::fmax(m, double(v[i]));
        for (int64_t i = 0; i < V; ++i) s += std::exp(double(v[i]) - m);
        return m + std::log(s);
      };
      const double ls = lse(xs), lt = lse(ts);
      double L = 0;
      for (int64_t i = 0; i < V; ++i) L = std::fmax(L, std::fabs(ts[i] - lt) + std::fabs(xs[i] - ls));
      const double E = double(V + 8) * kE * (1 + std::fabs(ls) + std::fabs(lt)), d = E + 2 * kE * L;
      const double tol = 2 * ((d + double(V + 6) * kE) * L + 2 * d);
      ASSERT_NEAR(lg[size_t(r)], kl[size_t(r)], tol) << r;
      ASSERT_NEAR(lbg[size_t(r)], kl_b[size_t(r)], tol) << r;
      for (int64_t i = 0; i < V; ++i) {
        const double want = g[size_t(r * V + i)];
        const double q = std::exp(xs[i] - ls), p = std::exp(ts[i] - lt);
        const double gtol = 2 * kU * std::fabs(want) + 2 * scale * (q + p) * (d + 5 * kE) + kTiny;
        ASSERT_NEAR(gg[size_t(r * V + i)], want, gtol) << r << "," << i;
      }
    }
    EXPECT_EQ(lg[0], 0.0);  // its own teacher
    for (int64_t i = 0; i < V; ++i) EXPECT_EQ(gg[size_t(i)], 0.0f) << i;
    if (n > 1) EXPECT_GT(lg[1], 0.1);
  }
}
