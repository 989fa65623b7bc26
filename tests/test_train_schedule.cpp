// Exact tests of the float side of training: the learning-rate schedule (linear warm-up, cosine
// to min_frac), the seeds' layer peel and sealing pass and their presets, and AdamW (bias
// correction, global gradient-norm clipping, relative steps and decay of LUT scales, weight decay
// of embeddings only).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/error.h"
#include "train/adamw.h"
#include "train/grads.h"
#include "train/model.h"
#include "train/schedule.h"

using namespace primal;
using namespace primal::train;

namespace {

ScheduleConfig sched(int64_t steps, int64_t warmup) {
  ScheduleConfig s;
  s.steps = steps;
  s.warmup = warmup;
  s.seq = 64;
  s.batch = 2;
  s.accum = 3;
  return s;
}

}  // namespace

TEST(Schedule, LinearWarmupThenCosineToMinFrac) {
  ScheduleConfig s = sched(110, 10);
  s.min_frac = 0.1;
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 4), 0.5);
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 9), 1.0);
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 10), 1.0);                   // the cosine starts at its top
  EXPECT_NEAR(lr_multiplier(s, 60), 0.1 + 0.9 * 0.5, 1e-15);     // half-way: the mean
  EXPECT_NEAR(lr_multiplier(s, 35), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-15);
  EXPECT_DOUBLE_EQ(lr_multiplier(s, 110), 0.1);
  EXPECT_DOUBLE_EQ(lr_multiplier(sched(5, 0), 0), 1.0);          // no warm-up
}

TEST(Schedule, PeelAddsLayersFromTheTopAndSealingShortensTheWindows) {
  ScheduleConfig s = sched(100, 0);
  s.peel_every = 10;
  s.peel_layers = 2;
  s.seal_steps = 20;
  Phase p = phase_at(s, 0);
  EXPECT_TRUE(p.only_embd_head);
  EXPECT_EQ(p.top_layers, 0);
  p = phase_at(s, 19);
  EXPECT_FALSE(p.only_embd_head);
  EXPECT_EQ(p.top_layers, 2);
  EXPECT_EQ(phase_at(s, 35).top_layers, 6);
  EXPECT_FALSE(phase_at(s, 79).sealing);
  p = phase_at(s, 80);  // the last 20 steps: everything, seq / 2 with twice the accumulation
  EXPECT_TRUE(p.sealing);
  EXPECT_EQ(p.top_layers, -1);
  EXPECT_EQ(p.seq, 32);
  EXPECT_EQ(p.accum, 6);
  EXPECT_EQ(p.batch, 2);
  s.seal_seq = 16;
  s.seal_accum = 5;
  EXPECT_EQ(phase_at(s, 99).seq, 16);
  EXPECT_EQ(phase_at(s, 99).accum, 5);
}

TEST(Schedule, PresetsAndValidation) {
  ScheduleConfig s = sched(100, 5);
  s.apply_preset("peel+seal", 8);  // 10 sealing steps; 1 + 4 phases -> 90 / 6 = 15 steps each
  EXPECT_EQ(s.seal_steps, 10);
  EXPECT_EQ(s.peel_every, 15);
  ScheduleConfig t = sched(100, 5);
  t.apply_preset("seal", 8);
  EXPECT_EQ(t.seal_steps, 10);
  EXPECT_EQ(t.peel_every, 0);
  EXPECT_THROW(t.apply_preset("sealed", 8), Error);
  EXPECT_THROW(sched(10, 11).validate(), Error);
  EXPECT_THROW(sched(0, 0).validate(), Error);
  ScheduleConfig u = sched(10, 0);
  u.seq = 1;
  EXPECT_THROW(u.validate(), Error);
}

namespace {

TrainModel tiny() {
  HParams hp = parse_shape("layers=1,embd=32,heads=2,kv_heads=1,ff=32,ctx=16");
  hp.n_vocab = 8;
  LutSpec spec;
  spec.group = 16;
  return init_random_model(hp, spec, 0, 3);
}

FloatParam& param(AdamW& a, const std::string& name) {
  for (FloatParam& p : a.params())
    if (p.name == name) return p;
  throw std::runtime_error("no parameter " + name);
}

}  // namespace

TEST(AdamW, FirstStepsClippingScaleStepsAndDecays) {
  TrainModel m = tiny();
  Grads<float> g;
  g.allocate(m, true, true);
  AdamConfig c;
  c.lr = 0.01;
  c.scale_lr = 0.1;
  c.scale_decay = 0.5;
  c.weight_decay = 0.25;
  c.clip = 1.0;
  AdamW a(c, m, g);
  // Gradients: (3, -4) in the first norm weight and 2 in a scale: norm sqrt(29), clipped to 1.
  for (FloatParam& p : a.params())
    for (size_t i = 0; i < p.n; ++i) p.g[i] = 0;
  FloatParam& norm = param(a, "blk.0.attn_norm.weight");
  norm.g[0] = 3, norm.g[1] = -4;
  FloatParam& sc = param(a, "blk.0.attn_q.weight.scale");
  FloatParam& emb = param(a, "token_embd.weight");
  const float n0 = norm.p[0], n1 = norm.p[1], n2 = norm.p[2], s0 = sc.p[0], e0 = emb.p[0];
  sc.g[1] = 2;  // a scale's step is relative to its size: s - scale_lr |s| u - scale_lr decay s
  const float s1 = sc.p[1];
  const double gn = a.step(1.0, [](const FloatParam&) { return true; });
  EXPECT_DOUBLE_EQ(gn, std::sqrt(29.0));
  // First step with bias correction: u = g / |g| whatever the clipping.
  EXPECT_FLOAT_EQ(norm.p[0], float(n0 - 0.01));
  EXPECT_FLOAT_EQ(norm.p[1], float(n1 + 0.01));
  EXPECT_FLOAT_EQ(norm.p[2], n2);  // no gradient, no decay for norms
  EXPECT_FLOAT_EQ(norm.m[0], float(0.1 * 3 / std::sqrt(29.0)));  // the clipped gradient enters the moments
  // Decays with a zero gradient: scales shrink by scale_lr * scale_decay, embeddings by lr * wd.
  EXPECT_FLOAT_EQ(sc.p[0], float(s0 - 0.1 * 0.5 * s0));
  EXPECT_FLOAT_EQ(sc.p[1], float(s1 - 0.1 * std::fabs(s1) - 0.1 * 0.5 * s1));
  EXPECT_FLOAT_EQ(emb.p[0], float(e0 - 0.01 * 0.25 * e0));
}
