// The LUT training kernels (ops/cuda/lut_train.h, votes.h, rng.cuh) against the CPU trainer
// (train/lut_weight, train/linear, train/votes, train/rng), which is the specification.
//
// Exact where exactness exists:
//  - the device random streams equal train::Rng draw for draw;
//  - dequantized rows equal LutWeight::dequantize_rows<float> bit for bit, every width;
//  - given the same gradient tiles, the cast (votes, row_sq, the per-tile column sums, col_sq,
//    col_norm, events) and dscale equal VoteEngine::tile / done and linear.cpp's dscale bit for
//    bit, and the optimizer step (indices, votes, cooldowns, flip count) equals VoteEngine::apply;
//  - the whole weight-gradient path (GEMM + cast) equals train::linear_backward with a VoteEngine
//    sink bit for bit when every dW value is one exactly rounded product (N = 1), and equals the
//    CPU engine fed with the GPU's own dW tiles for any N.
// Within derived tolerances where the GEMM's summation order differs (cuBLAS vs OpenBLAS):
//  - forward, dinp, dW: every fp32 sum of n terms, in any order and with or without FMA, is
//    within gamma(n) = n u / (1 - n u) of sum |terms| of the exact value (Higham, Accuracy and
//    Stability, 3.1), so GPU and CPU differ by at most gamma(n_gpu) + gamma(n_cpu) times it; the
//    norm of the GPU's error is also checked against its random-walk size 4 u sqrt(n) (as
//    test_lut_cuda.cpp);
//  - votes cast from the CPU's own dW: stochastic rounding r(x) = floor(x) + [u < frac x] is
//    monotone with r(x + 1) = r(x) + 1, so inputs dx apart give votes at most floor(dx) + 1
//    apart, and differ with probability min(1, dx); dx per weight is bounded from the dW bound
//    (momentum_x_bound), which also bounds the number of differing votes.
// The exact tests hold as long as the host is x86-64 without FMA code generation (the CPU
// trainer's build: no -march), the GPU kernels rounding every operation as that code does.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpu_testing.h"
#include "lut_testing.h"
#include "train/cuda/gpu_engine.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/rng.cuh"
#include "ops/cuda/votes.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"
#include "train/linear.h"
#include "train/rng.h"
#include "train/votes.h"

using namespace gputest;
namespace tr = primal::train;

namespace {

const DType kLut[] = {DType::LUT2, DType::LUT3, DType::LUT4, DType::LUT5, DType::LUT6, DType::LUT8, DType::LUT16};

double gamma_n(int64_t n) { return double(n) * kU / (1.0 - double(n) * kU); }

// A trainer matrix (O, I) of `type`: random indices (all of the grid for K <= 256), random fp32
// scales of both signs (one per G weights) with two exact zeros (the rules skip them), nf4 grid.
tr::Matrix make_matrix(DType type, int64_t O, int64_t I, int64_t G, uint32_t seed) {
  tr::Matrix m;
  m.name = "blk.0.ffn_up.weight";
  m.O = O, m.I = I;
  const int64_t K = lut_entries(type);
  m.lut = std::make_shared<tr::LutWeight>(tr::LutWeight::make(type, O, I, G, nf4_grid(K), "test"));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> pick(0, uint32_t(K - 1));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) m.lut->set(o, i, pick(rng));
  std::vector<float> s = randn(size_t(O * (I / G)), seed + 1, 0.05f);
  s.front() = 0.0f;
  if (s.size() > 2) s[s.size() / 2] = 0.0f;
  m.lut->scale = s;
  return m;
}

std::vector<uint8_t> device_indices(const DevLut& d, size_t n) {
  std::vector<uint8_t> v(n);
  cuda::copy_to_host(v.data(), d.view.idx, n);
  return v;
}

// Index of the first element where the two differ (floats: bit patterns), or -1.
template <class T>
int64_t first_difference(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t k = 0; k < a.size(); ++k) {
    if constexpr (std::is_same_v<T, float>) {
      if (f32_to_bits(a[k]) != f32_to_bits(b[k])) return int64_t(k);
    } else if (a[k] != b[k]) {
      return int64_t(k);
    }
  }
  return -1;
}

#define EXPECT_SAME(got, want, what)                                                                   \
  do {                                                                                                 \
    const auto& g_ = (got);                                                                            \
    const auto& w_ = (want);                                                                           \
    const int64_t k_ = first_difference(g_, w_);                                                       \
    EXPECT_EQ(k_, -1) << what << ": first difference at " << k_ << " of " << w_.size() << ": got "      \
                      << (k_ >= 0 && size_t(k_) < g_.size() ? double(g_[size_t(k_)]) : 0.0) << " want " \
                      << (k_ >= 0 && size_t(k_) < w_.size() ? double(w_[size_t(k_)]) : 0.0);           \
  } while (0)

// linear.cpp's dscale of rows o0 .. o0+rows-1 from their gradient dW (rows, I):
// dscale[o, g] += float(sum_{i in g} double(dW[o, i]) * double(grid[idx[o, i]])), in index order.
void cpu_dscale(const tr::LutWeight& L, int64_t o0, int64_t rows, const float* dW, float* dscale) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < L.groups(); ++g) {
      double s = 0;
      for (int64_t i = g * L.G; i < (g + 1) * L.G; ++i)
        s += double(dW[r * L.I + i]) * double(L.grid[L.get(o0 + r, i)]);
      dscale[(o0 + r) * L.groups() + g] += float(s);
    }
}

// ---- vote configurations --------------------------------------------------------------------

struct VoteCase {
  DType type;
  int64_t O, I, G;
  tr::Rule rule;
  int vote_bits;
  bool second_moment;
  int noise, cooldown, consensus;
  double lr;        // momentum
  double flip_lr;   // seed
};

std::string case_name(const VoteCase& c) {
  return dtype_name(c.type) + " O=" + std::to_string(c.O) + " I=" + std::to_string(c.I) + " G=" + std::to_string(c.G) +
         " " + tr::rule_name(c.rule) + " int" + std::to_string(c.vote_bits) + (c.second_moment ? " sm" : "") +
         " noise=" + std::to_string(c.noise) + " cool=" + std::to_string(c.cooldown);
}

tr::VoteConfig cpu_config(const VoteCase& c) {
  tr::VoteConfig cfg;
  cfg.rule = c.rule;
  cfg.vote_bits = c.vote_bits;
  cfg.seed = 1234567;
  cfg.sensitivity = 0.75;
  cfg.consensus = c.consensus;
  cfg.flip_lr = c.flip_lr;
  cfg.noise = c.noise;
  cfg.cooldown = c.cooldown;
  cfg.lr = c.lr;
  cfg.second_moment = c.second_moment;
  cfg.beta2 = 0.95;  // far from 1, so that the bias correction and the EMAs move visibly
  // Any flip makes the governor react (lr_mult *= 0.8, sensitivity += 0.02): the next step's
  // parameters then come from a moved governor, as a GPU trainer would pass them.
  cfg.flip_cap = 1e-9;
  return cfg;
}

// What a GPU trainer passes for this step: the configuration, the step and schedule of
// VoteEngine::begin_step and the governor's current values.
cuda::VoteParams gpu_params(const tr::VoteConfig& cfg, const tr::Governor& gov, int64_t step, double sched) {
  return tr::gpu_vote_params(cfg, gov, step, sched);
}

// Random votes (and cooldowns) in both engines, so that the first step already moves indices.
void randomize_state(tr::LutVotes& s, const cuda::DeviceVotes& d, const tr::VoteConfig& cfg, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t vmax = cfg.vmax();
  std::uniform_int_distribution<int64_t> vote(-vmax, vmax);
  const size_t n = s.v8.empty() ? s.v16.size() : s.v8.size();
  for (size_t k = 0; k < n; ++k) s.set_vote(int64_t(k), int32_t(vote(rng)));
  if (!s.v8.empty()) cuda::copy_to_device(d.state.v8, s.v8.data(), n);
  else cuda::copy_to_device(d.state.v16, s.v16.data(), n * 2);
  if (!s.cool.empty()) {
    std::uniform_int_distribution<int> cool(0, cfg.cooldown);
    for (auto& c : s.cool) c = uint8_t(cool(rng));
    cuda::copy_to_device(d.state.cool, s.cool.data(), n);
  }
}

// Every piece of vote state equal bit for bit, and the indices.
void expect_same_state(const tr::LutVotes& s, const cuda::DeviceVotes& d, const tr::LutWeight& L, const DevLut& dl,
                       const std::string& when) {
  SCOPED_TRACE(when);
  const size_t n = size_t(L.O * L.I);
  if (!s.v8.empty()) EXPECT_SAME(to_host<int8_t>(d.votes, n), s.v8, "int8 votes");
  else EXPECT_SAME(to_host<int16_t>(d.votes, n), s.v16, "int16 votes");
  if (!s.cool.empty()) EXPECT_SAME(to_host<uint8_t>(d.cool, n), s.cool, "cooldowns");
  if (!s.row_sq.empty()) {
    EXPECT_SAME(to_host<float>(d.row_sq, s.row_sq.size()), s.row_sq, "row_sq");
    EXPECT_SAME(to_host<float>(d.col_sq, s.col_sq.size()), s.col_sq, "col_sq");
    EXPECT_SAME(to_host<float>(d.col_norm, s.col_norm.size()), s.col_norm, "col_norm");
    EXPECT_SAME(to_host<float>(d.col_part, s.col_part.size()), s.col_part, "col_part");
  }
  EXPECT_EQ(d.state.events, s.events);
  EXPECT_EQ(d.state.events_this_step, s.events_this_step);
  EXPECT_SAME(device_indices(dl, L.idx.size()), L.idx, "indices");
}

auto all = [](const tr::Matrix&) { return true; };

// The optimizer step on both sides; the flip counts must agree.
void apply_both(tr::VoteEngine& eng, cuda::DeviceVotes& dv, const DevLut& dl, const cuda::VoteParams& p) {
  const tr::StepStats st = eng.apply(all);
  auto counter = to_device(std::vector<unsigned long long>{0});
  cuda::lut_votes_apply(dl.view, dv.state, p, counter.as<unsigned long long>(), nullptr);
  const auto flips = to_host<unsigned long long>(counter, 1);
  EXPECT_EQ(int64_t(flips[0]), st.flips);
}

// Every width, both rules, int8 and int16, with and without second moments, noise, cooldown;
// O not a multiple of the tile rows R (65536 / I capped to 64), groups of one row and smaller.
std::vector<VoteCase> vote_cases() {
  using tr::Rule;
  return {
      {DType::LUT4, 150, 200, 40, Rule::Momentum, 8, true, 0, 0, 4, 2e-3, 1.0},    // R = 64: tiles 64, 64, 22
      {DType::LUT3, 70, 2048, 2048, Rule::Momentum, 16, true, 3, 2, 4, 2e-3, 1.0},  // R = 32, per-row scales
      {DType::LUT16, 40, 96, 32, Rule::Momentum, 16, false, 1, 0, 4, 2e-3, 1.0},    // tiny gaps: clamped x
      {DType::LUT2, 90, 136, 8, Rule::Momentum, 8, true, 2, 1, 4, 2e-3, 1.0},       // K = 4: grid ends
      {DType::LUT5, 66, 1000, 40, Rule::Momentum, 8, true, 0, 3, 4, 5e-3, 1.0},     // R = 65: tiles 65, 1
      {DType::LUT8, 33, 512, 64, Rule::Momentum, 8, false, 0, 0, 4, 2e-3, 1.0},
      {DType::LUT6, 100, 200, 200, Rule::Momentum, 16, true, 5, 0, 4, 2e-3, 1.0},
      {DType::LUT4, 150, 200, 40, Rule::Seed, 8, false, 2, 2, 3, 0, 0.8},
      {DType::LUT2, 70, 136, 8, Rule::Seed, 8, false, 0, 0, 2, 0, 5.0},             // flips against grid ends
      {DType::LUT6, 40, 2048, 64, Rule::Seed, 16, false, 7, 1, 100, 0, 0.6},
      {DType::LUT16, 30, 96, 96, Rule::Seed, 16, false, 0, 3, 4, 0, 1.0},
      {DType::LUT3, 64, 1000, 8, Rule::Seed, 8, false, 1, 0, 4, 0, 1.0},
      {DType::LUT5, 20, 64, 64, Rule::Seed, 8, false, 0, 0, 1, 0, 1.0},
      {DType::LUT8, 50, 256, 32, Rule::Seed, 16, false, 0, 2, 8, 0, 0.9},
  };
}

}  // namespace

// ---- random streams -----------------------------------------------------------------------------

TEST(GpuLutTrain, CounterRngEqualsTrainRng) {
  struct Key { uint64_t seed, a, b, c, d; };
  const Key keys[] = {{0, 0, 0, 0, 0}, {1234567, 7, 3, (1ull << 32) | 5, 1234}, {~0ull, 99999, 17, 2, 0},
                      {42, ~0ull, 1ull << 63, 3, 65535}};
  for (uint64_t x : {0ull, 1ull, 0x9E3779B97F4A7C15ull, ~0ull}) EXPECT_EQ(cuda::rng_splitmix64(x), tr::splitmix64(x));
  // The host copy: draw n of the counter form is the n-th next().
  for (const Key& k : keys) {
    tr::Rng a(k.seed, k.a, k.b, k.c, k.d), b(k.seed, k.a, k.b, k.c, k.d), c(k.seed, k.a, k.b, k.c, k.d);
    const cuda::CounterRng r = cuda::CounterRng::from_key(k.seed, k.a, k.b, k.c, k.d);
    EXPECT_EQ(cuda::CounterRng::from_prefix(cuda::rng_key_prefix(k.seed, k.a, k.b, k.c), k.d).s0, r.s0);
    for (uint64_t n = 1; n <= 2000; ++n) {
      ASSERT_EQ(r.at(n), a.next()) << "draw " << n;
      ASSERT_EQ(f32_to_bits(r.uniform_at(n)), f32_to_bits(b.uniform())) << "draw " << n;
      ASSERT_EQ(r.range_at(n, -5, 5), c.range(-5, 5)) << "draw " << n;
    }
  }
  // The device.
  REQUIRE_GPU();
  const int64_t n = 5000;
  for (const Key& k : keys) {
    for (auto [lo, hi] : {std::pair<int64_t, int64_t>{-3, 3}, {-32767, 32767}, {0, 0}}) {
      cuda::DeviceBuffer u(size_t(n) * 8), f(size_t(n) * 4), rr(size_t(n) * 8);
      cuda::rng_stream_draws(k.seed, k.a, k.b, k.c, k.d, n, lo, hi, u.as<uint64_t>(), f.as<float>(), rr.as<int64_t>(),
                             nullptr);
      cuda::Stream::sync_stream(nullptr);
      const auto gu = to_host<uint64_t>(u, size_t(n));
      const auto gf = to_host<float>(f, size_t(n));
      const auto gr = to_host<int64_t>(rr, size_t(n));
      tr::Rng a(k.seed, k.a, k.b, k.c, k.d), b(k.seed, k.a, k.b, k.c, k.d), c(k.seed, k.a, k.b, k.c, k.d);
      for (int64_t j = 0; j < n; ++j) {
        ASSERT_EQ(gu[size_t(j)], a.next()) << "draw " << j + 1;
        ASSERT_EQ(f32_to_bits(gf[size_t(j)]), f32_to_bits(b.uniform())) << "draw " << j + 1;
        ASSERT_EQ(gr[size_t(j)], c.range(lo, hi)) << "draw " << j + 1;
      }
    }
  }
}

// ---- dequantization -----------------------------------------------------------------------------

TEST(GpuLutTrain, DequantizeRowsBitIdenticalEveryWidth) {
  REQUIRE_GPU();
  uint32_t seed = 100;
  for (DType t : kLut) {
    for (auto [I, G] : {std::pair<int64_t, int64_t>{8, 8}, {200, 8}, {200, 40}, {200, 200}, {1032, 24}}) {
      SCOPED_TRACE(dtype_name(t) + " I=" + std::to_string(I) + " G=" + std::to_string(G));
      const int64_t O = 37;
      const tr::Matrix m = make_matrix(t, O, I, G, seed++);
      const DevLut d = upload(*m.lut);
      ASSERT_EQ(d.view.row_bytes(), int64_t(row_bytes(t, I)));
      for (auto [o0, n] : {std::pair<int64_t, int64_t>{0, O}, {5, 29}, {O - 1, 1}}) {
        const int64_t guard = 64;  // NaN sentinels after the rows: nothing may be written there
        auto out = poisoned(size_t(n * I + guard));
        cuda::lut_dequantize_rows(d.view, o0, n, out.as<float>(), nullptr);
        cuda::Stream::sync_stream(nullptr);
        const auto got = to_host<float>(out, size_t(n * I + guard));
        std::vector<float> want(size_t(n * I));
        m.lut->dequantize_rows<float>(o0, n, want.data());
        EXPECT_SAME(std::vector<float>(got.begin(), got.begin() + n * I), want, "rows " + std::to_string(o0));
        for (int64_t k = n * I; k < n * I + guard; ++k) ASSERT_TRUE(std::isnan(got[size_t(k)])) << "sentinel " << k;
      }
    }
  }
}

// ---- forward and dinp ---------------------------------------------------------------------------

struct LinCase {
  DType type;
  int64_t N, O, I, G;
};
const LinCase kLinCases[] = {
    {DType::LUT4, 1, 37, 200, 40},  {DType::LUT3, 5, 130, 1032, 8}, {DType::LUT16, 67, 64, 96, 32},
    {DType::LUT2, 3, 300, 64, 64},  {DType::LUT5, 17, 20, 400, 80}, {DType::LUT6, 2, 9, 4096, 128},
    {DType::LUT8, 40, 129, 256, 32},
};

TEST(GpuLutTrain, ForwardMatchesCpuWithinDerivedTolerance) {
  REQUIRE_GPU();
  cuda::Blas blas;
  uint32_t seed = 300;
  for (const LinCase& c : kLinCases) {
    const int64_t N = c.N, O = c.O, I = c.I;
    const tr::Matrix m = make_matrix(c.type, O, I, c.G, seed++);
    const DevLut d = upload(*m.lut);
    const auto inp = randn(size_t(N * I), seed++, 1.0f), bias = randn(size_t(O), seed++, 0.5f);
    std::vector<float> W(size_t(O * I));
    m.lut->dequantize_rows<float>(0, O, W.data());
    const auto din = to_device(inp), dbias = to_device(bias);
    for (bool with_bias : {false, true}) {
      std::vector<float> cpu(size_t(N * O));
      tr::linear_forward<float>(cpu.data(), inp.data(), N, m, with_bias ? bias.data() : nullptr);
      for (int64_t scratch : {I, 7 * I, O * I}) {
        SCOPED_TRACE(dtype_name(c.type) + " N=" + std::to_string(N) + " O=" + std::to_string(O) + " I=" +
                     std::to_string(I) + " scratch=" + std::to_string(scratch) + (with_bias ? " bias" : ""));
        auto out = poisoned(size_t(N * O));
        auto sc = poisoned(size_t(scratch));
        cuda::lut_linear_forward(blas, d.view, din.as<float>(), N, with_bias ? dbias.as<float>() : nullptr,
                                 out.as<float>(), sc.as<float>(), scratch, nullptr);
        cuda::Stream::sync_stream(nullptr);
        const auto got = to_host<float>(out, size_t(N * O));
        double err2 = 0, abs2 = 0;
        for (int64_t t = 0; t < N; ++t)
          for (int64_t o = 0; o < O; ++o) {
            double ref = with_bias ? bias[size_t(o)] : 0.0, a = std::fabs(ref);
            for (int64_t i = 0; i < I; ++i) {
              const double p = double(W[size_t(o * I + i)]) * inp[size_t(t * I + i)];
              ref += p, a += std::fabs(p);
            }
            const float g = got[size_t(t * O + o)], cp = cpu[size_t(t * O + o)];
            ASSERT_TRUE(std::isfinite(g)) << "out[" << t << ", " << o << "]";
            // I products and the bias: gamma(I + 1) each side.
            ASSERT_NEAR(g, cp, 2 * gamma_n(I + 1) * a + 1e-30) << "out[" << t << ", " << o << "] vs the CPU";
            ASSERT_NEAR(g, ref, gamma_n(I + 1) * a + 1e-30) << "out[" << t << ", " << o << "] vs fp64";
            err2 += (g - ref) * (g - ref), abs2 += a * a;
          }
        EXPECT_LE(std::sqrt(err2), 4 * kU * std::sqrt(double(I + 1)) * std::sqrt(abs2) + 1e-30);
      }
    }
  }
}

TEST(GpuLutTrain, BackwardInputMatchesCpuWithinDerivedTolerance) {
  REQUIRE_GPU();
  cuda::Blas blas;
  uint32_t seed = 500;
  for (const LinCase& c : kLinCases) {
    const int64_t N = c.N, O = c.O, I = c.I, R = tr::lut_tile_rows(I);
    const tr::Matrix m = make_matrix(c.type, O, I, c.G, seed++);
    const DevLut d = upload(*m.lut);
    const auto dout = randn(size_t(N * O), seed++, 1.0f), init = randn(size_t(N * I), seed++, 1.0f);
    std::vector<float> W(size_t(O * I));
    m.lut->dequantize_rows<float>(0, O, W.data());
    const auto ddout = to_device(dout);
    for (bool acc : {false, true}) {
      std::vector<float> cpu = acc ? init : std::vector<float>(size_t(N * I), 0.0f);
      tr::linear_backward<float>(cpu.data(), acc, dout.data(), nullptr, N, m, tr::LinearGrad<float>{});
      for (int64_t scratch : {I, 7 * I + 3, O * I}) {
        SCOPED_TRACE(dtype_name(c.type) + " N=" + std::to_string(N) + " O=" + std::to_string(O) + " I=" +
                     std::to_string(I) + " scratch=" + std::to_string(scratch) + (acc ? " accumulate" : ""));
        auto dinp = acc ? to_device(init) : poisoned(size_t(N * I));
        auto sc = poisoned(size_t(scratch));
        cuda::lut_linear_backward_input(blas, d.view, ddout.as<float>(), N, dinp.as<float>(), acc, sc.as<float>(),
                                        scratch, nullptr);
        cuda::Stream::sync_stream(nullptr);
        const auto got = to_host<float>(dinp, size_t(N * I));
        // O products and the initial value, summed chunk by chunk (GPU) or tile by tile (CPU):
        // each partial result adds one more rounding.
        const int64_t rows = std::min(O, scratch / I), chunks = (O + rows - 1) / rows, tiles = (O + R - 1) / R;
        const int64_t n_gpu = O + chunks + 1, n_cpu = O + tiles + 1;
        double err2 = 0, abs2 = 0;
        for (int64_t t = 0; t < N; ++t)
          for (int64_t i = 0; i < I; ++i) {
            double ref = acc ? init[size_t(t * I + i)] : 0.0, a = std::fabs(ref);
            for (int64_t o = 0; o < O; ++o) {
              const double p = double(dout[size_t(t * O + o)]) * W[size_t(o * I + i)];
              ref += p, a += std::fabs(p);
            }
            const float g = got[size_t(t * I + i)], cp = cpu[size_t(t * I + i)];
            ASSERT_TRUE(std::isfinite(g)) << "dinp[" << t << ", " << i << "]";
            ASSERT_NEAR(g, cp, (gamma_n(n_gpu) + gamma_n(n_cpu)) * a + 1e-30) << "dinp[" << t << ", " << i << "]";
            ASSERT_NEAR(g, ref, gamma_n(n_gpu) * a + 1e-30) << "dinp[" << t << ", " << i << "] vs fp64";
            err2 += (g - ref) * (g - ref), abs2 += a * a;
          }
        EXPECT_LE(std::sqrt(err2), 4 * kU * std::sqrt(double(n_gpu)) * std::sqrt(abs2) + 1e-30);
      }
    }
  }
}

// ---- the weight gradient: dW, dscale, dbias -----------------------------------------------------

// dW (the scratch after a call whose scratch holds the whole matrix) within gamma(N) of fp64;
// dscale from that dW equal to linear.cpp's formula bit for bit, and within the propagated
// tolerance of the CPU's own linear_backward for every scratch size; dbias equal to the CPU's.
TEST(GpuLutTrain, WeightGradientDscaleDbias) {
  REQUIRE_GPU();
  cuda::Blas blas;
  uint32_t seed = 700;
  for (const LinCase& c : kLinCases) {
    const int64_t N = c.N, O = c.O, I = c.I, R = tr::lut_tile_rows(I);
    const tr::Matrix m = make_matrix(c.type, O, I, c.G, seed++);
    const tr::LutWeight& L = *m.lut;
    const DevLut d = upload(L);
    const auto dout = randn(size_t(N * O), seed++, 1.0f), inp = randn(size_t(N * I), seed++, 1.0f);
    const auto ds0 = randn(size_t(O * L.groups()), seed++, 1.0f), db0 = randn(size_t(O), seed++, 1.0f);
    std::vector<float> cpu_ds = ds0, cpu_db = db0;
    tr::LinearGrad<float> cg;
    cg.dscale = cpu_ds.data(), cg.dbias = cpu_db.data();
    tr::linear_backward<float>(nullptr, false, dout.data(), inp.data(), N, m, cg);
    // fp64 dW and sum |products| per weight.
    const ExactGrad ex = exact_weight_grad(dout.data(), O, inp.data(), N, O, I);
    const std::vector<double>&dW = ex.dW, &A = ex.mag;
    const auto ddout = to_device(dout), dinp = to_device(inp);
    for (int64_t scratch : {R * I, 2 * R * I + 5, O * I + R * I}) {
      SCOPED_TRACE(dtype_name(c.type) + " N=" + std::to_string(N) + " O=" + std::to_string(O) + " I=" +
                   std::to_string(I) + " scratch=" + std::to_string(scratch));
      auto gds = to_device(ds0), gdb = to_device(db0);
      auto sc = poisoned(size_t(scratch));
      cuda::LutWeightGrad g;
      g.dscale = gds.as<float>(), g.dbias = gdb.as<float>();
      cuda::lut_linear_backward_weight(blas, d.view, ddout.as<float>(), dinp.as<float>(), N, g, sc.as<float>(), scratch,
                                       nullptr);
      cuda::Stream::sync_stream(nullptr);
      const auto got_ds = to_host<float>(gds, ds0.size());
      EXPECT_SAME(to_host<float>(gdb, db0.size()), cpu_db, "dbias");
      // dscale vs the CPU: each dW within gamma(N) A of exact on either side, times |grid|,
      // plus the fp32 roundings of the group sum and of the accumulation on either side.
      for (int64_t o = 0; o < O; ++o)
        for (int64_t gi = 0; gi < L.groups(); ++gi) {
          double tol = 0, s = 0;
          for (int64_t i = gi * L.G; i < (gi + 1) * L.G; ++i) {
            const double gv = L.grid[L.get(o, i)];
            tol += std::fabs(gv) * 2 * gamma_n(N) * A[size_t(o * I + i)];
            s += gv * dW[size_t(o * I + i)];
          }
          const size_t k = size_t(o * L.groups() + gi);
          tol += 4 * kU * (std::fabs(s) + std::fabs(double(ds0[k]) + s)) + 1e-30;
          ASSERT_NEAR(got_ds[k], cpu_ds[k], tol) << "dscale[" << o << ", " << gi << "]";
        }
      if (scratch >= O * I) {  // one chunk: the scratch holds the whole dW
        const auto got_dw = to_host<float>(sc, size_t(O * I));
        for (int64_t k = 0; k < O * I; ++k)
          ASSERT_NEAR(got_dw[size_t(k)], dW[size_t(k)], gamma_n(N) * A[size_t(k)] + 1e-30) << "dW element " << k;
        std::vector<float> want_ds = ds0;
        cpu_dscale(L, 0, O, got_dw.data(), want_ds.data());
        EXPECT_SAME(got_ds, want_ds, "dscale from the same dW");
        const auto whole = to_host<float>(sc, size_t(scratch));
        for (int64_t k = O * I; k < scratch; ++k)  // the rest of the scratch is untouched
          ASSERT_TRUE(std::isnan(whole[size_t(k)])) << "scratch " << k;
      }
    }
  }
}

// ---- votes: the same gradient tiles on both sides -----------------------------------------------

// Two steps of two backward calls each (the first call's tiles in one lut_grad_tiles call, the
// second tile by tile), then the optimizer step; the whole state compared after every call.
TEST(GpuLutTrain, CastAndApplyEqualTheCpuOnTheSameTiles) {
  REQUIRE_GPU();
  uint32_t seed = 900;
  for (const VoteCase& c : vote_cases()) {
    SCOPED_TRACE(case_name(c));
    tr::Matrix m = make_matrix(c.type, c.O, c.I, c.G, seed++);
    const tr::LutWeight& L = *m.lut;
    const DevLut d = upload(L);
    const int64_t O = c.O, I = c.I, R = tr::lut_tile_rows(I);
    ASSERT_EQ(cuda::lut_train_tile_rows(I), R);
    const tr::VoteConfig cfg = cpu_config(c);
    tr::VoteEngine eng(cfg, {&m});
    tr::LutVotes& s = eng.states()[0];
    cuda::VoteParams p = gpu_params(cfg, eng.governor(), 0, 1.0);
    cuda::DeviceVotes dv = cuda::make_device_votes(d.view, p, s.id, nullptr);
    randomize_state(s, dv, cfg, seed++);
    expect_same_state(s, dv, L, d, "initial");
    std::vector<float> ds = randn(size_t(O * L.groups()), seed++, 1.0f);
    auto gds = to_device(ds);
    int64_t flips_seen = 0;
    for (int64_t step = 0; step < 2; ++step) {
      const double sched = step == 0 ? 1.0 : 0.5;
      eng.begin_step(step, sched);
      dv.state.begin_step();
      p = gpu_params(cfg, eng.governor(), step, sched);
      for (int call = 0; call < 2; ++call) {
        std::vector<float> g = randn(size_t(O * I), seed++, 1.0f);
        std::fill(g.begin() + 3 * I, g.begin() + 4 * I, 0.0f);  // a row without gradient
        for (int64_t i = 0; i < I; i += 7) g[size_t(5 * I + i)] = 0.0f;  // zeros within a row
        const auto dg = to_device(g);
        for (int64_t o0 = 0; o0 < O; o0 += R) {
          const int64_t rows = std::min(R, O - o0);
          eng.tile(m, o0, rows, g.data() + o0 * I);
          cpu_dscale(L, o0, rows, g.data() + o0 * I, ds.data());
          if (call == 1)
            cuda::lut_grad_tiles(d.view, dg.as<float>() + o0 * I, o0, rows, gds.as<float>(), &dv.state, &p, nullptr);
        }
        if (call == 0) cuda::lut_grad_tiles(d.view, dg.as<float>(), 0, O, gds.as<float>(), &dv.state, &p, nullptr);
        eng.done(m);
        cuda::lut_votes_done(d.view, dv.state, p, nullptr);
        cuda::Stream::sync_stream(nullptr);
        const std::string when = "step " + std::to_string(step) + " call " + std::to_string(call);
        expect_same_state(s, dv, L, d, when);
        EXPECT_SAME(to_host<float>(gds, ds.size()), ds, "dscale " + when);
      }
      const tr::StepStats st = eng.apply(all);
      auto counter = to_device(std::vector<unsigned long long>{7});  // accumulated onto
      cuda::lut_votes_apply(d.view, dv.state, p, counter.as<unsigned long long>(), nullptr);
      cuda::Stream::sync_stream(nullptr);
      EXPECT_EQ(int64_t(to_host<unsigned long long>(counter, 1)[0]), 7 + st.flips) << "step " << step;
      expect_same_state(s, dv, L, d, "after apply " + std::to_string(step));
      flips_seen += st.flips;
    }
    EXPECT_GT(flips_seen, 0) << "the case moves no index: it tests little";
    EXPECT_GT(eng.governor().reactions, 0) << "step 1 ran with the initial governor";
  }
}

// ---- the whole weight-gradient path -------------------------------------------------------------

// With N = 1 every dW value is one product, exactly rounded by any GEMM, so the GPU path (cuBLAS,
// then the tile kernels, through a one-tile scratch) and train::linear_backward with a VoteEngine
// sink see the same gradient: everything equal bit for bit, over three steps with the optimizer.
TEST(GpuLutTrain, FusedPathEqualsCpuLinearBackwardForExactProducts) {
  REQUIRE_GPU();
  cuda::Blas blas;
  uint32_t seed = 1100;
  for (const VoteCase& c : vote_cases()) {
    SCOPED_TRACE(case_name(c));
    tr::Matrix m = make_matrix(c.type, c.O, c.I, c.G, seed++);
    const tr::LutWeight& L = *m.lut;
    const DevLut d = upload(L);
    const int64_t O = c.O, I = c.I, scratch = cuda::lut_grad_scratch_floats(I);
    const tr::VoteConfig cfg = cpu_config(c);
    tr::VoteEngine eng(cfg, {&m});
    tr::LutVotes& s = eng.states()[0];
    cuda::VoteParams p = gpu_params(cfg, eng.governor(), 0, 1.0);
    cuda::DeviceVotes dv = cuda::make_device_votes(d.view, p, s.id, nullptr);
    std::vector<float> ds = randn(size_t(O * L.groups()), seed++, 1.0f), db = randn(size_t(O), seed++, 1.0f);
    auto gds = to_device(ds), gdb = to_device(db);
    auto sc = poisoned(size_t(scratch));
    for (int64_t step = 0; step < 3; ++step) {
      eng.begin_step(step, 1.0);
      dv.state.begin_step();
      p = gpu_params(cfg, eng.governor(), step, 1.0);
      const auto dout = randn(size_t(O), seed++, 1.0f), inp = randn(size_t(I), seed++, 1.0f);
      tr::LinearGrad<float> cg;
      cg.dscale = ds.data(), cg.dbias = db.data(), cg.sink = &eng;
      tr::linear_backward<float>(nullptr, false, dout.data(), inp.data(), 1, m, cg);
      const auto ddout = to_device(dout), dinp = to_device(inp);
      cuda::LutWeightGrad g;
      g.dscale = gds.as<float>(), g.dbias = gdb.as<float>(), g.votes = &dv.state, g.params = &p;
      cuda::lut_linear_backward_weight(blas, d.view, ddout.as<float>(), dinp.as<float>(), 1, g, sc.as<float>(), scratch,
                                       nullptr);
      cuda::Stream::sync_stream(nullptr);
      const std::string when = "step " + std::to_string(step);
      expect_same_state(s, dv, L, d, when);
      EXPECT_SAME(to_host<float>(gds, ds.size()), ds, "dscale " + when);
      EXPECT_SAME(to_host<float>(gdb, db.size()), db, "dbias " + when);
      apply_both(eng, dv, d, p);
      cuda::Stream::sync_stream(nullptr);
      expect_same_state(s, dv, L, d, "after apply " + when);
    }
  }
}

// How far apart the momentum rule's x = -lr g U / ((sqrt(rhat chat) + eps) s gap) can be when
// it is formed from two gradients of one backward call (the first: col_norm = 1) whose values
// differ by at most e_k (e: (O, I)). g is one of them (O, I). Per weight, |dx| <= S e_k + |x| rho / 2
// + 4 u |x|: S = lr U / (denom |s| min(gap up, gap down)) bounds the change through g itself
// (also across a sign change, which picks the other gap), rho bounds the relative change of the
// row's rhat (sum g^2 moves by at most sum 2 |g| e + e^2; x scales with rhat^-1/2), and 4 u
// covers the fp32 rounding of row_sq. Returns dx per weight, 0 where the scale is 0 (no vote).
std::vector<double> momentum_x_bound(const tr::LutWeight& L, const tr::VoteConfig& cfg, const std::vector<float>& g,
                                     const std::vector<double>& e) {
  const int64_t O = L.O, I = L.I, K = L.K();
  const double U = double(cfg.units());
  std::vector<double> dx(size_t(O * I), 0.0);
  for (int64_t o = 0; o < O; ++o) {
    double g2 = 0, dg2 = 0;
    for (int64_t i = 0; i < I; ++i) {
      const double gv = g[size_t(o * I + i)], ev = e[size_t(o * I + i)];
      g2 += gv * gv, dg2 += 2 * std::fabs(gv) * ev + ev * ev;
    }
    const double rhat = g2 / double(I), rho = g2 > 0 ? dg2 / g2 : INFINITY;
    const double denom = cfg.second_moment ? std::sqrt(rhat) + cfg.eps : 1.0;
    for (int64_t i = 0; i < I; ++i) {
      const double sc = L.scale[size_t(o * L.groups() + i / L.G)];
      if (sc == 0) continue;
      const int64_t q = L.get(o, i);
      const double up = q < K - 1 ? L.grid[q + 1] - L.grid[q] : L.grid[K - 1] - L.grid[K - 2];
      const double down = q > 0 ? L.grid[q] - L.grid[q - 1] : L.grid[1] - L.grid[0];
      const double S = cfg.lr * U / (denom * std::fabs(sc) * std::min(up, down));
      const double x = S * std::fabs(g[size_t(o * I + i)]);
      const double d = S * e[size_t(o * I + i)] + x * ((cfg.second_moment ? rho / 2 : 0.0) + 4 * kU);
      dx[size_t(o * I + i)] = d < double(4 * cfg.vmax()) ? d : double(4 * cfg.vmax());  // x is clamped to +-2 vmax
    }
  }
  return dx;
}

// For N > 1 the GEMMs sum in different orders. The GPU path with a scratch that holds the whole
// matrix leaves its dW there: the CPU engine fed with those tiles must give the same state bit
// for bit (the cast is exact; only the GEMM differs). The CPU's own linear_backward (its own dW,
// each value within 2 gamma(N) A of the GPU's) then gives votes that differ, per weight, by at
// most floor(dx) + 1 (momentum: dx from momentum_x_bound; stochastic rounding is monotone with
// r(x + 1) = r(x) + 1) or 1 (seed: one cast of -1, 0 or +1), and rarely: a difference needs the
// uniform between the two fractions, probability min(1, dx), so the count is bounded by
// 3 + 2 sum min(1, dx) (seed: weights at the threshold; 1% of them, the expected count being ~0).
TEST(GpuLutTrain, FusedPathOnItsOwnTilesAndAgainstTheCpuGemm) {
  REQUIRE_GPU();
  cuda::Blas blas;
  uint32_t seed = 1300;
  for (const VoteCase& c : vote_cases()) {
    SCOPED_TRACE(case_name(c));
    const int64_t O = c.O, I = c.I, N = 37, R = tr::lut_tile_rows(I);
    tr::Matrix m = make_matrix(c.type, O, I, c.G, seed++);
    tr::Matrix m_own = m;  // the CPU's own path; the LutWeight is shared but only read (no apply)
    const tr::LutWeight& L = *m.lut;
    const DevLut d = upload(L);
    const tr::VoteConfig cfg = cpu_config(c);
    tr::VoteEngine eng(cfg, {&m}), own(cfg, {&m_own});
    tr::LutVotes& s = eng.states()[0];
    const cuda::VoteParams p = gpu_params(cfg, eng.governor(), 0, 1.0);
    cuda::DeviceVotes dv = cuda::make_device_votes(d.view, p, s.id, nullptr);
    eng.begin_step(0, 1.0);
    own.begin_step(0, 1.0);
    dv.state.begin_step();
    // dout scaled by 1 / sqrt(N) so that dW ~ N(0, 1) as in the other tests.
    const auto dout = randn(size_t(N * O), seed++, 1.0f / std::sqrt(float(N)));
    const auto inp = randn(size_t(N * I), seed++, 1.0f);
    const auto ddout = to_device(dout), dinp = to_device(inp);
    auto sc = poisoned(size_t(O * I));
    cuda::LutWeightGrad g;
    g.votes = &dv.state, g.params = &p;
    cuda::lut_linear_backward_weight(blas, d.view, ddout.as<float>(), dinp.as<float>(), N, g, sc.as<float>(), O * I,
                                     nullptr);
    cuda::Stream::sync_stream(nullptr);
    const auto dW = to_host<float>(sc, size_t(O * I));
    for (int64_t o0 = 0; o0 < O; o0 += R) eng.tile(m, o0, std::min(R, O - o0), dW.data() + o0 * I);
    eng.done(m);
    expect_same_state(s, dv, L, d, "the GPU's tiles");

    tr::LinearGrad<float> cg;
    cg.sink = &own;
    tr::linear_backward<float>(nullptr, false, dout.data(), inp.data(), N, m_own, cg);
    const tr::LutVotes& so = own.states()[0];
    const size_t n = size_t(O * I);
    std::vector<double> e(n);  // |dW_gpu - dW_cpu| <= 2 gamma(N) sum_t |dout inp|
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) {
        double a = 0;
        for (int64_t t = 0; t < N; ++t) a += std::fabs(double(dout[size_t(t * O + o)]) * inp[size_t(t * I + i)]);
        e[size_t(o * I + i)] = 2 * gamma_n(N) * a;
      }
    const bool momentum = c.rule == tr::Rule::Momentum;
    const std::vector<double> dx = momentum ? momentum_x_bound(L, cfg, dW, e) : std::vector<double>(n, 0.0);
    int64_t differ = 0;
    double expected = 0;
    for (size_t k = 0; k < n; ++k) {
      const int32_t dvote = s.vote(int64_t(k)) - so.vote(int64_t(k));
      const double allowed = momentum ? std::floor(dx[k]) + 1 : 1.0;
      ASSERT_LE(std::abs(dvote), allowed) << "weight " << k << " (dx bound " << dx[k] << ")";
      differ += dvote != 0;
      expected += std::min(1.0, dx[k]);
    }
    EXPECT_LE(differ, momentum ? int64_t(3 + 2 * expected) : std::max<int64_t>(3, int64_t(n) / 100))
        << "expected about " << expected;
  }
}
