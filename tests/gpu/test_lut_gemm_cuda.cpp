// The LUT GEMMs with the dequantization in the loads (ops/cuda/lut_gemm.h, Hopper) against the fp64
// product of the same values: the weights as lut_train.cu dequantizes them (the fp32 product
// scale * grid rounded to bf16), bf16 activations; within fp32 accumulation and the output's own
// rounding. Both directions, stacked matrices, token tails, biases, accumulation, bf16 outputs with
// padded rows (the padding untouched), 2-, 4- and 8-bit indices; two runs bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "gpu_testing.h"
#include "lut_testing.h"
#include "ops/cuda/lut_gemm.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"
#include "train/lut_weight.h"

using namespace gputest;

namespace {

enum class Out { F32, F32Bias, F32Acc, Bf16 };

struct Case {
  DType type;
  std::vector<int64_t> Os;
  int64_t I, G, N;
  bool dinp;
  Out out;
  bool stacked;  // forward: one fp32 (N, sum O) output; dinp: the douts as column blocks of one matrix
};

constexpr uint16_t kPoison = 0x7FC1;  // a bf16 NaN the kernel never writes

// W[o, i] as the bf16 GEMMs see it: the CPU's fp32 dequantization, rounded to bf16.
std::vector<float> dequantized(const train::LutWeight& L) {
  std::vector<float> w(size_t(L.O * L.I));
  L.dequantize_rows(0, L.O, w.data());
  for (float& x : w) x = bf16_to_f32(f32_to_bf16(x));
  return w;
}

// Runs a case and checks every output value; a second run must give the same bits.
void run_case(const Case& c, uint32_t seed) {
  const int n = int(c.Os.size());
  const int64_t I = c.I, N = c.N, K = int64_t(1) << lut_bits(c.type);
  std::mt19937 rng(seed);
  std::vector<std::vector<float>> W;
  std::vector<DevLut> dl;
  int64_t sumO = 0;
  for (int k = 0; k < n; ++k) {
    train::LutWeight L = train::LutWeight::make(c.type, c.Os[size_t(k)], I, c.G, nf4_grid(int(K)), "test");
    for (int64_t o = 0; o < L.O; ++o)
      for (int64_t i = 0; i < I; ++i) L.set(o, i, uint32_t(rng() % uint32_t(K)));
    L.scale = randn(L.scale.size(), uint32_t(rng()), 0.05f);
    W.push_back(dequantized(L));
    dl.push_back(upload(L));
    sumO += c.Os[size_t(k)];
  }
  auto bf16_matrix = [&](int64_t rows, int64_t cols, uint32_t s, std::vector<float>& f) {
    const auto r = randn(size_t(rows * cols), s, 1.0f);
    std::vector<uint16_t> b(r.size());
    f.resize(r.size());
    for (size_t x = 0; x < r.size(); ++x) b[x] = f32_to_bf16(r[x]), f[x] = bf16_to_f32(b[x]);
    return b;
  };

  cuda::LutGemmLaunch L;
  L.dinp = c.dinp, L.n = n, L.bits = lut_bits(c.type), L.N = N, L.I = I;
  std::vector<cuda::DeviceBuffer> keep;
  // Host copies of the operand (forward inp (N, I); dinp each dout (N, O_k)), the initial outputs.
  std::vector<float> inpf;
  std::vector<std::vector<float>> doutf(static_cast<size_t>(n));
  const bool b16 = c.out == Out::Bf16;
  struct OutBuf {
    int64_t rows, cols, ld;
    std::vector<float> init;  // fp32 outputs' initial values (accumulation)
    cuda::DeviceBuffer d;
  };
  std::vector<OutBuf> outs;
  auto make_out = [&](int64_t cols, int64_t ld) -> cuda::LutGemmOut {
    OutBuf ob{N, cols, ld, {}, {}};
    if (b16) {
      ob.d = to_device(std::vector<uint16_t>(size_t(N * ld), kPoison));
    } else {
      ob.init = c.out == Out::F32Acc ? randn(size_t(N * ld), uint32_t(rng()), 1.0f) : std::vector<float>(size_t(N * ld), NAN);
      ob.d = to_device(ob.init);
    }
    outs.push_back(std::move(ob));
    cuda::LutGemmOut o;
    o.p = outs.back().d.data(), o.ld = ld, o.bf16 = b16, o.accumulate = c.out == Out::F32Acc;
    return o;
  };
  std::vector<std::vector<float>> bias(static_cast<size_t>(n));
  if (!c.dinp) {
    keep.push_back(to_device(bf16_matrix(N, I, seed + 1, inpf)));
    L.inp = keep.back().as<uint16_t>(), L.ldi = I;
    cuda::LutGemmOut stack;
    if (c.stacked) stack = make_out(sumO, sumO);
    int64_t row0 = 0;
    for (int k = 0; k < n; ++k) {
      const int64_t O = c.Os[size_t(k)];
      if (c.stacked) {
        L.m[k].out = stack;
        L.m[k].out.p = reinterpret_cast<float*>(stack.p) + row0;
      } else {
        L.m[k].out = make_out(O, b16 ? O + 8 : O);  // bf16: padded rows, the padding must stay
      }
      if (c.out == Out::F32Bias) {
        bias[size_t(k)] = randn(size_t(O), uint32_t(rng()), 1.0f);
        keep.push_back(to_device(bias[size_t(k)]));
        L.m[k].out.bias = keep.back().as<float>();
      }
      row0 += O;
    }
  } else {
    L.out = make_out(I, b16 ? I + 8 : I);
    std::vector<float> all;
    cuda::DeviceBuffer stack_d;
    if (c.stacked) stack_d = to_device(bf16_matrix(N, sumO, seed + 2, all));
    int64_t row0 = 0;
    for (int k = 0; k < n; ++k) {
      const int64_t O = c.Os[size_t(k)];
      auto& df = doutf[size_t(k)];
      if (c.stacked) {
        df.resize(size_t(N * O));
        for (int64_t t = 0; t < N; ++t)
          for (int64_t o = 0; o < O; ++o) df[size_t(t * O + o)] = all[size_t(t * sumO + row0 + o)];
        L.m[k].dout = stack_d.as<uint16_t>() + row0, L.m[k].ldd = sumO;
      } else {
        keep.push_back(to_device(bf16_matrix(N, O, seed + 3 + uint32_t(k), df)));
        L.m[k].dout = keep.back().as<uint16_t>(), L.m[k].ldd = O;
      }
      row0 += O;
    }
    keep.push_back(std::move(stack_d));
  }
  for (int k = 0; k < n; ++k) {
    const cuda::LutTrainView& v = dl[size_t(k)].view;
    L.m[k].idx = v.idx, L.m[k].row_bytes = v.row_bytes(), L.m[k].scale = v.scale, L.m[k].groups = v.groups();
    L.m[k].G = v.G, L.m[k].grid = v.grid, L.m[k].O = v.O;
  }
  ASSERT_TRUE(cuda::lut_gemm_shape_ok(L));
  cuda::lut_gemm_launch(L, nullptr);
  cuda::Stream::sync_stream(nullptr);

  // The fp64 products and their magnitudes, then the check of every output value.
  int64_t bad = 0, pad_bad = 0;
  double worst = 0;
  std::vector<std::vector<uint16_t>> got16;
  std::vector<std::vector<float>> got32;
  for (const OutBuf& ob : outs) {
    if (b16) got16.push_back(to_host<uint16_t>(ob.d, size_t(N * ob.ld)));
    else got32.push_back(to_host<float>(ob.d, size_t(N * ob.ld)));
  }
  auto verify = [&](size_t buf, int64_t t, int64_t col, double want, double mag, int64_t terms) {
    const OutBuf& ob = outs[buf];
    const size_t at = size_t(t * ob.ld + col);
    double got, tol = fp32_sum_tol(terms) * mag;
    if (b16) {
      got = bf16_to_f32(got16[buf][at]);
      tol += std::ldexp(std::fabs(want), -8);
    } else {
      got = got32[buf][at];
      if (c.out == Out::F32Acc) want += ob.init[at];
      tol += 2.0 * std::ldexp(std::fabs(want), -24);  // the bias or accumulation's own rounding
    }
    const double err = std::fabs(got - want);
    if (!(err <= tol)) ++bad;
    worst = std::max(worst, err / (tol > 0 ? tol : 1));
  };
  if (!c.dinp) {
    int64_t row0 = 0;
    for (int k = 0; k < n; ++k) {
      const int64_t O = c.Os[size_t(k)];
      const size_t buf = c.stacked ? 0 : size_t(k);
      for (int64_t t = 0; t < N; ++t)
        for (int64_t o = 0; o < O; ++o) {
          double s = 0, a = 0;
          for (int64_t i = 0; i < I; ++i) {
            const double p = double(inpf[size_t(t * I + i)]) * W[size_t(k)][size_t(o * I + i)];
            s += p, a += std::fabs(p);
          }
          if (c.out == Out::F32Bias) s += bias[size_t(k)][size_t(o)];
          verify(buf, t, c.stacked ? row0 + o : o, s, a, I);
        }
      row0 += O;
    }
  } else {
    for (int64_t t = 0; t < N; ++t)
      for (int64_t i = 0; i < I; ++i) {
        double s = 0, a = 0;
        for (int k = 0; k < n; ++k)
          for (int64_t o = 0; o < c.Os[size_t(k)]; ++o) {
            const double p = double(doutf[size_t(k)][size_t(t * c.Os[size_t(k)] + o)]) * W[size_t(k)][size_t(o * I + i)];
            s += p, a += std::fabs(p);
          }
        verify(0, t, i, s, a, sumO);
      }
  }
  for (size_t b = 0; b < got16.size(); ++b)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t x = outs[b].cols; x < outs[b].ld; ++x) pad_bad += got16[b][size_t(t * outs[b].ld + x)] != kPoison;
  EXPECT_EQ(bad, 0) << "values beyond the fp32 / bf16 rounding bound (worst " << worst << " of it)";
  EXPECT_EQ(pad_bad, 0) << "padding of the output rows written";

  // A second run from the same inputs: the same bits (fp32 accumulation restarts from init).
  for (size_t b = 0; b < outs.size(); ++b)
    if (!b16) cuda::copy_to_device(outs[b].d.data(), outs[b].init.data(), outs[b].init.size() * sizeof(float));
  cuda::lut_gemm_launch(L, nullptr);
  cuda::Stream::sync_stream(nullptr);
  for (size_t b = 0; b < outs.size(); ++b) {
    if (b16) EXPECT_EQ(to_host<uint16_t>(outs[b].d, size_t(N * outs[b].ld)), got16[b]) << "run to run, output " << b;
    else EXPECT_EQ(to_host<float>(outs[b].d, size_t(N * outs[b].ld)), got32[b]) << "run to run, output " << b;
  }
}

std::string name(const Case& c) {
  std::string s = std::string(c.dinp ? "dinp" : "forward") + " LUT" + std::to_string(lut_bits(c.type)) + " O";
  for (int64_t o : c.Os) s += " " + std::to_string(o);
  return s + " I " + std::to_string(c.I) + " G " + std::to_string(c.G) + " N " + std::to_string(c.N) +
         (c.stacked ? " stacked" : "");
}

}  // namespace

TEST(GpuLutGemm, IsTheProductOfTheDequantizedWeights) {
  REQUIRE_GPU();
  if (!cuda::lut_gemm_available()) GTEST_SKIP() << "needs a compute capability 9.0 device";
  const std::vector<Case> cases = {
      {DType::LUT4, {256}, 512, 32, 300, false, Out::F32Bias, false},
      {DType::LUT4, {256, 128, 128}, 256, 64, 520, false, Out::F32, true},  // q, k, v: one output
      {DType::LUT4, {128, 256}, 512, 128, 256, false, Out::Bf16, false},    // gate, up
      {DType::LUT8, {128}, 256, 16, 200, false, Out::F32Acc, false},
      {DType::LUT2, {128}, 1024, 256, 100, false, Out::Bf16, false},
      {DType::LUT4, {256}, 256, 32, 300, true, Out::F32, false},
      {DType::LUT4, {192, 64, 64}, 384, 32, 260, true, Out::F32Acc, true},  // q, k, v's input gradient
      {DType::LUT4, {128, 128}, 256, 32, 512, true, Out::Bf16, false},
      {DType::LUT8, {64}, 128, 16, 64, true, Out::F32, false},
      {DType::LUT2, {128}, 512, 128, 300, true, Out::F32, false},
  };
  uint32_t seed = 5;
  for (const Case& c : cases) {
    SCOPED_TRACE(name(c));
    run_case(c, seed += 10);
  }
}

TEST(GpuLutGemm, RefusesShapesItCannotTile) {
  REQUIRE_GPU();
  train::LutWeight Lw = train::LutWeight::make(DType::LUT4, 128, 256, 32, nf4_grid(16), "test");
  DevLut d = upload(Lw);
  cuda::DeviceBuffer x(size_t(64 * 256) * 2), y(size_t(64 * 256) * 4);
  auto base = [&] {
    cuda::LutGemmLaunch L;
    L.n = 1, L.bits = 4, L.N = 64, L.I = 256, L.inp = x.as<uint16_t>(), L.ldi = 256;
    cuda::LutGemmMat& m = L.m[0];
    m.idx = d.view.idx, m.row_bytes = d.view.row_bytes(), m.scale = d.view.scale, m.groups = d.view.groups();
    m.G = 32, m.grid = d.view.grid, m.O = 128;
    m.out.p = y.data(), m.out.ld = 128;
    return L;
  };
  EXPECT_TRUE(cuda::lut_gemm_shape_ok(base()));
  auto refused = [&](auto change, const char* what) {
    cuda::LutGemmLaunch L = base();
    change(L);
    EXPECT_FALSE(cuda::lut_gemm_shape_ok(L)) << what;
  };
  refused([](cuda::LutGemmLaunch& L) { L.m[0].G = 8, L.m[0].groups = 32; }, "8 weights a scale");
  refused([](cuda::LutGemmLaunch& L) { L.m[0].G = 128, L.m[0].groups = 2; }, "scale rows of 8 bytes (no TMA box)");
  refused([](cuda::LutGemmLaunch& L) { L.m[0].O = 64; }, "forward rows not a multiple of 128");
  refused([](cuda::LutGemmLaunch& L) { L.bits = 3; }, "3-bit indices");
  refused([](cuda::LutGemmLaunch& L) { L.ldi = 260; }, "an input stride of 260 values");
  refused([](cuda::LutGemmLaunch& L) { L.m[0].out.bf16 = true, L.m[0].out.accumulate = true; }, "bf16 accumulation");
  refused([](cuda::LutGemmLaunch& L) { L.n = 0; }, "no matrix");
  refused([](cuda::LutGemmLaunch& L) {
    L.dinp = true, L.I = 192, L.m[0].dout = nullptr;
  }, "dinp without its dout");
  cuda::LutGemmLaunch bad = base();
  bad.m[0].O = 64;
  EXPECT_THROW(cuda::lut_gemm_launch(bad, nullptr), Error);
}
