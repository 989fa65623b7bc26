// The vote machinery, exactly: which weights vote for a given gradient row (threshold
// mean + k std of |g|), the direction under either sign of the scale, saturation of int8 and
// int16 votes, flip decisions (consensus, grid ends, reset), cooldown, noise, the governor's
// reactions, the momentum rule's units, carry and clamping, its second-moment normalization,
// unbiased stochastic rounding, and independence from the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <vector>

#include "core/error.h"
#include "quant/lut_grid.h"
#include "train/votes.h"

using namespace primal;
using namespace primal::train;

namespace {

// A LUT4 matrix of O rows of I weights, one scale per row, uniform grid: -1, -0.875, ..., 0.875
// (bucket width 0.125), every index at `idx` and every scale at `scale`.
Matrix make_matrix(int64_t O, int64_t I, uint32_t idx = 8, float scale = 1.0f) {
  Matrix m;
  m.name = "blk.0.attn_q.weight";
  m.O = O;
  m.I = I;
  std::vector<float> grid = uniform_grid(16);  // -8 .. 7
  for (auto& g : grid) g /= 8;
  m.lut = std::make_shared<LutWeight>(LutWeight::make(DType::LUT4, O, I, I, grid, "test"));
  for (int64_t o = 0; o < O; ++o) {
    m.lut->scale[size_t(o)] = scale;
    for (int64_t i = 0; i < I; ++i) m.lut->set(o, i, idx);
  }
  return m;
}

std::vector<int32_t> votes_of(const LutVotes& s) {
  std::vector<int32_t> v(s.v8.empty() ? s.v16.size() : s.v8.size());
  for (size_t k = 0; k < v.size(); ++k) v[k] = s.vote(int64_t(k));
  return v;
}

VoteConfig seed_cfg() {
  VoteConfig c;
  c.rule = Rule::Seed;
  c.sensitivity = 0.5;
  c.consensus = 3;
  c.flip_lr = 1e9;  // every candidate flips
  return c;
}

auto all = [](const Matrix&) { return true; };

}  // namespace

TEST(SeedRule, VotesOnlyAboveMeanPlusKStd) {
  // |g| = 3,3,1,1,1,1,1,1: mean 1.5, std sqrt(3 - 2.25) = 0.866; k = 0.5 -> threshold 1.933.
  Matrix m = make_matrix(1, 8);
  VoteEngine e(seed_cfg(), {&m});
  e.begin_step(0, 1.0);
  const float g[8] = {3, -3, 1, -1, 1, -1, 1, -1};
  e.tile(m, 0, 1, g);
  e.done(m);
  EXPECT_EQ(votes_of(e.states()[0]), (std::vector<int32_t>{-1, 1, 0, 0, 0, 0, 0, 0}));
  // k = 0: threshold 1.5, the same two weights; a larger k (2: threshold 3.23) none.
  VoteConfig c = seed_cfg();
  c.sensitivity = 2.0;
  Matrix m2 = make_matrix(1, 8);
  VoteEngine e2(c, {&m2});
  e2.begin_step(0, 1.0);
  e2.tile(m2, 0, 1, g);
  EXPECT_EQ(votes_of(e2.states()[0]), std::vector<int32_t>(8, 0));
}

TEST(SeedRule, DirectionFollowsTheScaleSignAndZeroScalesDoNotVote) {
  // Votes are in index space: with s < 0 a larger index is a smaller weight.
  const float g[4] = {4, -4, 0, 0};
  for (float s : {-0.5f, 0.0f}) {
    Matrix m = make_matrix(1, 4, 8, s);
    VoteConfig c = seed_cfg();
    c.sensitivity = 0;
    VoteEngine e(c, {&m});
    e.begin_step(0, 1.0);
    e.tile(m, 0, 1, g);
    EXPECT_EQ(votes_of(e.states()[0]), s < 0 ? (std::vector<int32_t>{1, -1, 0, 0}) : std::vector<int32_t>(4, 0));
  }
}

TEST(SeedRule, VotesSaturateAtTheTypeRange) {
  for (int bits : {8, 16}) {
    Matrix m = make_matrix(1, 4);
    VoteConfig c = seed_cfg();
    c.vote_bits = bits;
    c.sensitivity = 0;
    VoteEngine e(c, {&m});
    LutVotes& s = e.states()[0];
    const int32_t vmax = bits == 8 ? 127 : 32767;
    s.set_vote(0, vmax - 1);
    s.set_vote(1, -(vmax - 1));
    const float g[4] = {-3, 3, 0, 0};  // threshold mean 1.5: votes +1 and -1
    e.begin_step(0, 1.0);
    for (int k = 0; k < 3; ++k) e.tile(m, 0, 1, g);
    EXPECT_EQ(s.vote(0), vmax);
    EXPECT_EQ(s.vote(1), -vmax);
  }
}

TEST(SeedRule, FlipsCandidatesAtConsensusAndResetsTheirVotes) {
  Matrix m = make_matrix(1, 6);
  m.lut->set(0, 4, 15);  // at the top of the grid
  m.lut->set(0, 5, 0);   // at the bottom
  VoteEngine e(seed_cfg(), {&m});
  LutVotes& s = e.states()[0];
  const std::vector<int32_t> v = {3, -3, 2, -5, 9, -4};
  for (size_t k = 0; k < v.size(); ++k) s.set_vote(int64_t(k), v[k]);
  e.begin_step(0, 1.0);
  const StepStats st = e.apply(all);
  EXPECT_EQ(st.flips, 3);
  EXPECT_EQ(st.weights, 6);
  EXPECT_EQ(m.lut->get(0, 0), 9u);
  EXPECT_EQ(m.lut->get(0, 1), 7u);
  EXPECT_EQ(m.lut->get(0, 2), 8u);   // |2| < consensus 3: kept, votes kept
  EXPECT_EQ(m.lut->get(0, 3), 7u);
  EXPECT_EQ(m.lut->get(0, 4), 15u);  // a vote past the end of the grid is dropped
  EXPECT_EQ(m.lut->get(0, 5), 0u);
  EXPECT_EQ(votes_of(s), (std::vector<int32_t>{0, 0, 2, 0, 0, 0}));
}

TEST(SeedRule, FlipProbabilityIsScaledSigmoidOfTheZScore) {
  // 4000 weights: half with |v| = 4, half with 0. mean 2, std 2: z = 1 for the candidates,
  // p = 0.3 * sigmoid(1) = 0.2193. Binomial(2000, p): mean 438.6, sd 18.5; 6 sd bounds.
  Matrix m = make_matrix(4, 1000);
  VoteConfig c = seed_cfg();
  c.flip_lr = 0.3;
  VoteEngine e(c, {&m});
  for (int64_t k = 0; k < 4000; ++k) e.states()[0].set_vote(k, k % 2 ? 4 : 0);
  e.begin_step(7, 1.0);
  const int64_t flips = e.apply(all).flips;
  const double p = 0.3 / (1 + std::exp(-1.0));
  EXPECT_NEAR(double(flips), 2000 * p, 6 * std::sqrt(2000 * p * (1 - p)));
  // The schedule's multiplier scales p the same way: 0 means no flips.
  Matrix m2 = make_matrix(4, 1000);
  VoteEngine e2(c, {&m2});
  for (int64_t k = 0; k < 4000; ++k) e2.states()[0].set_vote(k, k % 2 ? 4 : 0);
  e2.begin_step(7, 0.0);
  EXPECT_EQ(e2.apply(all).flips, 0);
}

TEST(SeedRule, CooldownHoldsAFlippedWeightForItsSteps) {
  Matrix m = make_matrix(1, 2);
  VoteConfig c = seed_cfg();
  c.cooldown = 2;
  VoteEngine e(c, {&m});
  LutVotes& s = e.states()[0];
  std::vector<uint32_t> idx;
  for (int step = 0; step < 5; ++step) {
    s.set_vote(0, 5);
    e.begin_step(step, 1.0);
    e.apply(all);
    idx.push_back(m.lut->get(0, 0));
  }
  // Flip at step 0, held at 1 and 2, flips again at 3, held at 4.
  EXPECT_EQ(idx, (std::vector<uint32_t>{9, 9, 9, 10, 10}));
}

TEST(SeedRule, NoiseIsBoundedDeterministicAndOptional) {
  VoteConfig c = seed_cfg();
  c.consensus = 127;  // nothing flips; apply only jitters
  c.noise = 3;
  auto run = [&](int threads) {
    Matrix m = make_matrix(8, 64);
    VoteEngine e(c, {&m});
    omp_set_num_threads(threads);
    e.begin_step(11, 1.0);
    e.apply(all);
    return votes_of(e.states()[0]);
  };
  const auto a = run(1), b = run(2);
  EXPECT_EQ(a, b);
  int64_t sum = 0, nonzero = 0;
  for (int32_t v : a) {
    EXPECT_LE(std::abs(v), 3);
    sum += v;
    nonzero += v != 0;
  }
  EXPECT_GT(nonzero, 300);  // 6/7 of 512 expected
  EXPECT_LT(std::abs(sum), 200);
  c.noise = 0;
  EXPECT_EQ(run(2), std::vector<int32_t>(512, 0));
}

TEST(Governor, ReactsToAFlipRateAboveTheCap) {
  Matrix m = make_matrix(1, 10);
  VoteConfig c = seed_cfg();
  c.flip_cap = 0.3;
  c.sensitivity = 1.0;
  VoteEngine e(c, {&m});
  LutVotes& s = e.states()[0];
  auto step = [&](int n_candidates, int at) {
    for (int64_t k = 0; k < 10; ++k) s.set_vote(k, k < n_candidates ? 5 : 0);
    e.begin_step(at, 1.0);
    return e.apply(all);
  };
  EXPECT_EQ(step(3, 0).flips, 3);  // rate 0.3: not above the cap
  EXPECT_EQ(e.governor().lr_mult, 1.0);
  EXPECT_EQ(e.governor().sensitivity, 1.0);
  EXPECT_EQ(step(5, 1).flips, 5);  // 0.5 > 0.3
  EXPECT_DOUBLE_EQ(e.governor().lr_mult, 0.8);
  EXPECT_DOUBLE_EQ(e.governor().sensitivity, 1.02);
  EXPECT_EQ(step(10, 2).flips, 10);
  EXPECT_DOUBLE_EQ(e.governor().lr_mult, 0.8 * 0.8);
  EXPECT_DOUBLE_EQ(e.governor().sensitivity, 1.02 + 0.02);
  EXPECT_EQ(e.governor().reactions, 2);
  // The raised sensitivity is what the next cast uses: |g| = 3,3,1,...: threshold
  // 1.5 + 1.04 * 0.866 = 2.40 still passes the 3s; at k = 1.75 (3.015) nothing would.
  const float g[10] = {3, -3, 1, 1, 1, 1, 1, 1, 1, 1};
  e.begin_step(3, 1.0);
  for (int64_t k = 0; k < 10; ++k) s.set_vote(k, 0);
  e.tile(m, 0, 1, g);
  EXPECT_EQ(s.vote(0), -1);
  EXPECT_EQ(s.vote(1), 1);
  EXPECT_EQ(s.vote(2), 0);
}

TEST(MomentumRule, UnitsCarryAndClampAtTheGridEnds) {
  // No second moment: dw = -lr g. With s = 1 and bucket width 0.125, g = -0.13671875 is
  // +70/64 of a bucket = +70 votes exactly (an integer: stochastic rounding adds nothing).
  Matrix m = make_matrix(1, 4);
  m.lut->set(0, 2, 15);
  VoteConfig c;
  c.rule = Rule::Momentum;
  c.second_moment = false;
  c.lr = 1.0;
  VoteEngine e(c, {&m});
  EXPECT_EQ(c.units(), 64);
  const float g[4] = {-0.13671875f, 0.13671875f, -0.13671875f, 0.0f};
  e.begin_step(0, 1.0);
  e.tile(m, 0, 1, g);
  e.done(m);
  EXPECT_EQ(votes_of(e.states()[0]), (std::vector<int32_t>{70, -70, 70, 0}));
  const StepStats st = e.apply(all);
  EXPECT_EQ(st.flips, 2);
  EXPECT_EQ(m.lut->get(0, 0), 9u);
  EXPECT_EQ(m.lut->get(0, 1), 7u);
  EXPECT_EQ(m.lut->get(0, 2), 15u);  // top of the grid: held, votes below one bucket
  EXPECT_EQ(votes_of(e.states()[0]), (std::vector<int32_t>{6, -6, 63, 0}));
  // The schedule multiplier scales the step: half of it is 35 votes.
  e.begin_step(1, 0.5);
  e.tile(m, 0, 1, g);
  EXPECT_EQ(votes_of(e.states()[0]), (std::vector<int32_t>{41, -41, 98, 0}));
}

TEST(MomentumRule, Int16VotesUse16384UnitsPerBucket) {
  Matrix m = make_matrix(1, 2);
  VoteConfig c;
  c.rule = Rule::Momentum;
  c.second_moment = false;
  c.vote_bits = 16;
  c.lr = 1.0;
  VoteEngine e(c, {&m});
  const float g[2] = {-0.25f, 0.0f};  // two buckets: 32768 votes, saturating at 32767
  e.begin_step(0, 1.0);
  e.tile(m, 0, 1, g);
  EXPECT_EQ(e.states()[0].vote(0), 32767);
  e.apply(all);
  EXPECT_EQ(m.lut->get(0, 0), 9u);  // carry of 1 (32767 / 16384), remainder 16383
  EXPECT_EQ(e.states()[0].vote(0), 16383);
}

TEST(MomentumRule, SecondMomentNormalizesTheFirstStepToLr) {
  // First backward call: rhat = mean(g^2) of the row = 4 (g = +-2), columns uniform, so
  // dw = -lr g / 2 = -+lr: with lr 1 times the schedule's 0.125, one bucket (64 votes).
  Matrix m = make_matrix(2, 4);
  VoteConfig c;
  c.rule = Rule::Momentum;
  c.lr = 1.0;
  c.eps = 1e-30;
  VoteEngine e(c, {&m});
  e.begin_step(0, 0.125);
  const float g[8] = {2, -2, 2, -2, -2, -2, 2, 2};
  e.tile(m, 0, 2, g);
  e.done(m);
  EXPECT_EQ(votes_of(e.states()[0]), (std::vector<int32_t>{-64, 64, -64, 64, 64, 64, -64, -64}));
  EXPECT_EQ(e.states()[0].events, 1);
  // Column statistics exist after the call: all columns saw g^2 = 4, so they stay uniform.
  for (float v : e.states()[0].col_norm) EXPECT_FLOAT_EQ(v, 1.0f);
}

TEST(MomentumRule, StochasticRoundingIsUnbiased) {
  // 0.3 of a vote per cast on 4096 weights, 10 casts: mean 3.0 votes, sd sqrt(10 * .21) / 64.
  Matrix m = make_matrix(4, 1024);
  VoteConfig c;
  c.rule = Rule::Momentum;
  c.second_moment = false;
  c.lr = 1.0;
  VoteEngine e(c, {&m});
  std::vector<float> g(4096, -0.125f * 0.3f / 64.0f);
  for (int k = 0; k < 10; ++k) {
    e.begin_step(k, 1.0);
    e.tile(m, 0, 4, g.data());
    e.done(m);
  }
  double mean = 0;
  for (int32_t v : votes_of(e.states()[0])) mean += v;
  mean /= 4096;
  EXPECT_NEAR(mean, 3.0, 6 * std::sqrt(10 * 0.21 / 4096));
}

TEST(Votes, CastingDoesNotDependOnTheThreadCount) {
  auto run = [](int threads, Rule rule) {
    omp_set_num_threads(threads);
    Matrix m = make_matrix(256, 256);  // 4 tiles of 64 rows (matrix.h: lut_tile_rows)
    VoteConfig c;
    c.rule = rule;
    c.noise = 2;
    c.consensus = 2;
    c.flip_lr = 0.5;
    c.lr = 0.05;
    VoteEngine e(c, {&m});
    std::vector<float> g(256 * 256);
    for (size_t k = 0; k < g.size(); ++k) g[k] = float(std::sin(double(k) * 0.37)) * 0.01f;
    for (int s = 0; s < 3; ++s) {
      e.begin_step(s, 1.0);
#pragma omp parallel for
      for (int t = 0; t < 4; ++t) e.tile(m, t * 64, 64, g.data() + t * 64 * 256);
      e.done(m);
      e.apply(all);
    }
    return std::make_pair(votes_of(e.states()[0]), m.lut->idx);
  };
  for (Rule r : {Rule::Seed, Rule::Momentum}) {
    const auto a = run(1, r), b = run(2, r);
    EXPECT_EQ(a.first, b.first);
    EXPECT_EQ(a.second, b.second);
  }
}

TEST(Votes, ConfigurationIsValidated) {
  VoteConfig c;
  c.vote_bits = 12;
  EXPECT_THROW(c.validate(), Error);
  c = VoteConfig{};
  c.cooldown = 300;
  EXPECT_THROW(c.validate(), Error);
  c = VoteConfig{};
  c.flip_cap = 2;
  EXPECT_THROW(c.validate(), Error);
}
