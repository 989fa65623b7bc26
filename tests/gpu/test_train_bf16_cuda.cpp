// The bf16 mode's kernels (--fast) against the fp32 kernels that the conformance tests hold to the
// CPU. Most are exact identities: a bf16 kernel computes the fp32 kernel's value from the same
// inputs and rounds it once to bf16, so its bits must equal core/half.h's f32_to_bf16 of the fp32
// kernel's output. The bf16 GEMMs are held to a derived tolerance instead.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "gpu_testing.h"
#include "lut_testing.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemm_tune.h"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/train_ops.h"
#include "ops/cuda/votes.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"
#include "train/lut_weight.h"

using namespace gputest;

namespace {

std::vector<uint16_t> bf16_of(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
  return b;
}
std::vector<float> f32_of(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_to_f32(b[i]);
  return v;
}
cuda::DeviceBuffer poisoned_bf16(size_t n) { return to_device(std::vector<uint16_t>(n, 0xFFFF)); }

// The first index where a and b differ, or -1.
int64_t first_diff(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return int64_t(i);
  return -1;
}

}  // namespace

// to_bf16 rounds to nearest even, as core/half.h (ties, subnormals, infinities included).
TEST(GpuTrainBf16, ConversionRoundsLikeTheCpu) {
  REQUIRE_GPU();
  auto x = randn(100003, 5, 40.0f);
  x[0] = 1.0f + 1.0f / 256.0f;  // a tie: rounds to even (1.0)
  x[1] = 1.0f + 3.0f / 256.0f;  // a tie: rounds up
  x[2] = 1e-40f, x[3] = -INFINITY, x[4] = 3.4e38f;
  const auto xd = to_device(x);
  auto out = poisoned_bf16(x.size());
  cuda::to_bf16(out.as<uint16_t>(), xd.as<float>(), int64_t(x.size()), nullptr);
  EXPECT_EQ(first_diff(to_host<uint16_t>(out, x.size()), bf16_of(x)), -1);
  // Rows of 7 (of 100003 / 7) into rows 9 apart, a bias per column added first: bf16(x + b), the
  // two padding values of each row untouched.
  const int64_t cols = 7, rows = int64_t(x.size()) / cols, ld = 9;
  const std::vector<float> b = {0.5f, -1.0f, 0.0f, 3.0f, 1e-3f, -2.5f, 7.0f};
  const auto bd = to_device(b);
  auto out2 = poisoned_bf16(size_t(rows * ld));
  cuda::to_bf16_rows(out2.as<uint16_t>(), ld, xd.as<float>(), rows, cols, nullptr, bd.as<float>());
  std::vector<float> xb(size_t(rows * cols));
  for (size_t i = 0; i < xb.size(); ++i) xb[i] = x[i] + b[i % size_t(cols)];
  const auto want = bf16_of(xb);
  const auto h = to_host<uint16_t>(out2, size_t(rows * ld));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < ld; ++c)
      ASSERT_EQ(h[size_t(r * ld + c)], c < cols ? want[size_t(r * cols + c)] : uint16_t(0xFFFF)) << r << " " << c;
  // From rows 10 apart (a column block of a wider fp32 matrix) into dense rows.
  const int64_t ls = 10, rows2 = int64_t(x.size()) / ls;
  auto out3 = poisoned_bf16(size_t(rows2 * cols));
  cuda::to_bf16_rows(out3.as<uint16_t>(), cols, xd.as<float>() + 2, rows2, cols, nullptr, bd.as<float>(), ls);
  const auto h3 = to_host<uint16_t>(out3, size_t(rows2 * cols));
  for (int64_t r = 0; r < rows2; ++r)
    for (int64_t c = 0; c < cols; ++c)
      ASSERT_EQ(h3[size_t(r * cols + c)], bf16_of(std::vector<float>{x[size_t(r * ls + 2 + c)] + b[size_t(c)]})[0])
          << "strided source " << r << " " << c;
}

// rmsnorm_forward_train_bf16 = bf16(rmsnorm_forward_train), and the same rstd.
TEST(GpuTrainBf16, RmsNormForwardIsTheFp32OneRounded) {
  REQUIRE_GPU();
  for (auto [N, C] : {std::pair<int64_t, int64_t>{1, 256}, {37, 1536}, {5, 33}}) {
    SCOPED_TRACE(std::to_string(N) + " x " + std::to_string(C));
    const auto x = randn(size_t(N * C), 1, 3.0f), w = randn(size_t(C), 2);
    const auto xd = to_device(x), wd = to_device(w);
    auto y = poisoned(x.size()), r = poisoned(size_t(N)), rb = poisoned(size_t(N));
    auto yb = poisoned_bf16(x.size());
    cuda::rmsnorm_forward_train(y.as<float>(), r.as<float>(), xd.as<float>(), wd.as<float>(), N, C, 1e-6f, nullptr);
    cuda::rmsnorm_forward_train_bf16(yb.as<uint16_t>(), rb.as<float>(), xd.as<float>(), wd.as<float>(), N, C, 1e-6f,
                                     nullptr);
    EXPECT_EQ(first_diff(to_host<uint16_t>(yb, x.size()), bf16_of(to_host<float>(y, x.size()))), -1);
    const auto r1 = to_host<float>(r, size_t(N)), r2 = to_host<float>(rb, size_t(N));
    EXPECT_EQ(std::memcmp(r1.data(), r2.data(), r1.size() * 4), 0);
  }
}

// The residual add with a bf16 addend (the o and down projections' bf16 outputs): sum = x + y and
// its norm bit for bit the fp32-addend overload's given y's values as fp32 (x += y in place), with
// the sum written elsewhere (x untouched) or over x; both norm outputs (fp32, bf16).
TEST(GpuTrainBf16, AddRmsNormWithBf16AddendIsTheFp32One) {
  REQUIRE_GPU();
  for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 1536}, {5, 33}, {3, 2100}}) {
    SCOPED_TRACE(std::to_string(N) + " x " + std::to_string(C));
    const auto x = randn(size_t(N * C), 3, 2.0f), w = randn(size_t(C), 4);
    const auto y16 = bf16_of(randn(size_t(N * C), 5, 0.5f));
    const auto y = f32_of(y16);
    const auto wd = to_device(w), yd = to_device(y), y16d = to_device(y16);
    for (const bool b16 : {false, true}) {
      SCOPED_TRACE(b16 ? "bf16 norm" : "fp32 norm");
      auto xr = to_device(x);  // the fp32 overload: x += y in place
      auto o1 = poisoned(x.size()), r1 = poisoned(size_t(N));
      auto ob1 = poisoned_bf16(x.size());
      cuda::add_rmsnorm_forward_train(b16 ? nullptr : o1.as<float>(), b16 ? ob1.as<uint16_t>() : nullptr,
                                      r1.as<float>(), xr.as<float>(), yd.as<float>(), wd.as<float>(), N, C, 1e-6f,
                                      nullptr);
      const auto want_sum = to_host<float>(xr, x.size());
      for (const bool in_place : {false, true}) {
        SCOPED_TRACE(in_place ? "sum over x" : "sum elsewhere");
        auto xd = to_device(x);
        auto sum = poisoned(x.size()), o2 = poisoned(x.size()), r2 = poisoned(size_t(N));
        auto ob2 = poisoned_bf16(x.size());
        float* sp = in_place ? xd.as<float>() : sum.as<float>();
        cuda::add_rmsnorm_forward_train(b16 ? nullptr : o2.as<float>(), b16 ? ob2.as<uint16_t>() : nullptr,
                                        r2.as<float>(), sp, xd.as<float>(), y16d.as<uint16_t>(), wd.as<float>(), N, C,
                                        1e-6f, nullptr);
        const auto got_sum = to_host<float>(in_place ? xd : sum, x.size());
        EXPECT_EQ(std::memcmp(got_sum.data(), want_sum.data(), x.size() * 4), 0) << "sum";
        if (!in_place) {
          const auto x_after = to_host<float>(xd, x.size());
          EXPECT_EQ(std::memcmp(x_after.data(), x.data(), x.size() * 4), 0) << "x written";
        }
        const auto ra = to_host<float>(r1, size_t(N)), rb = to_host<float>(r2, size_t(N));
        EXPECT_EQ(std::memcmp(ra.data(), rb.data(), ra.size() * 4), 0) << "rstd";
        if (b16) {
          EXPECT_EQ(first_diff(to_host<uint16_t>(ob2, x.size()), to_host<uint16_t>(ob1, x.size())), -1);
        } else {
          const auto a1 = to_host<float>(o1, x.size()), a2 = to_host<float>(o2, x.size());
          EXPECT_EQ(std::memcmp(a1.data(), a2.data(), a1.size() * 4), 0) << "norm";
        }
      }
    }
  }
}

// rmsnorm_backward's bf16 copy of the updated input gradient = bf16 of its fp32 output, which is
// the same as without the copy.
TEST(GpuTrainBf16, RmsNormBackwardBf16CopyIsTheFp32OneRounded) {
  REQUIRE_GPU();
  for (auto [N, C] : {std::pair<int64_t, int64_t>{3, 1536}, {17, 37}}) {
    SCOPED_TRACE(std::to_string(N) + " x " + std::to_string(C));
    const auto x = randn(size_t(N * C), 1, 2.0f), w = randn(size_t(C), 2), dy = randn(size_t(N * C), 3);
    const auto dx0 = randn(size_t(N * C), 4), rstd = randn(size_t(N), 5, 0.1f);
    const auto xd = to_device(x), wd = to_device(w), dyd = to_device(dy), rd = to_device(rstd);
    auto dx1 = to_device(dx0), dx2 = to_device(dx0);
    auto dxb = poisoned_bf16(x.size());
    cuda::rmsnorm_backward(dx1.as<float>(), nullptr, dyd.as<float>(), xd.as<float>(), wd.as<float>(), rd.as<float>(), N,
                           C, nullptr);
    cuda::rmsnorm_backward(dx2.as<float>(), nullptr, dyd.as<float>(), xd.as<float>(), wd.as<float>(), rd.as<float>(), N,
                           C, nullptr, dxb.as<uint16_t>());
    const auto a = to_host<float>(dx1, x.size()), b = to_host<float>(dx2, x.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
    EXPECT_EQ(first_diff(to_host<uint16_t>(dxb, x.size()), bf16_of(a)), -1);
  }
}

// SwiGLU forward / backward from bf16 gate and up = the fp32 kernels on those values, rounded:
// at a length of 8k (the 16-byte kernels) and one that is not (the scalar ones).
TEST(GpuTrainBf16, SwigluIsTheFp32OneRounded) {
  REQUIRE_GPU();
  for (const size_t n : {size_t(70000), size_t(70001)}) {
    SCOPED_TRACE(n);
    const auto gb = bf16_of(randn(n, 3, 4.0f)), ub = bf16_of(randn(n, 4, 2.0f));
    const auto g = f32_of(gb), u = f32_of(ub), dh = randn(n, 5);
    const auto gbd = to_device(gb), ubd = to_device(ub), gd = to_device(g), ud = to_device(u), dhd = to_device(dh);
    auto h = poisoned(n), dg = poisoned(n), du = poisoned(n);
    auto hb = poisoned_bf16(n), dgb = poisoned_bf16(n), dub = poisoned_bf16(n);
    cuda::swiglu_forward_train(h.as<float>(), gd.as<float>(), ud.as<float>(), int64_t(n), nullptr);
    cuda::swiglu_forward_train_bf16(hb.as<uint16_t>(), gbd.as<uint16_t>(), ubd.as<uint16_t>(), int64_t(n), nullptr);
    EXPECT_EQ(first_diff(to_host<uint16_t>(hb, n), bf16_of(to_host<float>(h, n))), -1) << "forward";
    cuda::swiglu_backward(dg.as<float>(), du.as<float>(), dhd.as<float>(), gd.as<float>(), ud.as<float>(), int64_t(n),
                          nullptr);
    cuda::swiglu_backward_bf16(dgb.as<uint16_t>(), dub.as<uint16_t>(), dhd.as<float>(), gbd.as<uint16_t>(),
                               ubd.as<uint16_t>(), int64_t(n), nullptr);
    EXPECT_EQ(first_diff(to_host<uint16_t>(dgb, n), bf16_of(to_host<float>(dg, n))), -1) << "dgate";
    EXPECT_EQ(first_diff(to_host<uint16_t>(dub, n), bf16_of(to_host<float>(du, n))), -1) << "dup";
    // dout as bf16: the fp32 kernel on the rounded dout, rounded.
    const auto dhb = bf16_of(dh);
    auto dhbd = to_device(dhb);
    const auto dhrd = to_device(f32_of(dhb));
    auto dg2 = poisoned(n), du2 = poisoned(n), dgb2 = poisoned_bf16(n), dub2 = poisoned_bf16(n);
    cuda::swiglu_backward(dg2.as<float>(), du2.as<float>(), dhrd.as<float>(), gd.as<float>(), ud.as<float>(), int64_t(n),
                          nullptr);
    cuda::swiglu_backward_bf16(dgb2.as<uint16_t>(), dub2.as<uint16_t>(), dhbd.as<uint16_t>(), gbd.as<uint16_t>(),
                               ubd.as<uint16_t>(), int64_t(n), nullptr);
    EXPECT_EQ(first_diff(to_host<uint16_t>(dgb2, n), bf16_of(to_host<float>(dg2, n))), -1) << "dgate, bf16 dout";
    EXPECT_EQ(first_diff(to_host<uint16_t>(dub2, n), bf16_of(to_host<float>(du2, n))), -1) << "dup, bf16 dout";
    // With the forward's output formed in the same pass: the same gradients, h = the forward's.
    auto dgb3 = poisoned_bf16(n), dub3 = poisoned_bf16(n), hb3 = poisoned_bf16(n);
    cuda::swiglu_backward_bf16(dgb3.as<uint16_t>(), dub3.as<uint16_t>(), dhbd.as<uint16_t>(), gbd.as<uint16_t>(),
                               ubd.as<uint16_t>(), int64_t(n), nullptr, hb3.as<uint16_t>());
    EXPECT_EQ(to_host<uint16_t>(dgb3, n), to_host<uint16_t>(dgb2, n)) << "dgate with h";
    EXPECT_EQ(to_host<uint16_t>(dub3, n), to_host<uint16_t>(dub2, n)) << "dup with h";
    EXPECT_EQ(to_host<uint16_t>(hb3, n), to_host<uint16_t>(hb, n)) << "h from the backward";
    // dgate written over dout (the engine may hand the same memory): the same values.
    cuda::swiglu_backward_bf16(dhbd.as<uint16_t>(), dub2.as<uint16_t>(), dhbd.as<uint16_t>(), gbd.as<uint16_t>(),
                               ubd.as<uint16_t>(), int64_t(n), nullptr);
    EXPECT_EQ(first_diff(to_host<uint16_t>(dhbd, n), bf16_of(to_host<float>(dg2, n))), -1) << "dgate over dout";
  }
}

// The loss of bf16 logits (and the gradient left in their place; and the bf16 gradient of fp32
// logits) = the fp32 kernels on the same values: equal losses, the gradient rounded. Unscored
// rows (target -1) give loss 0 and a zero row.
TEST(GpuTrainBf16, CrossEntropyIsTheFp32OneRounded) {
  REQUIRE_GPU();
  const int64_t n = 7, V = 70001;  // (over 65,536: the cluster kernel serves the strided rows)
  const auto xb = bf16_of(randn(size_t(n * V), 6, 3.0f));
  const auto x = f32_of(xb);
  std::vector<int32_t> y = {0, 17, int32_t(V - 1), -1, 4242, 5, 50000};
  const auto yd = to_device(y);
  auto xd = to_device(x), xbd = to_device(xb), gb2 = poisoned_bf16(x.size());
  const auto xfd = to_device(x);
  auto l32 = to_device(std::vector<double>(size_t(n), std::nan(""))), lb = to_device(std::vector<double>(size_t(n), std::nan("")));
  auto lb2 = to_device(std::vector<double>(size_t(n), std::nan(""))), le = to_device(std::vector<double>(size_t(n), std::nan("")));
  cuda::cross_entropy_rows_bf16(xbd.as<uint16_t>(), yd.as<int32_t>(), n, V, le.as<double>(), nullptr);
  cuda::cross_entropy_backward_rows(xd.as<float>(), yd.as<int32_t>(), n, V, 0.25, l32.as<double>(), nullptr);
  cuda::cross_entropy_backward_rows_bf16_inplace(xbd.as<uint16_t>(), yd.as<int32_t>(), n, V, 0.25, lb.as<double>(),
                                                 nullptr);
  cuda::cross_entropy_backward_rows_bf16(xfd.as<float>(), gb2.as<uint16_t>(), yd.as<int32_t>(), n, V, 0.25,
                                         lb2.as<double>(), nullptr);
  const auto g32 = to_host<float>(xd, x.size());
  const auto L32 = to_host<double>(l32, size_t(n));
  for (const auto* other : {&lb, &lb2, &le}) {
    const auto L = to_host<double>(*other, size_t(n));
    EXPECT_EQ(std::memcmp(L.data(), L32.data(), L.size() * 8), 0);
  }
  EXPECT_EQ(L32[3], 0.0);
  EXPECT_EQ(first_diff(to_host<uint16_t>(xbd, x.size()), bf16_of(g32)), -1) << "in place";
  EXPECT_EQ(first_diff(to_host<uint16_t>(gb2, x.size()), bf16_of(g32)), -1) << "from fp32 logits";
  // Rows ld = 70016 apart (the engine's aligned stride for an odd vocabulary; the 16-byte kernels:
  // a row read once by a cluster of eight blocks, and the single-block kernel): the same losses but
  // for the order of the fp64 sum (1e-12 relative), the gradient within one bf16 unit (its scale
  // float(scale / sum) may round the other way), the padding left as it was.
  const int64_t ld = (V + 15) / 16 * 16;
  struct Reset {
    ~Reset() { cuda::set_cross_entropy_single_block(false); }
  } reset;
  for (const bool single : {false, true}) {
    SCOPED_TRACE(single ? "single block" : "cluster");
    cuda::set_cross_entropy_single_block(single);
    std::vector<uint16_t> padded(size_t(n * ld), 0x7FC1);
    for (int64_t r = 0; r < n; ++r) std::copy(xb.begin() + r * V, xb.begin() + (r + 1) * V, padded.begin() + r * ld);
    auto pd = to_device(padded);
    auto lp = to_device(std::vector<double>(size_t(n), std::nan(""))), lp2 = to_device(std::vector<double>(size_t(n), std::nan("")));
    cuda::cross_entropy_rows_bf16(pd.as<uint16_t>(), yd.as<int32_t>(), n, V, lp2.as<double>(), nullptr, ld);
    cuda::cross_entropy_backward_rows_bf16_inplace(pd.as<uint16_t>(), yd.as<int32_t>(), n, V, 0.25, lp.as<double>(),
                                                   nullptr, ld);
    for (const auto* other : {&lp, &lp2}) {
      const auto L = to_host<double>(*other, size_t(n));
      for (int64_t r = 0; r < n; ++r) EXPECT_NEAR(L[size_t(r)], L32[size_t(r)], 1e-12 * std::fabs(L32[size_t(r)])) << r;
    }
    const auto P = to_host<uint16_t>(pd, padded.size()), G = bf16_of(g32);
    int64_t differ = 0;
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < V; ++c) {
        const float a = bf16_to_f32(P[size_t(r * ld + c)]), b = bf16_to_f32(G[size_t(r * V + c)]);
        ASSERT_LE(std::fabs(a - b), std::fabs(b) / 128) << "strided row " << r << " column " << c;
        differ += a != b;
      }
      for (int64_t c = V; c < ld; ++c) ASSERT_EQ(P[size_t(r * ld + c)], 0x7FC1) << "padding of row " << r;
    }
    EXPECT_LE(differ, n * V / 100) << "gradient values a bf16 unit apart";
    EXPECT_THROW(cuda::cross_entropy_rows_bf16(pd.as<uint16_t>(), yd.as<int32_t>(), n, V, lp2.as<double>(), nullptr, V - 1),
                 Error);
  }
}

// The LUT linear layer with bf16 operands (forward, bf16-output forward, dinp) against the fp32
// path on the same bf16-representable inputs: the bf16 path rounds W to bf16 (relative 2^-9 per
// weight) and accumulates in fp32, so each output differs by at most 2^-9 sum_i |x_i W_i| plus the
// fp32 sums' error (I 2^-24 of it): 2^-8 of that magnitude is checked, per element, plus 2^-9 |y|
// for a bf16 output.
TEST(GpuTrainBf16, LutLinearBf16OperandsMatchFp32WithinRounding) {
  REQUIRE_GPU();
  const int64_t O = 200, I = 96, N = 37, G = 32;
  train::LutWeight L = train::LutWeight::make(DType::LUT4, O, I, G, nf4_grid(16), "test");
  std::mt19937 rng(9);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) L.set(o, i, uint32_t(rng() % 16));
  L.scale = randn(size_t(O * (I / G)), 7, 0.05f);
  const DevLut dl = upload(L);
  const cuda::LutTrainView& w = dl.view;
  std::vector<float> W(size_t(O * I));  // the weights on the host, for the magnitudes
  L.dequantize_rows(0, O, W.data());
  const auto xb = bf16_of(randn(size_t(N * I), 8)), db = bf16_of(randn(size_t(N * O), 10));
  const auto x = f32_of(xb), d = f32_of(db);
  const auto xd = to_device(x), xbd = to_device(xb), dd = to_device(d), dbd = to_device(db);
  cuda::Blas blas;
  const int64_t S = O * I;
  auto sc = poisoned(size_t(S));
  auto y32 = poisoned(size_t(N * O)), y16 = poisoned(size_t(N * O)), di32 = poisoned(size_t(N * I)),
       di16 = poisoned(size_t(N * I));
  auto yb = poisoned_bf16(size_t(N * O));
  // The fp32 path in the deterministic mode (pedantic fp32 GEMMs), then the bf16 one.
  cuda::set_train_math(cuda::TrainMath::Fp32);
  cuda::lut_linear_forward(blas, w, xd.as<float>(), N, nullptr, y32.as<float>(), sc.as<float>(), S, nullptr);
  cuda::lut_linear_backward_input(blas, w, dd.as<float>(), N, di32.as<float>(), false, sc.as<float>(), S, nullptr);
  cuda::set_train_math(cuda::TrainMath::Bf16);
  cuda::lut_linear_forward(blas, w, {nullptr, xbd.as<uint16_t>()}, N, nullptr, y16.as<float>(), sc.as<float>(), S,
                           nullptr);
  cuda::lut_linear_forward_bf16_out(blas, w, xbd.as<uint16_t>(), N, yb.as<uint16_t>(), sc.as<float>(), S, nullptr);
  cuda::lut_linear_backward_input(blas, w, {nullptr, dbd.as<uint16_t>()}, N, di16.as<float>(), false,
                                  sc.as<float>(), S, nullptr);
  auto dib = poisoned_bf16(size_t(N * I));
  cuda::lut_linear_backward_input_bf16_out(blas, w, dbd.as<uint16_t>(), N, dib.as<uint16_t>(), sc.as<float>(), S,
                                           nullptr);
  cuda::set_train_math(cuda::TrainMath::Fp32);
  const auto DB = f32_of(to_host<uint16_t>(dib, size_t(N * I)));
  const auto Y32 = to_host<float>(y32, size_t(N * O)), Y16 = to_host<float>(y16, size_t(N * O));
  const auto YB = f32_of(to_host<uint16_t>(yb, size_t(N * O)));
  const auto D32 = to_host<float>(di32, size_t(N * I)), D16 = to_host<float>(di16, size_t(N * I));
  const double ub = 1.0 / 256.0;
  for (int64_t t = 0; t < N; ++t)
    for (int64_t o = 0; o < O; ++o) {
      double mag = 0;
      for (int64_t i = 0; i < I; ++i) mag += std::fabs(double(x[size_t(t * I + i)]) * W[size_t(o * I + i)]);
      const size_t k = size_t(t * O + o);
      ASSERT_LE(std::fabs(Y16[k] - Y32[k]), ub * mag + 1e-30) << "forward " << t << " " << o;
      ASSERT_LE(std::fabs(YB[k] - Y32[k]), 1.01 * ub * mag + ub / 2 * std::fabs(Y32[k]) + 1e-30) << "bf16 out " << t << " " << o;
    }
  for (int64_t t = 0; t < N; ++t)
    for (int64_t i = 0; i < I; ++i) {
      double mag = 0;
      for (int64_t o = 0; o < O; ++o) mag += std::fabs(double(d[size_t(t * O + o)]) * W[size_t(o * I + i)]);
      const size_t k = size_t(t * I + i);
      ASSERT_LE(std::fabs(D16[k] - D32[k]), ub * mag + 1e-30) << "dinp " << t << " " << i;
      ASSERT_LE(std::fabs(DB[k] - D32[k]), 1.01 * ub * mag + ub / 2 * std::fabs(D32[k]) + 1e-30)
          << "dinp bf16 out " << t << " " << i;
    }
}

// lut_weight_grad_sum_bf16 over 3 chunks of rows: each call adds its chunk's fp32 product to the bf16
// sum, so after chunk c the sum is within the calls' roundings (of the product and of the running
// value, 2^-8 relative each at most) plus the products' fp32 error of the exact running sum (fp64
// from the same bf16 inputs); a lost or doubled chunk is off by the chunk's whole product. dout rows
// read ldd apart; the first call overwrites (poisoned memory).
TEST(GpuTrainBf16, WeightGradSumIsTheChunksSumWithinRounding) {
  REQUIRE_GPU();
  const int64_t O = 136, I = 96, G = 32, ldd = 144;
  const int64_t chunks[3] = {40, 24, 64};
  train::LutWeight L = train::LutWeight::make(DType::LUT4, O, I, G, nf4_grid(16), "test");
  const DevLut dl = upload(L);
  cuda::Blas blas;
  cuda::set_train_math(cuda::TrainMath::Bf16);
  auto dw = poisoned_bf16(size_t(O * I));
  std::vector<double> exact(size_t(O * I), 0.0), mag(size_t(O * I), 0.0);
  std::vector<double> slack(size_t(O * I), 0.0);
  for (int c = 0; c < 3; ++c) {
    const int64_t N = chunks[c];
    const auto xb = bf16_of(randn(size_t(N * I), uint32_t(20 + c)));
    const auto db = bf16_of(randn(size_t(N * ldd), uint32_t(30 + c)));
    const auto x = f32_of(xb), d = f32_of(db);
    const auto xbd = to_device(xb), dbd = to_device(db);
    cuda::lut_weight_grad_sum_bf16(blas, dl.view, dbd.as<uint16_t>(), ldd, xbd.as<uint16_t>(), N, dw.as<uint16_t>(),
                                   c > 0, nullptr);
    const ExactGrad ex = exact_weight_grad(d.data(), ldd, x.data(), N, O, I);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) {
        const size_t k = size_t(o * I + i);
        const double p = ex.dW[k], m = ex.mag[k];
        exact[k] += p, mag[k] += m;
        // this call's roundings (bf16 keeps 8 bits: 2^-8 relative at most) of its product and of
        // the running value, and the fp32 accumulation of its products
        slack[k] += (std::fabs(exact[k]) + std::fabs(p)) / 256.0 + m * 1e-5;
      }
  }
  cuda::set_train_math(cuda::TrainMath::Fp32);
  const auto got = f32_of(to_host<uint16_t>(dw, size_t(O * I)));
  double worst = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_TRUE(std::isfinite(got[k])) << k;
    ASSERT_LE(std::fabs(got[k] - exact[k]), 1.01 * slack[k] + 1e-30) << "weight " << k << " of " << got.size();
    worst = std::max(worst, std::fabs(got[k] - exact[k]) / (mag[k] + 1e-30));
  }
  EXPECT_GT(worst, 0.0) << "bf16 sums are not exact";
}

// The bf16 mode's vote casts (votes.cu grad_rows_fast_kernel, and votes_fast.cu cast_rows_kernel
// with its column statistic: fp32 arithmetic, reciprocal gap tables, a hash for the rounding draws)
// against the exact cast that the conformance tests hold to the CPU, on the same tile and state.
// Both compute x = -lr U g / ((sqrt(rhat chat) + eps) s gap) and add floor(x) or floor(x) + 1; x
// differs only by rounding, the draws differ, so every vote may differ by at most 1 and the
// differences must average out (their sum within 5 standard deviations of 0). dscale, the row EMA
// and the column EMA (and col_norm) differ only by summation order. votes_fast.cu runs with the
// rows in one launch and in two (a call whose gradient comes in two chunks: its column sums carried
// from launch to launch), and from the gradient rounded to bf16 (lut_grad_tiles_bf16: as the bf16
// mode's GEMM writes it), where each value carries a rounding of 2^-9 relative: the sums then agree
// to 2^-8 relative and a vote may differ by 2 where x straddles an integer (rarely).
TEST(GpuTrainBf16, FastVoteCastIsTheExactCastWithinOneVote) {
  REQUIRE_GPU();
  struct Case { DType type; int64_t O, I, G; };
  for (const Case& c : {Case{DType::LUT4, 300, 640, 32}, Case{DType::LUT4, 70, 1544, 8}, Case{DType::LUT3, 129, 512, 64},
                        Case{DType::LUT8, 40, 2048, 128}, Case{DType::LUT4, 20, 2304, 64},
                        Case{DType::LUT4, 50, 8960, 32}}) {
    SCOPED_TRACE(std::string(dtype_name(c.type)) + " O " + std::to_string(c.O) + " I " + std::to_string(c.I) + " G " +
                 std::to_string(c.G));
    const int64_t O = c.O, I = c.I, G = c.G, K = int64_t(1) << lut_bits(c.type);
    train::LutWeight L = train::LutWeight::make(c.type, O, I, G, nf4_grid(int(K)), "test");
    std::mt19937 rng(uint32_t(O + I));
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) L.set(o, i, uint32_t(rng() % uint32_t(K)));
    L.scale = randn(size_t(O * (I / G)), 3, 0.05f);
    L.scale[5] = 0.0f;  // a group without scale casts nothing
    const DevLut dl = upload(L);
    std::vector<float> g = randn(size_t(O * I), 4, 1.0f);
    std::fill(g.begin() + 2 * I, g.begin() + 3 * I, 0.0f);  // a row without gradient
    for (int64_t i = 0; i < I; i += 5) g[size_t(I + i)] = 0.0f;
    const auto dg = to_device(g), dgb = to_device(bf16_of(g));
    cuda::VoteParams p;
    p.rule = cuda::VoteRule::Momentum;
    p.lr = 0.02;  // |x| of a few units, saturating some votes
    p.seed = 11;
    std::vector<int8_t> v0(static_cast<size_t>(O * I));
    for (auto& x : v0) x = int8_t(int(rng() % 241) - 120);
    std::vector<float> row_sq(static_cast<size_t>(O)), col_sq(static_cast<size_t>(I)), col_norm(static_cast<size_t>(I));
    for (auto& x : row_sq) x = 0.5f + float(rng() % 1000) / 1000.0f;
    for (auto& x : col_sq) x = 0.5f + float(rng() % 1000) / 1000.0f;
    for (auto& x : col_norm) x = 0.2f + float(rng() % 1000) / 500.0f;
    const std::vector<float> ds0 = randn(size_t(O * (I / G)), 5, 1.0f);
    const int64_t R = cuda::lut_train_tile_rows(I), split = O > R ? R : O;  // two launches: rows [0, R) and [R, O)
    cuda::DeviceBuffer ws_mem(size_t(cuda::cast_workspace_bytes(I, 0)));
    const cuda::CastWorkspace ws = cuda::cast_workspace_at(ws_mem.data(), I, 0, nullptr);
    // 0: exact (fp32 mode); 1: votes.cu's bf16 kernel; 2: votes_fast.cu, one launch; 3: two launches;
    // 4: votes_fast.cu from the bf16 gradient.
    constexpr int kRuns = 5;
    std::vector<int8_t> votes[kRuns];
    std::vector<float> rows[kRuns], cols[kRuns], norms[kRuns], dsc[kRuns], dsc_only[kRuns];
    for (int run = 0; run < kRuns; ++run) {
      cuda::set_train_math(run > 0 ? cuda::TrainMath::Bf16 : cuda::TrainMath::Fp32);
      // Runs 2-4: the workspace attached, no per-tile column sums allocated.
      cuda::DeviceVotes dv = cuda::make_device_votes(dl.view, p, 3, nullptr, run >= 2);
      dv.state.events = 4;
      if (run >= 2) {
        dv.state.ws = &ws;
        EXPECT_EQ(dv.state.col_part, nullptr);
      }
      cuda::copy_to_device(dv.state.v8, v0.data(), v0.size());
      cuda::copy_to_device(dv.state.row_sq, row_sq.data(), row_sq.size() * 4);
      cuda::copy_to_device(dv.state.col_sq, col_sq.data(), col_sq.size() * 4);
      cuda::copy_to_device(dv.state.col_norm, col_norm.data(), col_norm.size() * 4);
      auto ds = to_device(ds0), ds2 = to_device(ds0);
      const int64_t first = run == 3 ? split : O;
      if (run == 4) {
        ASSERT_TRUE(cuda::lut_grad_tiles_bf16_ok(dl.view, &dv.state, &p));
        cuda::lut_grad_tiles_bf16(dl.view, dgb.as<uint16_t>(), 0, O, ds.as<float>(), &dv.state, &p, nullptr);
      } else {
        cuda::lut_grad_tiles(dl.view, dg.as<float>(), 0, first, ds.as<float>(), &dv.state, &p, nullptr);
      }
      if (first < O)
        cuda::lut_grad_tiles(dl.view, dg.as<float>() + first * I, first, O - first, ds.as<float>(), &dv.state, &p,
                             nullptr);
      cuda::lut_votes_done(dl.view, dv.state, p, nullptr);
      if (run == 4) cuda::lut_grad_tiles_bf16(dl.view, dgb.as<uint16_t>(), 0, O, ds2.as<float>(), nullptr, nullptr, nullptr);
      else cuda::lut_grad_tiles(dl.view, dg.as<float>(), 0, O, ds2.as<float>(), nullptr, nullptr, nullptr);
      cuda::Stream::sync_stream(nullptr);
      EXPECT_EQ(dv.state.events, 5);
      votes[run] = to_host<int8_t>(dv.votes, v0.size());
      rows[run] = to_host<float>(dv.row_sq, row_sq.size());
      cols[run] = to_host<float>(dv.col_sq, col_sq.size());
      norms[run] = to_host<float>(dv.col_norm, col_norm.size());
      dsc[run] = to_host<float>(ds, ds0.size());
      dsc_only[run] = to_host<float>(ds2, ds0.size());
    }
    cuda::set_train_math(cuda::TrainMath::Fp32);
    for (int run = 1; run < kRuns; ++run) {
      SCOPED_TRACE("run " + std::to_string(run));
      const double rel = run == 4 ? 1.0 / 256 : 0.0;  // the bf16 gradient's rounding, through the sums
      for (int64_t o = 0; o < O; ++o) {
        EXPECT_NEAR(rows[run][size_t(o)], rows[0][size_t(o)], (1e-5 + rel) * rows[0][size_t(o)]) << "row_sq " << o;
        for (int64_t gi = 0; gi < I / G; ++gi) {
          double mag = std::fabs(ds0[size_t(o * (I / G) + gi)]);
          for (int64_t i = gi * G; i < (gi + 1) * G; ++i) mag += std::fabs(g[size_t(o * I + i)] * L.grid[L.get(o, i)]);
          const size_t k = size_t(o * (I / G) + gi);
          ASSERT_NEAR(dsc[run][k], dsc[0][k], (4 * G * kU + rel) * mag) << "dscale " << o << " " << gi;
          ASSERT_NEAR(dsc_only[run][k], dsc[0][k], (4 * G * kU + rel) * mag) << "dscale without votes " << o << " " << gi;
        }
      }
      // The column sums: O terms of g^2 / O each (fp32 partial sums, fp64 above them), then the EMA.
      for (int64_t i = 0; i < I; ++i) {
        ASSERT_NEAR(cols[run][size_t(i)], cols[0][size_t(i)], ((2 * O + 4) * kU + rel) * cols[0][size_t(i)])
            << "col_sq " << i;
        ASSERT_NEAR(norms[run][size_t(i)], norms[0][size_t(i)], ((2 * O + 8) * kU + 2 * rel) * norms[0][size_t(i)])
            << "col_norm " << i;
      }
      int64_t moved = 0, differ = 0, sum = 0, twos = 0;
      for (size_t k = 0; k < v0.size(); ++k) {
        const int d = int(votes[run][k]) - int(votes[0][k]);
        ASSERT_LE(std::abs(d), run == 4 ? 2 : 1) << "weight " << k << ": " << int(v0[k]) << " -> " << int(votes[0][k])
                                                 << " / " << int(votes[run][k]);
        moved += votes[0][k] != v0[k], differ += d != 0, sum += d, twos += std::abs(d) == 2;
        if (k / size_t(I) == 2 || L.scale[size_t(k / size_t(I) * size_t(I / G) + k % size_t(I) / size_t(G))] == 0.0f)
          ASSERT_EQ(votes[run][k], v0[k]) << "weight " << k << " has no gradient or no scale";
      }
      EXPECT_GT(moved, int64_t(v0.size()) / 2) << "the exact cast moves few votes: the case tests little";
      EXPECT_LE(double(std::abs(sum)), 5.0 * std::sqrt(double(differ)) + 1) << differ << " votes differ";
      EXPECT_LE(twos, int64_t(v0.size()) / 1000 + 1) << "votes 2 apart";
    }
    // Runs 2 and 3 (votes_fast.cu, one launch or two) take the same draws per column and cast from the
    // same row statistic: they agree but for x at a rounding boundary.
    int64_t d23 = 0;
    for (size_t k = 0; k < v0.size(); ++k) d23 += votes[2][k] != votes[3][k];
    EXPECT_LE(d23, int64_t(v0.size()) / 1000 + 1) << "one launch and two";
  }
}

// Queued folds (votes.h CastFoldQueue, as the engine runs them) against the fold right after each
// cast: the same column statistic, votes and row statistic, bit for bit, through every way the
// queue flushes: a matrix cast twice in one backward (its second cast reads the first's col_norm),
// a call in two launches (the immediate fold's running total), a full queue (18 small matrices),
// and the caller's flush at the end.
TEST(GpuTrainBf16, QueuedFoldsAreTheImmediateFolds) {
  REQUIRE_GPU();
  struct Case { DType type; int64_t O, I, G; };
  std::vector<Case> cases = {{DType::LUT4, 300, 640, 32}, {DType::LUT4, 70, 1544, 8}, {DType::LUT3, 129, 512, 64},
                             {DType::LUT4, 20, 2304, 64}, {DType::LUT4, 50, 8960, 32}};
  for (int k = 0; k < 18; ++k) cases.push_back({DType::LUT4, 16 + 2 * k, 64, 32});
  // (matrix, rows of the first launch: O for one launch)
  std::vector<std::pair<size_t, int64_t>> calls = {{0, 300}, {1, 70}, {0, 300}, {2, 64}, {3, 20}, {4, 50}};
  for (size_t k = 5; k < cases.size(); ++k) calls.push_back({k, cases[k].O});
  calls.push_back({1, 70});
  std::mt19937 rng(5);
  std::vector<train::LutWeight> Ls;
  std::vector<std::vector<float>> grads;
  std::vector<std::vector<int8_t>> v0;
  int64_t I_max = 0;
  for (const Case& c : cases) {
    const int64_t K = int64_t(1) << lut_bits(c.type);
    train::LutWeight L = train::LutWeight::make(c.type, c.O, c.I, c.G, nf4_grid(int(K)), "test");
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t i = 0; i < c.I; ++i) L.set(o, i, uint32_t(rng() % uint32_t(K)));
    L.scale = randn(size_t(c.O * (c.I / c.G)), uint32_t(rng()), 0.05f);
    Ls.push_back(std::move(L));
    grads.push_back(randn(size_t(c.O * c.I), uint32_t(rng()), 1.0f));
    std::vector<int8_t> v(size_t(c.O * c.I));
    for (auto& x : v) x = int8_t(int(rng() % 241) - 120);
    v0.push_back(std::move(v));
    I_max = std::max(I_max, c.I);
  }
  cuda::set_train_math(cuda::TrainMath::Bf16);
  cuda::VoteParams p;
  p.rule = cuda::VoteRule::Momentum;
  p.lr = 0.02;
  p.seed = 3;
  ASSERT_TRUE(p.moments());
  struct Out { std::vector<int8_t> votes; std::vector<float> row_sq, col_sq, col_norm, dscale; int64_t events; };
  std::vector<Out> out[2];
  for (int queued = 0; queued < 2; ++queued) {
    cuda::DeviceBuffer ws_mem(size_t(cuda::cast_workspace_bytes(I_max, 0)));
    cuda::CastWorkspace ws = cuda::cast_workspace_at(ws_mem.data(), I_max, 0, nullptr);
    cuda::CastFoldQueue queue;
    if (queued) ws.queue = &queue;
    std::vector<DevLut> dls;
    std::vector<cuda::DeviceVotes> dvs;
    std::vector<cuda::DeviceBuffer> dg, ds;
    for (size_t k = 0; k < cases.size(); ++k) {
      dls.push_back(upload(Ls[k]));
      dvs.push_back(cuda::make_device_votes(dls.back().view, p, int64_t(k), nullptr, true));
      dvs.back().state.ws = &ws;
      cuda::copy_to_device(dvs.back().state.v8, v0[k].data(), v0[k].size());
      dg.push_back(to_device(bf16_of(grads[k])));
      ds.push_back(to_device(std::vector<float>(Ls[k].scale.size(), 0.0f)));
    }
    for (const auto& [k, first] : calls) {
      const cuda::LutTrainView& v = dls[k].view;
      cuda::VoteState& st = dvs[k].state;
      ASSERT_TRUE(cuda::lut_grad_tiles_bf16_ok(v, &st, &p));
      const uint16_t* g = dg[k].as<uint16_t>();
      cuda::lut_grad_tiles_bf16(v, g, 0, first, ds[k].as<float>(), &st, &p, nullptr);
      if (first < v.O)
        cuda::lut_grad_tiles_bf16(v, g + first * v.I, first, v.O - first, ds[k].as<float>(), &st, &p, nullptr);
      cuda::lut_votes_done(v, st, p, nullptr);
    }
    if (queued) EXPECT_FALSE(queue.items.empty()) << "the last calls' folds wait in the queue";
    cuda::cast_fold_flush(ws, nullptr);
    EXPECT_TRUE(queue.items.empty());
    cuda::Stream::sync_stream(nullptr);
    for (size_t k = 0; k < cases.size(); ++k) {
      const cuda::DeviceVotes& d = dvs[k];
      const int64_t O = cases[k].O, I = cases[k].I;
      out[queued].push_back({to_host<int8_t>(d.votes, size_t(O * I)), to_host<float>(d.row_sq, size_t(O)),
                             to_host<float>(d.col_sq, size_t(I)), to_host<float>(d.col_norm, size_t(I)),
                             to_host<float>(ds[k], Ls[k].scale.size()), d.state.events});
    }
  }
  cuda::set_train_math(cuda::TrainMath::Fp32);
  for (size_t k = 0; k < cases.size(); ++k) {
    SCOPED_TRACE("matrix " + std::to_string(k));
    const Out &a = out[0][k], &b = out[1][k];
    EXPECT_EQ(b.events, a.events);
    EXPECT_EQ(b.votes, a.votes);
    EXPECT_EQ(b.row_sq, a.row_sq);
    EXPECT_EQ(b.col_sq, a.col_sq);
    EXPECT_EQ(b.col_norm, a.col_norm);
    EXPECT_EQ(b.dscale, a.dscale);
    EXPECT_NE(a.col_norm, std::vector<float>(size_t(cases[k].I), 1.0f)) << "the fold did not run";
    EXPECT_NE(a.votes, v0[k]) << "no vote moved: the case tests little";
  }
  EXPECT_EQ(out[0][0].events, 2);
}

// The batched apply (votes_fast.cu, every matrix of a width in one launch) against lut_votes_apply
// matrix by matrix: the same indices, votes and flip count, bit for bit, across widths and a matrix
// that the batch hands back to the per-matrix kernels (int16 votes).
TEST(GpuTrainBf16, BatchedApplyIsTheMatrixByMatrixApply) {
  REQUIRE_GPU();
  struct Case { DType type; int64_t O, I; int vote_bits; };
  const std::vector<Case> cases = {{DType::LUT4, 300, 640, 8}, {DType::LUT4, 7, 2304, 8}, {DType::LUT3, 129, 512, 8},
                                   {DType::LUT8, 40, 2048, 8},  {DType::LUT4, 33, 64, 16},  {DType::LUT5, 12, 96, 8}};
  std::mt19937 rng(7);
  std::vector<train::LutWeight> Ls;
  std::vector<std::vector<int8_t>> v8;
  std::vector<std::vector<int16_t>> v16;
  for (const Case& c : cases) {
    const int64_t K = int64_t(1) << lut_bits(c.type);
    train::LutWeight L = train::LutWeight::make(c.type, c.O, c.I, 32, nf4_grid(int(K)), "test");
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t i = 0; i < c.I; ++i) L.set(o, i, uint32_t(rng() % uint32_t(K)));
    Ls.push_back(std::move(L));
    std::vector<int8_t> a(size_t(c.O * c.I));
    std::vector<int16_t> b(size_t(c.O * c.I));
    for (auto& x : a) x = rng() % 3 == 0 ? int8_t(int(rng() % 255) - 127) : int8_t(int(rng() % 127) - 63);
    for (auto& x : b) x = int16_t(int(rng() % 65535) - 32767);
    v8.push_back(a), v16.push_back(b);
  }
  std::vector<std::vector<uint8_t>> idx[2];
  std::vector<std::vector<int8_t>> out8[2];
  std::vector<std::vector<int16_t>> out16[2];
  unsigned long long flips[2] = {0, 0};
  for (int batched = 0; batched < 2; ++batched) {
    std::vector<DevLut> dls;
    std::vector<cuda::DeviceVotes> dvs;
    std::vector<cuda::VoteParams> ps;
    std::vector<cuda::ApplyItem> items;
    for (size_t k = 0; k < cases.size(); ++k) {
      dls.push_back(upload(Ls[k]));
      cuda::VoteParams p;
      p.rule = cuda::VoteRule::Momentum;
      p.vote_bits = cases[k].vote_bits;
      dvs.push_back(cuda::make_device_votes(dls.back().view, p, int64_t(k), nullptr));
      if (p.vote_bits == 8) cuda::copy_to_device(dvs.back().state.v8, v8[k].data(), v8[k].size());
      else cuda::copy_to_device(dvs.back().state.v16, v16[k].data(), v16[k].size() * 2);
      ps.push_back(p);
    }
    auto counter = to_device(std::vector<unsigned long long>{0});
    auto* fl = counter.as<unsigned long long>();
    if (batched) {
      // Each matrix's own vote width: the batch takes the int8 ones and hands the rest back.
      std::vector<cuda::ApplyItem> it8, it16;
      for (size_t k = 0; k < cases.size(); ++k) (ps[k].vote_bits == 8 ? it8 : it16).push_back({dls[k].view, &dvs[k].state});
      cuda::DeviceBuffer desc(cuda::apply_batch_desc_bytes(cases.size()));
      cuda::lut_votes_apply_batch(it8, ps[0], fl, desc.data(), nullptr);
      for (const cuda::ApplyItem& x : it16) {
        cuda::VoteParams p16 = ps[0];
        p16.vote_bits = 16;
        cuda::lut_votes_apply_batch({x}, p16, fl, desc.data(), nullptr);
      }
      cuda::Stream::sync_stream(nullptr);
    } else {
      for (size_t k = 0; k < cases.size(); ++k) cuda::lut_votes_apply(dls[k].view, dvs[k].state, ps[k], fl, nullptr);
      cuda::Stream::sync_stream(nullptr);
    }
    flips[batched] = to_host<unsigned long long>(counter, 1)[0];
    for (size_t k = 0; k < cases.size(); ++k) {
      idx[batched].push_back(to_host<uint8_t>(dls[k].idx, Ls[k].idx.size()));
      if (ps[k].vote_bits == 8) out8[batched].push_back(to_host<int8_t>(dvs[k].votes, v8[k].size()));
      else out16[batched].push_back(to_host<int16_t>(dvs[k].votes, v16[k].size()));
    }
  }
  EXPECT_GT(flips[0], 1000u) << "few flips: the case tests little";
  EXPECT_EQ(flips[1], flips[0]);
  for (size_t k = 0; k < cases.size(); ++k) EXPECT_EQ(idx[1][k], idx[0][k]) << "indices of matrix " << k;
  for (size_t k = 0; k < out8[0].size(); ++k) EXPECT_EQ(out8[1][k], out8[0][k]) << "int8 votes, matrix " << k;
  for (size_t k = 0; k < out16[0].size(); ++k) EXPECT_EQ(out16[1][k], out16[0][k]) << "int16 votes, matrix " << k;
  // And both against the rule itself (VoteEngine::apply_momentum's integer steps, U = 64), int8 cases.
  unsigned long long ref_flips = 0;
  for (size_t k = 0, k8 = 0; k < cases.size(); ++k) {
    if (cases[k].vote_bits != 8) continue;
    train::LutWeight L = Ls[k];
    std::vector<int8_t> v = v8[k];
    const int64_t K = L.K(), U = 64;
    for (int64_t o = 0; o < L.O; ++o)
      for (int64_t i = 0; i < L.I; ++i) {
        int64_t x = v[size_t(o * L.I + i)];
        const int64_t q = x / U;
        if (q == 0) continue;
        const int64_t cur = L.get(o, i), next = std::clamp<int64_t>(cur + q, 0, K - 1), moved = next - cur;
        x -= moved * U;
        if (moved != q) x = std::clamp<int64_t>(x, -(U - 1), U - 1);
        if (moved != 0) L.set(o, i, uint32_t(next)), ++ref_flips;
        v[size_t(o * L.I + i)] = int8_t(x);
      }
    EXPECT_EQ(idx[0][k], L.idx) << "indices against the rule, matrix " << k;
    EXPECT_EQ(out8[0][k8++], v) << "int8 votes against the rule, matrix " << k;
  }
  EXPECT_GT(ref_flips, 1000u);
}

// A group's forward and input gradient (one dequantization launch for q, k, v or gate, up) against
// the per-matrix calls on the same operands: the same bf16 weights and GEMMs, so the same values up
// to the GEMMs' summation order (fp32, 2^-20 of the magnitude checked); the bias added to the fp32
// outputs; fp32 and bf16 outputs mixed. A group that does not fit the scratch is refused untouched.
TEST(GpuTrainBf16, LutLinearGroupIsThePerMatrixCalls) {
  REQUIRE_GPU();
  const int64_t I = 96, N = 29, G = 32;
  const int64_t Os[3] = {64, 40, 40};
  std::vector<train::LutWeight> Ls;
  std::vector<DevLut> dls;
  std::mt19937 rng(21);
  for (int k = 0; k < 3; ++k) {
    train::LutWeight L = train::LutWeight::make(DType::LUT4, Os[k], I, G, nf4_grid(16), "test");
    for (int64_t o = 0; o < Os[k]; ++o)
      for (int64_t i = 0; i < I; ++i) L.set(o, i, uint32_t(rng() % 16));
    L.scale = randn(size_t(Os[k] * (I / G)), 30 + k, 0.05f);
    dls.push_back(upload(L));
    Ls.push_back(std::move(L));
  }
  const cuda::LutTrainView w[3] = {dls[0].view, dls[1].view, dls[2].view};
  const auto xb = bf16_of(randn(size_t(N * I), 40));
  const auto xbd = to_device(xb);
  const auto bias = to_device(randn(size_t(Os[0]), 41));
  std::vector<std::vector<uint16_t>> db;
  std::vector<cuda::DeviceBuffer> dbd;
  for (int k = 0; k < 3; ++k) db.push_back(bf16_of(randn(size_t(N * Os[k]), 50 + k))), dbd.push_back(to_device(db[k]));
  cuda::Blas blas;
  const int64_t S = (Os[0] + Os[1] + Os[2]) * I;  // floats: the group fits twice over as bf16
  auto sc = poisoned(size_t(S));
  cuda::set_train_math(cuda::TrainMath::Bf16);
  // Per matrix: q fp32 + bias, k fp32, v bf16; dinp summed q, k, v.
  auto q1 = poisoned(size_t(N * Os[0])), k1 = poisoned(size_t(N * Os[1])), q2 = poisoned(size_t(N * Os[0])),
       k2 = poisoned(size_t(N * Os[1])), d1 = poisoned(size_t(N * I)), d2 = poisoned(size_t(N * I));
  auto v1 = poisoned_bf16(size_t(N * Os[2])), v2 = poisoned_bf16(size_t(N * Os[2]));
  cuda::lut_linear_forward(blas, w[0], {nullptr, xbd.as<uint16_t>()}, N, bias.as<float>(), q1.as<float>(),
                           sc.as<float>(), S, nullptr);
  cuda::lut_linear_forward(blas, w[1], {nullptr, xbd.as<uint16_t>()}, N, nullptr, k1.as<float>(), sc.as<float>(), S,
                           nullptr);
  cuda::lut_linear_forward_bf16_out(blas, w[2], xbd.as<uint16_t>(), N, v1.as<uint16_t>(), sc.as<float>(), S, nullptr);
  for (int k = 0; k < 3; ++k)
    cuda::lut_linear_backward_input(blas, w[k], {nullptr, dbd[size_t(k)].as<uint16_t>()}, N, d1.as<float>(), k > 0,
                                    sc.as<float>(), S, nullptr);
  cuda::LutGroupOut out[3];
  out[0].f32 = q2.as<float>(), out[0].bias = bias.as<float>(), out[1].f32 = k2.as<float>(), out[2].bf16 = v2.as<uint16_t>();
  ASSERT_TRUE(cuda::lut_linear_forward_group(blas, w, out, 3, xbd.as<uint16_t>(), N, sc.as<float>(), S, nullptr));
  const uint16_t* douts[3] = {dbd[0].as<uint16_t>(), dbd[1].as<uint16_t>(), dbd[2].as<uint16_t>()};
  ASSERT_TRUE(cuda::lut_linear_backward_input_group(blas, w, douts, 3, N, d2.as<float>(), false, sc.as<float>(), S,
                                                    nullptr));
  // fp32 outputs as the column blocks of one (N, sum O) matrix (one GEMM over the stacked weights)
  // against the per-matrix calls without biases.
  const int64_t sumO = Os[0] + Os[1] + Os[2];
  auto wide = poisoned(size_t(N * sumO));
  std::vector<cuda::DeviceBuffer> per;
  cuda::LutGroupOut st[3];
  for (int k = 0, o0 = 0; k < 3; o0 += int(Os[k]), ++k) {
    per.push_back(poisoned(size_t(N * Os[k])));
    cuda::lut_linear_forward(blas, w[k], {nullptr, xbd.as<uint16_t>()}, N, nullptr, per.back().as<float>(),
                             sc.as<float>(), S, nullptr);
    st[k].f32 = wide.as<float>() + o0;
  }
  ASSERT_TRUE(cuda::lut_linear_forward_group(blas, w, st, 3, xbd.as<uint16_t>(), N, sc.as<float>(), S, nullptr, sumO));
  // The douts as column blocks of one matrix: rows sum O apart (one GEMM over the stacked weights),
  // and 8 wider (a GEMM a matrix, rows ldd apart).
  std::vector<cuda::DeviceBuffer> dcat;
  std::vector<cuda::DeviceBuffer> dis;
  for (const int64_t pad : {int64_t(0), int64_t(8)}) {
    const int64_t ld = Os[0] + Os[1] + Os[2] + pad;
    std::vector<uint16_t> cat(size_t(N * ld), 0xFFFF);  // (padding: NaN, never read)
    for (int64_t t = 0; t < N; ++t)
      for (int k = 0; k < 3; ++k) {
        const int64_t o0 = k == 0 ? 0 : k == 1 ? Os[0] : Os[0] + Os[1];
        for (int64_t o = 0; o < Os[k]; ++o) cat[size_t(t * ld + o0 + o)] = db[size_t(k)][size_t(t * Os[k] + o)];
      }
    dcat.push_back(to_device(cat));
    const uint16_t* base = dcat.back().as<uint16_t>();
    const uint16_t* dcols[3] = {base, base + Os[0], base + Os[0] + Os[1]};
    dis.push_back(poisoned(size_t(N * I)));
    ASSERT_TRUE(cuda::lut_linear_backward_input_group(blas, w, dcols, 3, N, dis.back().as<float>(), false, sc.as<float>(),
                                                      S, nullptr, ld));
  }
  EXPECT_FALSE(cuda::lut_linear_forward_group(blas, w, out, 3, xbd.as<uint16_t>(), N, sc.as<float>(), S / 4, nullptr))
      << "a group larger than the scratch";
  cuda::set_train_math(cuda::TrainMath::Fp32);
  auto close = [](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    double mag = 0;
    for (float x : b) mag = std::max(mag, double(std::fabs(x)));
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], mag / (1 << 20) + 1e-30) << what << " " << i;
  };
  close(to_host<float>(q2, size_t(N * Os[0])), to_host<float>(q1, size_t(N * Os[0])), "q");
  close(to_host<float>(k2, size_t(N * Os[1])), to_host<float>(k1, size_t(N * Os[1])), "k");
  close(f32_of(to_host<uint16_t>(v2, size_t(N * Os[2]))), f32_of(to_host<uint16_t>(v1, size_t(N * Os[2]))), "v");
  close(to_host<float>(d2, size_t(N * I)), to_host<float>(d1, size_t(N * I)), "dinp");
  close(to_host<float>(dis[0], size_t(N * I)), to_host<float>(d1, size_t(N * I)), "dinp, stacked douts");
  close(to_host<float>(dis[1], size_t(N * I)), to_host<float>(d1, size_t(N * I)), "dinp, douts rows ldd apart");
  const auto wh = to_host<float>(wide, size_t(N * sumO));
  for (int k = 0, o0 = 0; k < 3; o0 += int(Os[k]), ++k) {
    std::vector<float> col(size_t(N * Os[k]));
    for (int64_t t = 0; t < N; ++t)
      for (int64_t o = 0; o < Os[k]; ++o) col[size_t(t * Os[k] + o)] = wh[size_t(t * sumO + o0 + o)];
    close(col, to_host<float>(per[size_t(k)], size_t(N * Os[k])), "stacked forward");
  }
}

// The GEMM tuner (gemm_tune.h) with a margin that keeps the fastest cuBLASLt algorithm whatever
// cublasGemmEx's time, so that its own path runs: a beta = 0 call decides its shape once (bf16
// operands, fp32 or bf16 result), within the fp32 accumulation bound of an fp64 product of the same
// bf16 inputs (gamma_k sum |a b|, k u with u = 2^-24, plus the bf16 result's rounding); a repeat is
// bit for bit the first (one algorithm a shape: one summation order); beta = 1 adds to C with the
// kept algorithm without timing anything; an accumulating call of a shape never decided, a call on
// a capturing stream and an fp32-operand call tune nothing (a timing would add to C, or could not
// run in a graph).
TEST(GpuTrainBf16, TunedGemmDecidesEachShapeOnceAndSumsWithinRounding) {
  REQUIRE_GPU();
  // C (m x n) = A B^T over k tokens, A (k, m) and B (k, n) token-major: the weight gradient's form
  // (dW (n, m) = dout^T inp, dout = B, inp = A), whose fp64 reference lut_testing.h has.
  const int64_t m = 384, n = 256, k = 1024;
  const auto ab = bf16_of(randn(size_t(k * m), 31)), bb = bf16_of(randn(size_t(k * n), 32));
  const auto a = f32_of(ab), b = f32_of(bb);
  const ExactGrad e = exact_weight_grad(b.data(), n, a.data(), k, n, m);
  const std::vector<double>&ref = e.dW, &mag = e.mag;
  const auto ad = to_device(ab), bd = to_device(bb);
  auto c32 = poisoned(size_t(m * n));
  auto c16 = poisoned_bf16(size_t(m * n));
  cuda::Blas blas;
  cuda::Stream stream;
  const cudaStream_t s = stream.get();
  blas.set_tuning(true, false, 1e30f);
  cuda::GemmCall g;
  g.ta = CUBLAS_OP_N, g.tb = CUBLAS_OP_T, g.m = m, g.n = n, g.k = k, g.lda = m, g.ldb = n, g.ldc = m;
  g.A = ad.data(), g.B = bd.data(), g.C = c32.data();
  ASSERT_TRUE(cuda::gemm_tuned(blas, g, s));
  auto st = cuda::gemm_tune_stats(blas);
  EXPECT_EQ(st.shapes, 1);
  EXPECT_EQ(st.lt, 1);
  stream.sync();
  const auto first = to_host<float>(c32, size_t(m * n));
  const double gk = double(k + 2) * kU;
  for (size_t i = 0; i < first.size(); ++i)
    ASSERT_LE(std::fabs(first[i] - ref[i]), gk * mag[i] + 1e-30) << "fp32 result " << i;
  ASSERT_TRUE(cuda::gemm_tuned(blas, g, s));  // the kept algorithm again
  stream.sync();
  const auto again = to_host<float>(c32, size_t(m * n));
  ASSERT_EQ(std::memcmp(first.data(), again.data(), first.size() * 4), 0) << "one shape, two summation orders";
  g.beta = 1.0f;  // C += A^T B: twice the product
  ASSERT_TRUE(cuda::gemm_tuned(blas, g, s));
  stream.sync();
  const auto twice = to_host<float>(c32, size_t(m * n));
  for (size_t i = 0; i < twice.size(); ++i)
    ASSERT_LE(std::fabs(twice[i] - 2 * ref[i]), 2 * gk * mag[i] + 2 * kU * std::fabs(2 * ref[i]) + 1e-30)
        << "accumulated " << i;
  st = cuda::gemm_tune_stats(blas);
  EXPECT_EQ(st.shapes, 1);
  EXPECT_EQ(st.lt_calls, 3);
  // The bf16 result is its own shape (another key), decided by its first call.
  g.beta = 0.0f, g.c = CUDA_R_16BF, g.C = c16.data();
  cuda::gemm_run(blas, g, s, "test");
  stream.sync();
  const auto h16 = f32_of(to_host<uint16_t>(c16, size_t(m * n)));
  for (size_t i = 0; i < h16.size(); ++i)
    ASSERT_LE(std::fabs(h16[i] - ref[i]), 1.01 * gk * mag[i] + std::fabs(ref[i]) / 256.0 + 1e-30) << "bf16 result "
                                                                                                   << i;
  EXPECT_EQ(cuda::gemm_tune_stats(blas).shapes, 2);
  // Not tuned: an accumulating call of a new shape (k 512), a capturing stream, fp32 operands.
  g.c = CUDA_R_32F, g.C = c32.data(), g.k = 512, g.beta = 1.0f;
  EXPECT_FALSE(cuda::gemm_tuned(blas, g, s));
  g.beta = 0.0f;
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  const bool in_capture = cuda::gemm_tuned(blas, g, s);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  if (graph) cudaGraphDestroy(graph);
  EXPECT_FALSE(in_capture);
  cuda::GemmCall f = g;
  f.ab = CUDA_R_32F;
  EXPECT_FALSE(cuda::gemm_tuned(blas, f, s));
  EXPECT_EQ(cuda::gemm_tune_stats(blas).shapes, 2);
  // Then its first beta = 0 call outside a capture decides it.
  ASSERT_TRUE(cuda::gemm_tuned(blas, g, s));
  EXPECT_EQ(cuda::gemm_tune_stats(blas).shapes, 3);
  blas.set_tuning(false);
  EXPECT_FALSE(cuda::gemm_tuned(blas, g, s));
}
