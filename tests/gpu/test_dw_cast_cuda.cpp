// The fused weight gradient + vote cast (ops/cuda/lut_dw_cast.h, Hopper) against what it replaces:
// the gradient it cast (written out for the test) is the fp64 product within bf16 rounding and fp32
// accumulation, and the bf16 cast (votes_fast.cu) of that same gradient from the same state gives
// the same votes, dscale, row and column statistics (up to the order of their fp32 sums: a vote
// may then differ by one, rarely). Two runs from one state are bit for bit equal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "gpu_testing.h"
#include "lut_testing.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lut_dw_cast.h"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/votes.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"
#include "train/lut_weight.h"

using namespace gputest;

namespace {

struct Mat {
  train::LutWeight L;
  std::vector<int8_t> v0;
  std::vector<float> row_sq0, col_sq0, col_norm0;
};

struct State {  // one run's device state of every matrix
  std::vector<DevLut> dl;
  std::vector<cuda::DeviceVotes> dv;
  std::vector<cuda::DeviceBuffer> ds;
};

struct Result {
  std::vector<std::vector<int8_t>> votes;
  std::vector<std::vector<float>> row_sq, col_sq, col_norm, dscale;
  std::vector<int64_t> events;
};

State make_state(const std::vector<Mat>& ms, const cuda::VoteParams& p, cuda::CastWorkspace* ws) {
  State s;
  for (size_t k = 0; k < ms.size(); ++k) {
    const Mat& m = ms[k];
    s.dl.push_back(upload(m.L));
    s.dv.push_back(cuda::make_device_votes(s.dl.back().view, p, int64_t(k) + 7, nullptr, true));
    cuda::VoteState& st = s.dv.back().state;
    st.ws = ws;
    cuda::copy_to_device(st.v8, m.v0.data(), m.v0.size());
    cuda::copy_to_device(st.row_sq, m.row_sq0.data(), m.row_sq0.size());
    cuda::copy_to_device(st.col_sq, m.col_sq0.data(), m.col_sq0.size());
    cuda::copy_to_device(st.col_norm, m.col_norm0.data(), m.col_norm0.size());
    st.events = 3;
    s.ds.push_back(to_device(std::vector<float>(m.L.scale.size(), 0.25f)));
  }
  return s;
}

Result read(const std::vector<Mat>& ms, const State& s) {
  cuda::Stream::sync_stream(nullptr);
  Result r;
  for (size_t k = 0; k < ms.size(); ++k) {
    const int64_t O = ms[k].L.O, I = ms[k].L.I;
    const cuda::DeviceVotes& d = s.dv[k];
    r.votes.push_back(to_host<int8_t>(d.votes, size_t(O * I)));
    r.row_sq.push_back(to_host<float>(d.row_sq, size_t(O)));
    r.col_sq.push_back(to_host<float>(d.col_sq, size_t(I)));
    r.col_norm.push_back(to_host<float>(d.col_norm, size_t(I)));
    r.dscale.push_back(to_host<float>(s.ds[k], ms[k].L.scale.size()));
    r.events.push_back(d.state.events);
  }
  return r;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (float x : want) scale = std::max(scale, double(std::fabs(x)));
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::fabs(double(got[i]) - want[i]) > rel * (std::fabs(double(want[i])) + 1e-3 * scale)) ++bad;
  EXPECT_EQ(bad, 0) << what << ": values beyond " << rel;
}

struct Case {
  DType type;
  std::vector<int64_t> Os;
  int64_t I, G, N;
};

void run_case(const Case& c, uint32_t seed) {
  const int n = int(c.Os.size());
  const int64_t I = c.I, N = c.N, K = int64_t(1) << lut_bits(c.type);
  int64_t O = 0;
  for (int64_t o : c.Os) O += o;
  std::mt19937 rng(seed);
  std::vector<Mat> ms;
  for (int k = 0; k < n; ++k) {
    Mat m{train::LutWeight::make(c.type, c.Os[size_t(k)], I, c.G, nf4_grid(int(K)), "test"), {}, {}, {}, {}};
    for (int64_t o = 0; o < m.L.O; ++o)
      for (int64_t i = 0; i < I; ++i) m.L.set(o, i, uint32_t(rng() % uint32_t(K)));
    m.L.scale = randn(size_t(m.L.O * (I / c.G)), uint32_t(rng()), 0.05f);
    m.L.scale[3] = 0.0f;  // a group whose votes stay
    m.v0.resize(size_t(m.L.O * I));
    for (auto& x : m.v0) x = int8_t(int(rng() % 241) - 120);
    m.row_sq0 = randn(size_t(m.L.O), uint32_t(rng()), 1.0f);
    for (auto& x : m.row_sq0) x = 0.5f + x * x;
    m.col_sq0 = randn(size_t(I), uint32_t(rng()), 1.0f);
    for (auto& x : m.col_sq0) x = 0.5f + x * x;
    m.col_norm0 = randn(size_t(I), uint32_t(rng()), 0.3f);
    for (auto& x : m.col_norm0) x = 1.0f + std::fabs(x);
    ms.push_back(std::move(m));
  }
  // dout (N, O) and inp (N, I) as bf16 values.
  std::vector<uint16_t> doutb(size_t(N * O)), inpb(size_t(N * I));
  std::vector<float> doutf(doutb.size()), inpf(inpb.size());
  {
    const auto d = randn(doutb.size(), seed + 1, 1.0f), x = randn(inpb.size(), seed + 2, 1.0f);
    for (size_t i = 0; i < d.size(); ++i) doutb[i] = f32_to_bf16(d[i]), doutf[i] = bf16_to_f32(doutb[i]);
    for (size_t i = 0; i < x.size(); ++i) inpb[i] = f32_to_bf16(x[i]), inpf[i] = bf16_to_f32(inpb[i]);
  }
  const auto doutd = to_device(doutb), inpd = to_device(inpb);

  cuda::VoteParams p;
  p.rule = cuda::VoteRule::Momentum;
  p.lr = 0.05;
  p.seed = 11;
  p.step = 4;
  ASSERT_TRUE(p.moments());
  cuda::set_train_math(cuda::TrainMath::Bf16);
  cuda::Blas blas;
  // The fused path's column workspace and scratch; the reference cast's own workspace.
  cuda::DeviceBuffer fws_mem(size_t(cuda::cast_workspace_bytes(I, 0))), rws_mem(size_t(cuda::cast_workspace_bytes(I, 0)));
  cuda::CastWorkspace fws = cuda::cast_workspace_at(fws_mem.data(), I, 0, nullptr);
  cuda::CastWorkspace rws = cuda::cast_workspace_at(rws_mem.data(), I, 0, nullptr);
  cuda::CastFoldQueue fq;
  fws.queue = &fq;
  cuda::DeviceBuffer scratch(size_t(cuda::dw_fused_scratch_floats(O, I)) * 4);
  cuda::DeviceBuffer tile_scratch(size_t(cuda::lut_grad_scratch_floats(I)) * 4);
  cuda::DeviceBuffer dw_out = to_device(std::vector<uint16_t>(size_t(O * I), 0xFFFF));

  auto fused = [&](State& s, bool dump) {
    cuda::CastAside a;
    a.fused_ws = &fws;
    a.fused_scratch = scratch.as<float>();
    a.fused_scratch_floats = cuda::dw_fused_scratch_floats(O, I);
    a.fused_dw_out = dump ? dw_out.as<uint16_t>() : nullptr;
    std::vector<cuda::LutWeightGrad> g(static_cast<size_t>(n));
    std::vector<cuda::LutTrainView> w;
    for (int k = 0; k < n; ++k) {
      g[size_t(k)].dscale = s.ds[size_t(k)].as<float>();
      g[size_t(k)].votes = &s.dv[size_t(k)].state;
      g[size_t(k)].params = &p;
      g[size_t(k)].aside = &a;
      w.push_back(s.dl[size_t(k)].view);
    }
    if (n == 1) {
      cuda::lut_linear_backward_weight(blas, w[0], {nullptr, doutd.as<uint16_t>()}, {nullptr, inpd.as<uint16_t>()}, N,
                                       g[0], tile_scratch.as<float>(), cuda::lut_grad_scratch_floats(I), nullptr);
    } else {
      ASSERT_TRUE(cuda::lut_linear_backward_weight_group(blas, w.data(), g.data(), n, doutd.as<uint16_t>(), O,
                                                         inpd.as<uint16_t>(), N, nullptr));
    }
  };
  State s1 = make_state(ms, p, &fws);
  fused(s1, true);
  const Result r1 = read(ms, s1);
  State s2 = make_state(ms, p, &fws);
  fused(s2, false);
  const Result r2 = read(ms, s2);
  // The reference: votes_fast.cu's cast of the gradient the fused kernel read.
  State s3 = make_state(ms, p, &rws);
  const uint16_t* dwp = dw_out.as<uint16_t>();
  for (int k = 0; k < n; ++k) {
    const cuda::LutTrainView& v = s3.dl[size_t(k)].view;
    cuda::lut_grad_tiles_bf16(v, dwp, 0, v.O, s3.ds[size_t(k)].as<float>(), &s3.dv[size_t(k)].state, &p, nullptr);
    cuda::lut_votes_done(v, s3.dv[size_t(k)].state, p, nullptr);
    dwp += v.O * I;
  }
  const Result r3 = read(ms, s3);
  const auto dw = to_host<uint16_t>(dw_out, size_t(O * I));
  cuda::set_train_math(cuda::TrainMath::Fp32);

  // The gradient: fp64 product, one bf16 rounding (2^-9 relative) and fp32 sums.
  const ExactGrad e = exact_weight_grad(doutf.data(), O, inpf.data(), N, O, I);
  int64_t bad = 0;
  for (size_t x = 0; x < dw.size(); ++x) {
    const double got = bf16_to_f32(dw[x]), want = e.dW[x];
    if (!(std::fabs(got - want) <= std::ldexp(std::fabs(want), -8) + fp32_sum_tol(N) * e.mag[x])) ++bad;
  }
  EXPECT_EQ(bad, 0) << "gradient values beyond bf16 rounding of the fp64 product";
  for (int k = 0; k < n; ++k) {
    SCOPED_TRACE("matrix " + std::to_string(k));
    const size_t K2 = size_t(k);
    EXPECT_EQ(r1.votes[K2], r2.votes[K2]) << "run to run";
    EXPECT_EQ(r1.dscale[K2], r2.dscale[K2]);
    EXPECT_EQ(r1.row_sq[K2], r2.row_sq[K2]);
    EXPECT_EQ(r1.col_norm[K2], r2.col_norm[K2]);
    EXPECT_EQ(r1.events[K2], r3.events[K2]);
    expect_close(r1.row_sq[K2], r3.row_sq[K2], 1e-5, "row_sq");
    expect_close(r1.col_sq[K2], r3.col_sq[K2], 1e-5, "col_sq");
    expect_close(r1.col_norm[K2], r3.col_norm[K2], 1e-5, "col_norm");
    expect_close(r1.dscale[K2], r3.dscale[K2], 1e-4, "dscale");
    int64_t diff = 0, far = 0, moved = 0;
    for (size_t x = 0; x < r1.votes[K2].size(); ++x) {
      const int d = int(r1.votes[K2][x]) - int(r3.votes[K2][x]);
      diff += d != 0, far += std::abs(d) > 1, moved += r3.votes[K2][x] != ms[K2].v0[x];
    }
    EXPECT_EQ(far, 0) << "votes more than one apart";
    EXPECT_LE(diff, int64_t(r1.votes[K2].size()) / 1000 + 1) << "votes one apart";
    EXPECT_GT(moved, int64_t(r1.votes[K2].size()) / 4) << "few votes moved: the case tests little";
    // The zero-scale group (row 0, group 3) keeps its votes.
    for (int64_t i = 3 * c.G; i < 4 * c.G; ++i) EXPECT_EQ(r1.votes[K2][size_t(i)], ms[K2].v0[size_t(i)]);
  }
}

}  // namespace

TEST(GpuDwCast, FusedIsTheGemmThenTheCast) {
  REQUIRE_GPU();
  if (!cuda::dw_cast_available()) GTEST_SKIP() << "no Hopper device or sm_90a image";
  const std::vector<Case> cases = {
      {DType::LUT4, {256}, 512, 32, 200},             // a token tail (TMA's zero fill)
      {DType::LUT4, {256, 128, 128}, 768, 64, 128},   // q, k, v stacked
      {DType::LUT8, {128}, 256, 8, 96},
      {DType::LUT2, {384}, 1280, 256, 64},            // five tiles a row
  };
  for (size_t k = 0; k < cases.size(); ++k) {
    SCOPED_TRACE("case " + std::to_string(k));
    run_case(cases[k], uint32_t(100 + k));
  }
}

// Shapes the kernel does not take go to the GEMM and the bf16 cast: dw_cast_shape_ok says no.
TEST(GpuDwCast, RefusesShapesItCannotTile) {
  REQUIRE_GPU();
  cuda::DwCastLaunch L;
  L.nseg = 1, L.N = 64, L.I = 512, L.O = 128, L.ldd = 128, L.ldi = 512, L.bits = 4;
  std::vector<float> dummy(64);
  L.rowpart = dummy.data();
  L.counters = reinterpret_cast<unsigned*>(dummy.data());
  alignas(16) static uint16_t buf[64];
  alignas(16) static uint8_t idx[64];
  L.dout = buf, L.inp = buf;
  int8_t v = 0;
  float f = 0;
  L.seg[0] = cuda::DwSeg{{idx, &f, &f, 128, 512, 32, 16, 256, 16}, &v, &f, &f, &f, &f, {}, 0, 0};
  EXPECT_TRUE(cuda::dw_cast_shape_ok(L));
  auto bad = L;
  bad.I = 384, bad.seg[0].m.I = 384;  // not a multiple of 256
  EXPECT_FALSE(cuda::dw_cast_shape_ok(bad));
  bad = L;
  bad.O = 96, bad.seg[0].m.O = 96;  // not a multiple of 128
  EXPECT_FALSE(cuda::dw_cast_shape_ok(bad));
  bad = L;
  bad.seg[0].m.G = 24;  // not a power of two
  EXPECT_FALSE(cuda::dw_cast_shape_ok(bad));
  bad = L;
  bad.bits = 3;
  EXPECT_FALSE(cuda::dw_cast_shape_ok(bad));
  bad = L;
  bad.ldd = 132;  // rows not 16-byte multiples
  EXPECT_FALSE(cuda::dw_cast_shape_ok(bad));
}
