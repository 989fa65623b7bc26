// The CUDA engine of the trainer against the CPU engine (the specification) on the same model and
// data: whole optimizer steps (two accumulated micro-batches, votes, AdamW) of small models with
// every feature the engine handles (GQA, q/k/v biases, tied and untied heads, dense and LUT
// embeddings, both vote rules, recomputation).
//
// What "equal" means here, and why: the deterministic engine runs the CPU's formulas with fp32
// GEMMs whose summation order is cuBLAS's, not the CPU's, so activations and gradients differ in
// the last bits (relative ~1e-6). The loss therefore agrees to ~1e-5 relative; the votes of the
// momentum rule are cast from those gradients with the same random numbers, so a vote differs
// only where a gradient's rounding moves a value across a rounding threshold (a fraction of a
// percent of the weights at most), and the seed rule's row thresholds likewise; the flip counts and
// the indices must agree up to such rare crossings. Everything the GPU computes from identical
// inputs (recomputation versus kept activations) must be bit-identical.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>

#include "gpu_testing.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/lut_dw_cast.h"
#include "ops/cuda/lut_gemm.h"
#include "train/cuda/gpu_engine.h"
#include "train/model.h"
#include "train/train_config.h"

namespace tr = primal::train;
using namespace gputest;

namespace {

struct Case {
  const char* name;
  bool qkv_bias, tied, lut_embd;
  tr::Rule rule;
};

tr::TrainModel make_model(const Case& c, const char* shape = "layers=2,embd=128,heads=4,kv_heads=2,ff=256,ctx=64") {
  primal::HParams hp = tr::parse_shape(shape);
  hp.n_vocab = 512;
  hp.bos_id = 1;
  hp.eos_id = 2;
  hp.qkv_bias = c.qkv_bias;
  hp.tied_embeddings = c.tied;
  tr::LutSpec spec;
  spec.type = primal::DType::LUT4;
  spec.group = 32;
  spec.grid = "nf4";
  spec.quantize_embeddings = c.lut_embd;
  tr::TrainModel m = tr::init_random_model(hp, spec, 0, 99);
  // Non-trivial norms and biases, so that their gradients matter.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.8f, 1.2f), b(-0.05f, 0.05f);
  for (auto& l : m.layers) {
    for (auto& x : l.attn_norm) x = u(rng);
    for (auto& x : l.ffn_norm) x = u(rng);
    for (auto* v : {&l.bq, &l.bk, &l.bv})
      for (auto& x : *v) x = b(rng);
  }
  return m;
}

tr::TrainConfig make_config(const Case& c) {
  tr::TrainConfig cfg;
  cfg.votes.rule = c.rule;
  cfg.votes.seed = 77;
  // Rates high enough that indices move within a few steps.
  cfg.votes.lr = 2e-2;
  cfg.votes.sensitivity = 0.5;
  cfg.votes.consensus = 2;
  cfg.votes.flip_lr = 1.0;
  cfg.votes.noise = c.rule == tr::Rule::Seed ? 1 : 0;
  cfg.adam.lr = 1e-3;
  cfg.adam.scale_lr = 1e-2;
  return cfg;
}

// One side of the comparison: its own copy of the model and optimizer state, and an engine.
struct Side {
  tr::TrainModel m;
  tr::TrainConfig cfg;
  tr::Grads<float> grads;
  std::unique_ptr<tr::VoteEngine> votes;
  std::unique_ptr<tr::AdamW> adam;
  std::unique_ptr<tr::StepEngine> eng;
};

std::unique_ptr<Side> make_side(const tr::TrainModel& m0, const tr::TrainConfig& cfg, bool gpu,
                                const tr::GpuEngineOptions& o, int64_t B, int64_t T) {
  auto s = std::make_unique<Side>();
  s->m = m0;
  // Deep copies of the LUT weights (Matrix shares them through shared_ptr).
  for (tr::Matrix* mt : s->m.lut_matrices()) mt->lut = std::make_shared<tr::LutWeight>(*mt->lut);
  s->cfg = cfg;
  s->grads.allocate(s->m, true, true);
  s->votes = std::make_unique<tr::VoteEngine>(cfg.votes, s->m.lut_matrices());
  s->adam = std::make_unique<tr::AdamW>(cfg.adam, s->m, s->grads);
  tr::EngineContext ctx;
  ctx.model = &s->m, ctx.votes = s->votes.get(), ctx.adam = s->adam.get(), ctx.grads = &s->grads, ctx.cfg = &s->cfg;
  ctx.max_batch = B, ctx.max_seq = T;
  s->eng = gpu ? tr::make_cuda_engine(ctx, o) : tr::make_cpu_engine(ctx);
  return s;
}

struct StepResult {
  double loss = 0;
  int64_t flips = 0;
  double gnorm = 0;
};

StepResult step(Side& s, int64_t k, const std::vector<std::vector<int32_t>>& in, const std::vector<std::vector<int32_t>>& tg,
                int64_t B, int64_t T) {
  tr::TrainMask mask;
  mask.layer.assign(size_t(s.m.n_physical()), true);
  s.eng->begin_step(k, 1.0);
  StepResult r;
  for (size_t a = 0; a < in.size(); ++a)
    r.loss += s.eng->forward_backward(mask, in[a].data(), tg[a].data(), B, T, 1.0 / double(in.size() * B * T), true).nll;
  r.loss /= double(in.size() * B * T);
  r.flips = s.eng->apply_votes([](const tr::Matrix&) { return true; }).flips;
  r.gnorm = s.eng->adam_step(1.0, [](const tr::FloatParam&) { return true; });
  return r;
}

// The float parameters as they are now (AdamW's order).
std::vector<std::vector<float>> snapshot(const Side& s) {
  std::vector<std::vector<float>> v;
  for (const tr::FloatParam& p : s.adam->params()) v.emplace_back(p.p, p.p + p.n);
  return v;
}

// Fraction of LUT indices that differ, and per float tensor the largest difference between the
// sides relative to the largest distance the training moved it from p0 (its starting values):
// the same updates give ~1e-6, a wrong gradient O(1). (Elementwise relative differences say
// nothing here: a few indices that flipped on one side only move every float parameter a little.)
struct Diff {
  double idx_frac = 0, param_rel = 0;
  int64_t idx_diff = 0, idx_total = 0;
};
Diff compare(Side& a, Side& b, const std::vector<std::vector<float>>& p0) {
  a.eng->sync_to_host();
  b.eng->sync_to_host();
  Diff d;
  const auto ma = a.m.lut_matrices(), mb = b.m.lut_matrices();
  for (size_t k = 0; k < ma.size(); ++k) {
    const tr::LutWeight &la = *ma[k]->lut, &lb = *mb[k]->lut;
    for (int64_t o = 0; o < la.O; ++o)
      for (int64_t i = 0; i < la.I; ++i) d.idx_diff += la.get(o, i) != lb.get(o, i);
    d.idx_total += la.O * la.I;
  }
  d.idx_frac = double(d.idx_diff) / double(d.idx_total);
  const auto& pa = a.adam->params();
  const auto& pb = b.adam->params();
  for (size_t k = 0; k < pa.size(); ++k) {
    double moved = 0, diff = 0;
    for (size_t i = 0; i < pa[k].n; ++i) {
      moved = std::max(moved, std::fabs(double(pa[k].p[i]) - double(p0[k][i])));
      diff = std::max(diff, std::fabs(double(pa[k].p[i]) - double(pb[k].p[i])));
    }
    EXPECT_GT(moved, 0.0) << pa[k].name << " did not train";
    if (moved > 0) d.param_rel = std::max(d.param_rel, diff / moved);
  }
  return d;
}

void batches(int64_t V, int64_t B, int64_t T, uint32_t seed, std::vector<std::vector<int32_t>>& in,
             std::vector<std::vector<int32_t>>& tg) {
  std::mt19937 rng(seed);
  // A skewed distribution (a few frequent ids), so that embedding rows repeat within a batch.
  std::geometric_distribution<int32_t> geo(0.02);
  in.assign(2, std::vector<int32_t>(size_t(B * T)));
  tg.assign(2, std::vector<int32_t>(size_t(B * T)));
  for (int a = 0; a < 2; ++a)
    for (int64_t t = 0; t < B * T; ++t) {
      in[size_t(a)][size_t(t)] = std::min<int32_t>(int32_t(V - 1), geo(rng));
      tg[size_t(a)][size_t(t)] = std::min<int32_t>(int32_t(V - 1), geo(rng));
    }
}

class GpuTrainer : public ::testing::TestWithParam<Case> {};

TEST_P(GpuTrainer, StepsMatchTheCpuEngine) {
  REQUIRE_GPU();
  const Case c = GetParam();
  const int64_t B = 2, T = 48;
  const tr::TrainModel m0 = make_model(c);
  const tr::TrainConfig cfg = make_config(c);
  tr::GpuEngineOptions o;  // deterministic: fp32 GEMMs, the CPU's head chunk
  auto cpu = make_side(m0, cfg, false, o, B, T);
  auto gpu = make_side(m0, cfg, true, o, B, T);
  const auto p0 = snapshot(*cpu);
  int64_t flips_cpu = 0, flips_gpu = 0;
  for (int64_t k = 0; k < 4; ++k) {
    std::vector<std::vector<int32_t>> in, tg;
    batches(m0.hp.n_vocab, B, T, uint32_t(100 + k), in, tg);
    const StepResult rc = step(*cpu, k, in, tg, B, T), rg = step(*gpu, k, in, tg, B, T);
    SCOPED_TRACE(::testing::Message() << c.name << " step " << k);
    EXPECT_NEAR(rg.loss, rc.loss, 2e-5 * rc.loss);
    EXPECT_NEAR(rg.gnorm, rc.gnorm, 1e-3 * rc.gnorm + 1e-9);
    EXPECT_NEAR(double(rg.flips), double(rc.flips), 0.02 * double(rc.flips) + 3);
    flips_cpu += rc.flips;
    flips_gpu += rg.flips;
  }
  EXPECT_GT(flips_cpu, 50) << "the rates must move indices, or the comparison of votes says nothing";
  const Diff d = compare(*cpu, *gpu, p0);
  std::printf("%s: flips cpu %lld gpu %lld, indices differing %lld of %lld, float params max diff / movement %.2e\n", c.name,
              (long long)flips_cpu, (long long)flips_gpu, (long long)d.idx_diff, (long long)d.idx_total, d.param_rel);
  EXPECT_LT(d.idx_frac, 2e-3);
  EXPECT_LT(d.param_rel, 0.05);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GpuTrainer,
    ::testing::Values(Case{"momentum_bias_untied_dense_embd", true, false, false, tr::Rule::Momentum},
                      Case{"momentum_tied_lut_embd", false, true, true, tr::Rule::Momentum},
                      Case{"seed_untied_lut_embd", false, false, true, tr::Rule::Seed},
                      Case{"seed_bias_tied_dense_embd", true, true, false, tr::Rule::Seed}),
    [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// Recomputation rebuilds the same activations from the same inputs with the same kernels: the
// whole run must be bit-identical to keeping them, whether every layer is recomputed or only the
// ones below the top kept one (per-layer recomputation), in both modes.
class GpuTrainerRecompute : public ::testing::TestWithParam<bool> {};

TEST_P(GpuTrainerRecompute, BitIdenticalToKeptActivations) {
  REQUIRE_GPU();
  const Case c{"recompute", true, false, true, tr::Rule::Momentum};
  const int64_t B = 2, T = 64;
  const tr::TrainModel m0 = make_model(c);
  const tr::TrainConfig cfg = make_config(c);
  tr::GpuEngineOptions keep, all, part, att, qa, qo;
  keep.fast = all.fast = part.fast = att.fast = qa.fast = qo.fast = GetParam();
  for (tr::GpuEngineOptions* o : {&keep, &all, &part, &att, &qa, &qo}) o->cudnn_attention = tr::GpuEngineOptions::Cudnn::Off;  // (bitwise)
  all.recompute = part.recompute = att.recompute = qa.recompute = qo.recompute = true;
  part.kept_layers = 1;  // of 2: layer 0 recomputed, layer 1 kept
  att.keep_attention = qa.keep_attention = true;  // (bf16) both recomputed without their attention forward
  qa.qkv_layers = 1;                              // and layer 0 without its q, k, v GEMMs
  qo.qkv_layers = 2;                              // both without q, k, v GEMMs, attention recomputed
  auto a = make_side(m0, cfg, true, keep, B, T);
  auto b = make_side(m0, cfg, true, all, B, T);
  auto p = make_side(m0, cfg, true, part, B, T);
  std::vector<decltype(a)*> others = {&b, &p};
  decltype(a) q, q2, q3;
  if (GetParam()) {
    q = make_side(m0, cfg, true, att, B, T), q2 = make_side(m0, cfg, true, qa, B, T), q3 = make_side(m0, cfg, true, qo, B, T);
    others.insert(others.end(), {&q, &q2, &q3});
  } else {
    EXPECT_THROW(make_side(m0, cfg, true, att, B, T), Error) << "kept attention outputs in the fp32 mode";
    EXPECT_THROW(make_side(m0, cfg, true, qo, B, T), Error) << "kept q, k, v in the fp32 mode";
  }
  const auto p0 = snapshot(*a);
  for (int64_t k = 0; k < 3; ++k) {
    std::vector<std::vector<int32_t>> in, tg;
    batches(m0.hp.n_vocab, B, T, uint32_t(7 + k), in, tg);
    const StepResult ra = step(*a, k, in, tg, B, T);
    for (auto* s : others) {
      const StepResult r = step(**s, k, in, tg, B, T);
      EXPECT_EQ(ra.loss, r.loss) << "step " << k;
      EXPECT_EQ(ra.flips, r.flips) << "step " << k;
    }
  }
  for (auto* s : others) {
    const Diff d = compare(*a, **s, p0);
    EXPECT_EQ(d.idx_diff, 0);
    EXPECT_EQ(d.param_rel, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, GpuTrainerRecompute, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "bf16" : "fp32"; });

// The bf16 tensor-core GEMMs round operands to 8 bits of mantissa: the loss moves by ~1e-3
// relative, not more (a wrong layout or transposition would move it by O(1)).
TEST(GpuTrainerFast, LossCloseToFp32) {
  REQUIRE_GPU();
  const Case c{"fast", false, false, true, tr::Rule::Momentum};
  const int64_t B = 2, T = 64;
  const tr::TrainModel m0 = make_model(c);
  const tr::TrainConfig cfg = make_config(c);
  tr::GpuEngineOptions exact, fast;
  fast.fast = true;
  auto a = make_side(m0, cfg, true, exact, B, T);
  std::vector<std::vector<int32_t>> in, tg;
  batches(m0.hp.n_vocab, B, T, 3, in, tg);
  const StepResult ra = step(*a, 0, in, tg, B, T);
  a.reset();  // the GEMM math is process-wide (each engine sets its own): one engine at a time
  auto b = make_side(m0, cfg, true, fast, B, T);
  const StepResult rb = step(*b, 0, in, tg, B, T);
  EXPECT_NEAR(rb.loss, ra.loss, 5e-3 * ra.loss);
  EXPECT_NEAR(rb.gnorm, ra.gnorm, 0.05 * ra.gnorm);
}

// The bf16 mode's overlaps (the vote casts on their own stream beside the backward's GEMMs, the
// attention backward's dq kernel beside dk/dv's) and the queued column folds change when work runs,
// not what it computes: a run with all three off (PRIMAL_CAST_ASIDE=0, PRIMAL_ATTN_SIDE=0,
// PRIMAL_FOLD_NOW=1, read when an engine is made) gives the same bits, with accumulation (two
// backward calls a step).
TEST(GpuTrainerFast, OverlapsAndQueuedFoldsGiveTheSameBits) {
  REQUIRE_GPU();
  const Case c{"overlaps", true, false, true, tr::Rule::Momentum};
  const int64_t B = 2, T = 64;
  const tr::TrainModel m0 = make_model(c);
  const tr::TrainConfig cfg = make_config(c);
  tr::GpuEngineOptions fast;
  fast.fast = true;
  fast.cudnn_attention = tr::GpuEngineOptions::Cudnn::Off;  // (cuDNN's backward is not bitwise reproducible)
  ::setenv("PRIMAL_CAST_ASIDE", "0", 1), ::setenv("PRIMAL_ATTN_SIDE", "0", 1), ::setenv("PRIMAL_FOLD_NOW", "1", 1);
  auto a = make_side(m0, cfg, true, fast, B, T);
  ::unsetenv("PRIMAL_CAST_ASIDE"), ::unsetenv("PRIMAL_ATTN_SIDE"), ::unsetenv("PRIMAL_FOLD_NOW");
  auto b = make_side(m0, cfg, true, fast, B, T);
  const auto p0 = snapshot(*a);
  int64_t flips = 0;
  for (int64_t k = 0; k < 3; ++k) {
    std::vector<std::vector<int32_t>> in, tg;
    batches(m0.hp.n_vocab, B, T, uint32_t(40 + k), in, tg);
    const StepResult ra = step(*a, k, in, tg, B, T), rb = step(*b, k, in, tg, B, T);
    EXPECT_EQ(ra.loss, rb.loss) << "step " << k;
    EXPECT_EQ(ra.flips, rb.flips) << "step " << k;
    EXPECT_EQ(ra.gnorm, rb.gnorm) << "step " << k;
    flips += ra.flips;
  }
  EXPECT_GT(flips, 50) << "indices must move, or equal votes say little";
  const Diff d = compare(*a, *b, p0);
  EXPECT_EQ(d.idx_diff, 0);
  EXPECT_EQ(d.param_rel, 0.0);
}

// The bf16 micro-batch as a CUDA graph (captured on the first call, replayed with the casts' new
// scalars: learning rate, bias correction, rounding keys) computes what the eager calls compute:
// PRIMAL_GRAPH=0 against the default over four steps of two micro-batches (one capture, seven
// replays), LUT embeddings (their scale gradient's grouped positions change with every batch) and
// q/k/v biases included; the capture must not have fallen back to eager calls (its warning).
TEST(GpuTrainerFast, GraphGivesTheSameBits) {
  REQUIRE_GPU();
  const Case c{"graph", true, false, true, tr::Rule::Momentum};
  const int64_t B = 2, T = 64;
  const tr::TrainModel m0 = make_model(c);
  const tr::TrainConfig cfg = make_config(c);
  tr::GpuEngineOptions fast;
  fast.fast = true;
  fast.cudnn_attention = tr::GpuEngineOptions::Cudnn::Off;  // (cuDNN's backward is not bitwise reproducible)
  ::setenv("PRIMAL_GRAPH", "0", 1);
  auto a = make_side(m0, cfg, true, fast, B, T);
  ::unsetenv("PRIMAL_GRAPH");
  auto b = make_side(m0, cfg, true, fast, B, T);
  const auto p0 = snapshot(*a);
  int64_t flips = 0;
  ::testing::internal::CaptureStderr();
  for (int64_t k = 0; k < 4; ++k) {
    std::vector<std::vector<int32_t>> in, tg;
    batches(m0.hp.n_vocab, B, T, uint32_t(60 + k), in, tg);
    const StepResult ra = step(*a, k, in, tg, B, T), rb = step(*b, k, in, tg, B, T);
    EXPECT_EQ(ra.loss, rb.loss) << "step " << k;
    EXPECT_EQ(ra.flips, rb.flips) << "step " << k;
    EXPECT_EQ(ra.gnorm, rb.gnorm) << "step " << k;
    flips += ra.flips;
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err.find("could not be captured"), std::string::npos) << err;
  EXPECT_GT(flips, 50) << "indices must move, or equal votes say little";
  const Diff d = compare(*a, *b, p0);  // (brings both to the host: the votes' counters too)
  EXPECT_EQ(d.idx_diff, 0);
  EXPECT_EQ(d.param_rel, 0.0);
  for (size_t k = 0; k < a->votes->states().size(); ++k)
    EXPECT_EQ(a->votes->states()[k].events, b->votes->states()[k].events) << "vote state " << k;
}

// The bf16 mode's LUT head sums its weight gradient over the logits chunks (bf16) and casts it once a
// micro-batch, as a layer matrix: its vote state counts one backward call with 4 chunks (a cast per
// chunk counted 4), and its votes are those of one chunk up to the roundings of the bf16 sum (the
// same rounding draws; this test's rates make |x| ~ 100, where the 2^-8 of a partial sum moves a
// vote by one now and then, rarely by two). A sum that kept only the last chunk would move most.
// (lut_weight_grad_sum_bf16's own bound: test_train_bf16_cuda.cpp.)
TEST(GpuTrainerFast, HeadGradientSummedOverChunksIsCastOnce) {
  REQUIRE_GPU();
  const Case c{"head", false, false, true, tr::Rule::Momentum};
  const int64_t B = 2, T = 64;
  const tr::TrainModel m0 = make_model(c);
  const tr::TrainConfig cfg = make_config(c);
  tr::GpuEngineOptions one, four;
  one.fast = four.fast = true;
  one.head_chunk = B * T, four.head_chunk = B * T / 4;
  auto a = make_side(m0, cfg, true, one, B, T);
  auto b = make_side(m0, cfg, true, four, B, T);
  std::vector<std::vector<int32_t>> in, tg;
  batches(m0.hp.n_vocab, B, T, 11, in, tg);
  tr::TrainMask mask;
  mask.layer.assign(size_t(m0.n_physical()), true);
  double nll[2];
  for (int k = 0; k < 2; ++k) {
    Side& s = k == 0 ? *a : *b;
    s.eng->begin_step(0, 1.0);
    nll[k] = s.eng->forward_backward(mask, in[0].data(), tg[0].data(), B, T, 1.0 / double(B * T), true).nll;
    s.eng->sync_to_host();
  }
  EXPECT_NEAR(nll[1], nll[0], 1e-6 * nll[0]);
  const tr::LutVotes* va = a->votes->find(&a->m.output);
  const tr::LutVotes* vb = b->votes->find(&b->m.output);
  ASSERT_TRUE(va && vb && !va->v8.empty());
  EXPECT_EQ(va->events, 1);
  EXPECT_EQ(vb->events, 1);
  int64_t moved = 0, differ = 0, far = 0;
  const int64_t n = int64_t(va->v8.size());
  for (int64_t k = 0; k < n; ++k) {
    const int d = std::abs(va->vote(k) - vb->vote(k));
    moved += va->vote(k) != 0, differ += d != 0, far += d > 1;
  }
  EXPECT_GT(moved, n / 10) << "the head's gradient must reach its votes";
  EXPECT_LT(far, n / 200) << far << " of " << n << " votes differ by more than one";
  EXPECT_LT(differ, n / 5) << differ << " of " << n << " votes differ";
}

// Three steps (two micro-batches each, graph-captured after an eager first call) of two engines
// from one model on the same batches, whose backwards differ in roundings and summation orders:
// the first step's loss to loss0_rel relative (0: equal), its gradient norm to 1% and its flips to
// 5%; later losses (after flips that differ near their thresholds) to 2e-3. No step may fall back
// from its graph. Returns the fraction of indices that differ after the three steps.
double close_runs(const tr::TrainModel& m0, const tr::TrainConfig& cfg, const tr::GpuEngineOptions& oa,
                  const tr::GpuEngineOptions& ob, int64_t B, int64_t T, uint32_t seed, double loss0_rel) {
  auto a = make_side(m0, cfg, true, oa, B, T);
  auto b = make_side(m0, cfg, true, ob, B, T);
  const auto p0 = snapshot(*a);
  ::testing::internal::CaptureStderr();
  for (int64_t k = 0; k < 3; ++k) {
    std::vector<std::vector<int32_t>> in, tg;
    batches(m0.hp.n_vocab, B, T, seed + uint32_t(k), in, tg);
    const StepResult ra = step(*a, k, in, tg, B, T), rb = step(*b, k, in, tg, B, T);
    std::printf("step %lld: loss %.6f / %.6f, gnorm %.5f / %.5f, flips %lld / %lld\n", (long long)k, ra.loss, rb.loss,
                ra.gnorm, rb.gnorm, (long long)ra.flips, (long long)rb.flips);
    if (k == 0) {  // the same weights
      EXPECT_NEAR(rb.loss, ra.loss, loss0_rel * ra.loss);
      EXPECT_NEAR(rb.gnorm, ra.gnorm, 0.01 * ra.gnorm);
      EXPECT_GT(ra.flips, 50) << "indices must move";
      EXPECT_NEAR(double(rb.flips), double(ra.flips), 0.05 * double(ra.flips));
    } else {
      EXPECT_NEAR(rb.loss, ra.loss, 2e-3 * ra.loss) << "step " << k;
    }
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(err.find("could not be captured"), std::string::npos) << err;
  const Diff d = compare(*a, *b, p0);
  std::printf("indices differing after 3 steps: %.4f\n", d.idx_frac);
  return d.idx_frac;
}

// cuDNN's fused attention (cudnn_attention.h) against ours in the same engine: the attentions'
// roundings only at the first step (loss to 1e-4).
TEST(GpuTrainerFast, CudnnAttentionCloseToOurs) {
  REQUIRE_GPU();
  if (!cuda::cudnn_attention_loaded()) GTEST_SKIP() << "libcudnn.so.9 not found";
  const Case c{"cudnn", true, false, true, tr::Rule::Momentum};
  const int64_t B = 2, T = 64;
  const tr::TrainModel m0 = make_model(c);
  tr::GpuEngineOptions ours, dnn;
  ours.fast = dnn.fast = true;
  ours.cudnn_attention = tr::GpuEngineOptions::Cudnn::Off;
  dnn.cudnn_attention = tr::GpuEngineOptions::Cudnn::On;  // (this head size is below Auto's)
  cuda::CudnnAttnShape cs;  // (the engine's call: q, k, v apart, the gradients one [dq | dk | dv] matrix)
  cs.B = B, cs.T = T, cs.NH = m0.hp.n_head, cs.KVH = m0.hp.n_head_kv, cs.HS = m0.hp.head_dim;
  cs.ldq = cs.NH * cs.HS, cs.ldk = cs.KVH * cs.HS, cs.ldd = cs.ldq + 2 * cs.ldk;
  ASSERT_GE(cuda::cudnn_attention_forward_workspace(cs), 0) << "cuDNN must have engines for this shape";
  ASSERT_GE(cuda::cudnn_attention_backward_workspace(cs), 0) << "cuDNN must have engines for this shape";
  close_runs(m0, make_config(c), ours, dnn, B, T, 80, 1e-4);
}

// The fused weight gradient + vote cast (ops/cuda/lut_dw_cast.h, Hopper) against cuBLAS's GEMM with
// the bf16 cast beside it, on a shape whose every layer matrix it takes (rows multiples of 128,
// rows of multiples of 256 weights): the same forward (the first loss equal), a backward that
// differs only by the order of fp32 sums (the gradient's, so a bf16 rounding now and then, and
// the statistics').
TEST(GpuTrainerFast, FusedWeightGradCloseToUnfused) {
  REQUIRE_GPU();
  if (!cuda::dw_cast_available()) GTEST_SKIP() << "no Hopper device or sm_90a image";
  const Case c{"fused", true, false, true, tr::Rule::Momentum};
  const tr::TrainModel m0 = make_model(c, "layers=2,embd=256,heads=4,kv_heads=2,ff=512,ctx=64");
  tr::GpuEngineOptions un, fu;
  un.fast = fu.fast = true;
  un.cudnn_attention = fu.cudnn_attention = tr::GpuEngineOptions::Cudnn::Off;
  fu.fused_dw = true;
  EXPECT_LT(close_runs(m0, make_config(c), un, fu, 2, 64, 90, 0.0), 0.01);
}

// The forward and input-gradient GEMMs that dequantize in their loads (ops/cuda/lut_gemm.h, Hopper)
// against dequantization + cuBLAS, on a shape whose layer matrices it takes (rows and row lengths
// multiples of 128): the same weights to the bit, fp32 sums in another order, so the first loss to
// 1e-4 and then close_runs's bounds. Every layer's forward differs by those roundings (the fused
// weight gradient's test above changes only dW's), and at this rate a third of the indices flip a
// step: after three steps ~3% of the indices differ (s18b), against 0.05% for the fused dW.
TEST(GpuTrainerFast, FusedDequantCloseToUnfused) {
  REQUIRE_GPU();
  if (!cuda::lut_gemm_available()) GTEST_SKIP() << "no Hopper device or sm_90a image";
  const Case c{"fused-dequant", true, false, true, tr::Rule::Momentum};
  const tr::TrainModel m0 = make_model(c, "layers=2,embd=256,heads=4,kv_heads=2,ff=512,ctx=64");
  tr::GpuEngineOptions un, fu;
  un.fast = fu.fast = true;
  un.cudnn_attention = fu.cudnn_attention = tr::GpuEngineOptions::Cudnn::Off;
  fu.fused_dequant = true;
  EXPECT_LT(close_runs(m0, make_config(c), un, fu, 2, 64, 95, 1e-4), 0.06);
}

// A batch larger than the engine was sized for, and a token outside the vocabulary, are refused.
TEST(GpuTrainerErrors, RefusesOversizedBatchAndBadTokens) {
  REQUIRE_GPU();
  const Case c{"errors", false, false, false, tr::Rule::Momentum};
  const tr::TrainModel m0 = make_model(c);
  auto s = make_side(m0, make_config(c), true, tr::GpuEngineOptions{}, 1, 32);
  tr::TrainMask mask;
  mask.layer.assign(2, true);
  std::vector<int32_t> in(64, 3), tg(64, 4);
  s->eng->begin_step(0, 1.0);
  EXPECT_THROW(s->eng->forward_backward(mask, in.data(), tg.data(), 2, 32, 1.0, true), primal::Error);
  in[5] = 512;
  EXPECT_THROW(s->eng->forward_backward(mask, in.data(), tg.data(), 1, 32, 1.0, true), primal::Error);
  in[5] = 3;
  EXPECT_NO_THROW(s->eng->forward_backward(mask, in.data(), tg.data(), 1, 32, 1.0, true));
}

}  // namespace
