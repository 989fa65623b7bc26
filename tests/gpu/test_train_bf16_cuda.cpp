// The bf16 mode's kernels (--fast) against the fp32 kernels that the conformance tests hold to the
// CPU. Most are exact identities: a bf16 kernel computes the fp32 kernel's value from the same
// inputs and rounds it once to bf16, so its bits must equal core/half.h's f32_to_bf16 of the fp32
// kernel's output. The bf16 GEMMs are held to a derived tolerance instead.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "gpu_testing.h"
#include "lut_testing.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/train_ops.h"
#include "quant/lut_grid.h"
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

// SwiGLU forward / backward from bf16 gate and up = the fp32 kernels on those values, rounded.
TEST(GpuTrainBf16, SwigluIsTheFp32OneRounded) {
  REQUIRE_GPU();
  const size_t n = 70001;
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
}

// The loss of bf16 logits (and the gradient left in their place; and the bf16 gradient of fp32
// logits) = the fp32 kernels on the same values: equal losses, the gradient rounded. Unscored
// rows (target -1) give loss 0 and a zero row.
TEST(GpuTrainBf16, CrossEntropyIsTheFp32OneRounded) {
  REQUIRE_GPU();
  const int64_t n = 7, V = 50257;
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
  cuda::set_train_math(cuda::TrainMath::Fp32);
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
    }
}
