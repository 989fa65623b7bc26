// Sampler behaviour: greedy, determinism per seed, and that each cut (top-k, top-p, min-p) keeps
// exactly the tokens its definition keeps, with the draw frequencies of the renormalized
// distribution (checked within 5 standard deviations of a binomial count, fixed seeds).
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"
#include "infer/sampler.h"

using namespace primal;

namespace {

SamplerParams plain(float temp, uint64_t seed = 1) {
  SamplerParams p;
  p.temperature = temp;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = seed;
  return p;
}

std::map<int32_t, int> histogram(Sampler& s, const std::vector<float>& logits, int n) {
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) ++h[s.sample(logits.data(), int64_t(logits.size()))];
  return h;
}

// logits with probabilities exactly p_i at temperature 1 (log p_i).
std::vector<float> logits_of(const std::vector<double>& p) {
  std::vector<float> l;
  for (double q : p) l.push_back(float(std::log(q)));
  return l;
}

void expect_frequency(int count, int n, double p, const char* what) {
  const double sd = std::sqrt(n * p * (1 - p));
  EXPECT_NEAR(count, n * p, 5 * sd + 1) << what;
}

}  // namespace

TEST(Sampler, GreedyPicksArgmaxAndLowestIdOnTies) {
  Sampler s(plain(0.0f));
  const std::vector<float> l = {1.0f, 3.0f, -2.0f, 3.0f, 2.9f};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s.sample(l.data(), 5), 1);
  SamplerParams neg = plain(-1.0f);
  Sampler g(neg);
  EXPECT_EQ(g.sample(l.data(), 5), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::vector<float> flat(1000, 0.0f);
  auto draw = [&](uint64_t seed) {
    Sampler s(plain(1.0f, seed));
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.sample(flat.data(), 1000));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
  // reset() restarts the stream
  Sampler s(plain(1.0f, 7));
  const int32_t a = s.sample(flat.data(), 1000);
  s.reset();
  EXPECT_EQ(s.sample(flat.data(), 1000), a);
}

TEST(Sampler, TemperatureOneFollowsTheSoftmax) {
  const std::vector<double> p = {0.5, 0.25, 0.125, 0.125};
  Sampler s(plain(1.0f, 3));
  const int n = 20000;
  auto h = histogram(s, logits_of(p), n);
  for (int i = 0; i < 4; ++i) expect_frequency(h[i], n, p[size_t(i)], "T=1");
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  // At T = 0.5 probabilities go as p^2: 0.5^2 : 0.25^2 = 4 : 1 -> 0.8, 0.2.
  const std::vector<double> p = {0.5, 0.25};
  Sampler cold(plain(0.5f, 4));
  const int n = 20000;
  auto h = histogram(cold, logits_of(p), n);
  expect_frequency(h[0], n, 0.8, "T=0.5");
  // At T = 2, as sqrt(p): sqrt(2) : 1.
  Sampler hot(plain(2.0f, 5));
  h = histogram(hot, logits_of(p), n);
  expect_frequency(h[0], n, std::sqrt(2.0) / (1 + std::sqrt(2.0)), "T=2");
}

TEST(Sampler, TopKKeepsTheKMostLikely) {
  const std::vector<double> p = {0.1, 0.4, 0.2, 0.3};
  SamplerParams sp = plain(1.0f, 6);
  sp.top_k = 2;
  Sampler s(sp);
  const int n = 20000;
  auto h = histogram(s, logits_of(p), n);
  EXPECT_EQ(h.count(0), 0u);
  EXPECT_EQ(h.count(2), 0u);
  expect_frequency(h[1], n, 0.4 / 0.7, "top-k");
  // top-k 1 is greedy whatever the temperature
  sp.top_k = 1;
  sp.temperature = 5.0f;
  Sampler one(sp);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(one.sample(logits_of(p).data(), 4), 1);
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  // sorted: 0.5, 0.3, 0.15, 0.05; cumulative 0.5, 0.8 -> p = 0.7 keeps the first two
  const std::vector<double> p = {0.15, 0.5, 0.05, 0.3};
  SamplerParams sp = plain(1.0f, 8);
  sp.top_p = 0.7f;
  Sampler s(sp);
  const int n = 20000;
  auto h = histogram(s, logits_of(p), n);
  EXPECT_EQ(h.size(), 2u);
  expect_frequency(h[1], n, 0.5 / 0.8, "top-p");
  expect_frequency(h[3], n, 0.3 / 0.8, "top-p");
}

TEST(Sampler, MinPKeepsTokensAboveAFractionOfTheMax) {
  // p_max = 0.5; min-p 0.2 keeps p >= 0.1: 0.5, 0.3, 0.15 but not 0.05
  const std::vector<double> p = {0.15, 0.5, 0.05, 0.3};
  SamplerParams sp = plain(1.0f, 9);
  sp.min_p = 0.2f;
  Sampler s(sp);
  const int n = 20000;
  auto h = histogram(s, logits_of(p), n);
  EXPECT_EQ(h.count(2), 0u);
  expect_frequency(h[0], n, 0.15 / 0.95, "min-p");
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  // token 0: 2.0 -> 2.0 / 4 = 0.5 < token 1's 1.0; token 2: -0.1 -> -0.4 < token 3's -0.3
  const std::vector<float> l = {2.0f, 1.0f, -0.1f, -0.3f};
  SamplerParams sp = plain(0.0f);
  sp.repeat_penalty = 4.0f;
  sp.repeat_last_n = 2;
  Sampler s(sp);
  EXPECT_EQ(s.sample(l.data(), 4), 0);
  s.accept(0);
  EXPECT_EQ(s.sample(l.data(), 4), 1);
  const std::vector<float> neg = {-0.1f, -0.3f};
  Sampler t(sp);
  t.accept(0);
  EXPECT_EQ(t.sample(neg.data(), 2), 1);
  // the window forgets: after two other tokens, token 0 is no longer penalized
  s.accept(3);
  s.accept(2);
  EXPECT_EQ(s.sample(l.data(), 4), 0);
  // a repeated token is penalized once, not once per occurrence
  SamplerParams sp2 = plain(0.0f);
  sp2.repeat_penalty = 1.5f;
  Sampler u(sp2);
  const std::vector<float> l2 = {3.0f, 1.9f};
  u.accept(0);
  u.accept(0);
  EXPECT_EQ(u.sample(l2.data(), 2), 0);  // 3 / 1.5 = 2 > 1.9 (twice would be 1.33)
}

TEST(Sampler, RejectsInvalidParameters) {
  SamplerParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p = SamplerParams{};
  p.repeat_penalty = 0.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p = SamplerParams{};
  p.temperature = NAN;
  EXPECT_THROW(Sampler{p}, Error);
}
