// The memory planner (train/memory_plan.h): its byte counts against formulas written out here by
// hand, the choices it makes under budgets, the refusal naming the smallest budget, and the
// parameter count of the named shapes against the real models.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "core/error.h"
#include "train/memory_plan.h"

using namespace primal;
using namespace primal::train;

namespace {

PlanRequest tiny_request() {
  PlanRequest r;
  r.hp = training_shape("layers=2,embd=64,heads=4,kv_heads=2,ff=128,vocab=1000");
  r.batch = 4;
  r.seq = 32;
  return r;
}

int64_t item(const MemoryPlan& p, const std::string& name) {
  for (const MemoryItem& it : p.items)
    if (it.name == name) return it.bytes;
  return 0;
}

}  // namespace

TEST(MemoryPlan, CountsPersistentStateByHand) {
  PlanRequest r = tiny_request();
  const MemoryPlan p = measure_plan(r, 4, false, 2);
  // Per layer: q (64x64), k, v (32x64), o (64x64), gate, up (128x64), down (64x128).
  const int64_t layer = 64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3;
  const int64_t lut = 2 * layer + 2 * 1000 * 64;  // untied embeddings and head are LUT too
  EXPECT_EQ(p.lut_weights, lut);
  EXPECT_EQ(p.params, lut + 2 * (2 * 64) + 64);  // + norms
  EXPECT_EQ(item(p, "LUT indices"), lut / 2);
  EXPECT_EQ(item(p, "votes"), lut);
  EXPECT_EQ(item(p, "LUT scales (fp32)"), lut / 32 * 4);
  EXPECT_EQ(item(p, "scale gradients + AdamW m, v"), lut / 32 * 12);
  EXPECT_DOUBLE_EQ(p.index_vote_bytes_per_weight(), 1.5);  // the bound for LUT4 + int8 votes
  r.vote_bits = 16;
  EXPECT_DOUBLE_EQ(measure_plan(r, 4, false, 2).index_vote_bytes_per_weight(), 2.5);
  r.vote_bits = 8;
  r.lut_bits = 8;
  EXPECT_DOUBLE_EQ(measure_plan(r, 4, false, 2).index_vote_bytes_per_weight(), 2.0);
  // Frozen layers keep indices and scales only.
  r.lut_bits = 4;
  const MemoryPlan top = measure_plan(r, 4, false, 1);
  EXPECT_EQ(item(top, "votes"), layer + 1000 * 64);  // the top layer and the head; no gradient reaches the embeddings
  EXPECT_EQ(item(top, "LUT indices"), lut / 2);
}

TEST(MemoryPlan, ActivationsShrinkWithRecomputationAndMicroBatch) {
  const PlanRequest r = tiny_request();
  const MemoryPlan full = measure_plan(r, 4, false, 2), rc = measure_plan(r, 4, true, 2), mb = measure_plan(r, 1, false, 2);
  EXPECT_LT(rc.group_bytes("activations"), full.group_bytes("activations"));
  EXPECT_LT(mb.group_bytes("activations"), full.group_bytes("activations"));
  EXPECT_EQ(rc.group_bytes("persistent"), full.group_bytes("persistent"));
  EXPECT_EQ(mb.accum, 4);
  // Layer activations scale with the tokens of a micro-batch: 4x the tokens, 4x the bytes.
  EXPECT_EQ(item(full, "layer activations"), 4 * item(mb, "layer activations"));
  // Without recomputation every trainable layer keeps its set; with it, one does.
  EXPECT_EQ(item(full, "layer activations"), 2 * item(rc, "one layer's activations (recomputed)"));
  EXPECT_LT(full.relative_time, rc.relative_time);
  EXPECT_LT(full.relative_time, mb.relative_time);
}

// Recomputation per layer: the top kept layers keep their sets, the others share one; the cost
// model charges a third of a layer's forward and backward per recomputed layer.
TEST(MemoryPlan, RecomputesOnlyTheLayersBelowTheKeptOnes) {
  PlanRequest r = tiny_request();
  r.hp = training_shape("layers=6,embd=64,heads=4,kv_heads=2,ff=128,vocab=1000");
  r.act_bytes = 4;  // (the fp32 mode: no kept attention outputs or q, k, v to choose between)
  const MemoryPlan full = measure_plan(r, 4, false, 6), all = measure_plan(r, 4, true, 6),
                   part = measure_plan(r, 4, true, 6, 2);
  const int64_t set = item(all, "one layer's activations (recomputed)");
  EXPECT_EQ(item(full, "layer activations"), 6 * set);
  EXPECT_EQ(item(part, "layer activations"), 2 * set);
  EXPECT_EQ(item(part, "one layer's activations (recomputed)"), set);
  EXPECT_EQ(part.kept_layers, 2);
  // (the logits chunk lives in the shared set's memory, only what it needs beyond it counted)
  const int64_t logits = 128 * 1000 * 4;
  EXPECT_EQ(item(part, "logits chunk (fp32) beyond the shared set"), std::max<int64_t>(0, logits - set));
  EXPECT_EQ(full.total() - part.total(), 4 * set + logits - std::max(set, logits));
  EXPECT_NEAR(part.relative_time - full.relative_time, (4.0 / 6.0) / 3.0, 1e-12);
  EXPECT_NEAR(all.relative_time - full.relative_time, 1.0 / 3.0, 1e-12);
  EXPECT_THROW(measure_plan(r, 4, true, 6, 6), Error);  // keeping every layer is no recomputation
  // Under a budget that fits two kept layers exactly, the planner keeps two and recomputes four.
  r.budget = part.total();
  const MemoryPlan p = choose_plan(r);
  EXPECT_TRUE(p.recompute);
  EXPECT_EQ(p.micro_batch, 4);
  EXPECT_EQ(p.kept_layers, 2);
  EXPECT_EQ(p.total(), part.total());
  // --recompute on: every layer.
  r.recompute = 1;
  EXPECT_EQ(choose_plan(r).kept_layers, 0);
}

// The bf16 mode's recomputed layers may keep their attention output (bf16) and log-sum-exp (fp32):
// N (2 Q + 4 NH) bytes each, a recomputation without its attention forward (cheaper in the cost
// model); the planner takes them where they fit and nothing faster does. Refused in the fp32 mode
// and without recomputation.
TEST(MemoryPlan, KeepsTheRecomputedLayersAttentionOutputs) {
  PlanRequest r = tiny_request();
  r.hp = training_shape("layers=6,embd=64,heads=4,kv_heads=2,ff=128,vocab=1000");
  r.act_bytes = 2;
  const int64_t N = 4 * 32, Q = 64, NH = 4, per = N * (2 * Q + 4 * NH);
  const MemoryPlan all = measure_plan(r, 4, true, 6), att = measure_plan(r, 4, true, 6, 0, true),
                   part = measure_plan(r, 4, true, 6, 2, true);
  EXPECT_TRUE(att.keep_attention);
  EXPECT_EQ(item(att, "recomputed layers' attention outputs"), 6 * per);
  EXPECT_EQ(item(part, "recomputed layers' attention outputs"), 4 * per);
  // The shared set leaves out what every recomputed layer keeps of its own (the logits chunk, in
  // its memory, is the larger either way here).
  EXPECT_EQ(item(att, "one layer's activations (recomputed)"), item(all, "one layer's activations (recomputed)") - per);
  EXPECT_EQ(att.total() - all.total(), 6 * per);
  EXPECT_LT(att.relative_time, all.relative_time);
  EXPECT_GT(att.relative_time, measure_plan(r, 4, false, 6).relative_time);
  r.budget = att.total();  // room for the attention outputs, not for a kept layer
  const MemoryPlan p = choose_plan(r);
  EXPECT_TRUE(p.recompute && p.keep_attention);
  EXPECT_EQ(p.kept_layers, 0);
  // q, k, v (bf16) kept too for the lowest recomputed layers: N 2 (Q + 2 KV) bytes each, a
  // recomputation without their GEMMs; the planner gives them what the budget leaves.
  const int64_t qkv = N * 2 * (Q + 2 * 32);
  const MemoryPlan q3 = measure_plan(r, 4, true, 6, 0, true, 3);
  EXPECT_EQ(q3.qkv_layers, 3);
  EXPECT_EQ(item(q3, "recomputed layers' q, k, v"), 3 * qkv);
  EXPECT_EQ(q3.total() - att.total(), 3 * qkv);
  EXPECT_LT(q3.relative_time, att.relative_time);
  EXPECT_THROW(measure_plan(r, 4, true, 6, 2, true, 5), Error);  // 4 layers are recomputed
  r.budget = att.total() + 3 * qkv + qkv / 2;
  const MemoryPlan pq = choose_plan(r);
  EXPECT_TRUE(pq.keep_attention);
  EXPECT_EQ(pq.kept_layers, 0);
  EXPECT_EQ(pq.qkv_layers, 3);
  const MemoryPlan q6 = measure_plan(r, 4, true, 6, 0, true, 6);
  EXPECT_EQ(item(q6, "one layer's activations (recomputed)"),
            item(att, "one layer's activations (recomputed)") - qkv);
  r.budget = all.total();
  EXPECT_FALSE(choose_plan(r).keep_attention);
  // qwen2.5-1.5b at 8 GiB: every layer recomputed with its attention output and q, k, v kept (the
  // 572 MiB of a kept layer hold the q, k, v of 17, which spare more recomputation).
  PlanRequest qw;
  qw.hp = training_shape("qwen2.5-1.5b");
  qw.head_chunk = 2048;
  qw.budget = parse_bytes("8GiB");
  const MemoryPlan pw = choose_plan(qw);
  EXPECT_TRUE(pw.recompute && pw.keep_attention);
  EXPECT_EQ(pw.kept_layers, 0);
  EXPECT_EQ(pw.qkv_layers, 28);
  EXPECT_LE(pw.total(), qw.budget);
  EXPECT_THROW(measure_plan(r, 4, false, 6, 0, true), Error);
  r.act_bytes = 4;
  EXPECT_THROW(measure_plan(r, 4, true, 6, 0, true), Error);
}

// The activations are the CUDA engine's buffers (train/cuda/gpu_engine.cpp), by its formulas:
// tiny_request is C 64, 4 heads of 16 (Q 64), 2 KV heads (KV 32), F 128, V 1000, 2 layers.
TEST(MemoryPlan, CountsTheEnginesActivationsByHand) {
  PlanRequest r = tiny_request();
  const int64_t N = 4 * 32, C = 64, Q = 64, KV = 32, F = 128, NH = 4;
  // bf16 mode: mid, rstd x 2, lse fp32; q, k, v, att, xn1, xn2, gate, up, h bf16.
  r.act_bytes = 2;
  const int64_t set16 = 4 * (C + 2 + NH) + 2 * (2 * Q + 2 * KV + 2 * C + 3 * F);
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "layer activations"), 2 * N * set16);
  // fp32 mode: all of them fp32 (no copy of att).
  r.act_bytes = 4;
  const int64_t set32 = 4 * (2 * Q + 2 * KV + C + 2 + NH) + 4 * (2 * C + 3 * F);
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "layer activations"), 2 * N * set32);
  // Every layer's residual stream, frozen or not; a frozen layer's forward uses one shared set.
  EXPECT_EQ(item(measure_plan(r, 4, false, 1), "residual stream (fp32)"), N * C * 4 * 3);
  EXPECT_EQ(item(measure_plan(r, 4, false, 1), "frozen layers' forward scratch"), N * set32);
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "frozen layers' forward scratch"), 0);
  EXPECT_EQ(item(measure_plan(r, 4, true, 1), "frozen layers' forward scratch"), 0);
  // The logits chunk: fp32, or bf16 (gradient in place) for the bf16 mode's LUT head.
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "logits chunk (fp32)"), std::min<int64_t>(r.head_chunk, N) * 1000 * 4);
  r.act_bytes = 2;
  // bf16 rows 1008 apart: V = 1000 rounded up to 16 (32-byte aligned GEMM rows).
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "logits chunk (bf16)"), std::min<int64_t>(r.head_chunk, N) * 1008 * 2);
  // The backward scratch: dx, dxnf fp32 and dx's bf16 copy, then one block of dxn, dq, datt, dk, dv
  // fp32, dup and the stacked dq, dk, dv bf16 and dh (bf16_dh_floats), in which the trainable LUT
  // head's (V, C) bf16 weight gradient is summed over the chunks: the larger of the two.
  const int64_t dh = 4 * bf16_dh_floats(N, F, NH, 16, Q + 2 * KV);
  const int64_t block = N * (4 * (C + 2 * Q + 2 * KV) + 2 * (F + Q + 2 * KV)) + dh;
  ASSERT_GT(block, 1000 * C * 2);
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "backward scratch"), N * 10 * C + block);
  r.hp.n_vocab = 8000;  // a head gradient larger than the block
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "backward scratch"), N * 10 * C + 8000 * C * 2);
  r.train_embeddings = false;
  EXPECT_EQ(item(measure_plan(r, 4, false, 2), "backward scratch"), N * 10 * C + block);
}

// Each micro-batch's backward casts every trainable vote once: the cost model prices that pass, so
// at equal memory one micro-batch with recomputation can beat two without it.
TEST(MemoryPlan, PricesTheVoteCastOfEveryMicroBatch) {
  PlanRequest r = tiny_request();  // 128 tokens a step: the cast pass dominates
  const MemoryPlan one_rc = measure_plan(r, 4, true, 2), two = measure_plan(r, 2, false, 2);
  EXPECT_EQ(two.accum, 2);
  EXPECT_LT(one_rc.relative_time, two.relative_time);
  r.batch = 8;  // 8192 tokens a step: recomputation (a third more) costs more than a second cast pass
  r.seq = 1024;
  EXPECT_LT(measure_plan(r, 4, false, 2).relative_time, measure_plan(r, 8, true, 2).relative_time);
}

TEST(MemoryPlan, ChoosesTheFastestPlanThatFits) {
  PlanRequest r = tiny_request();
  const MemoryPlan free = choose_plan(r);  // no budget
  EXPECT_EQ(free.micro_batch, 4);
  EXPECT_FALSE(free.recompute);
  EXPECT_EQ(free.trainable_layers, 2);
  // One byte short of the fastest plan: something cheaper in memory, still within the budget.
  r.budget = free.total() - 1;
  const MemoryPlan tight = choose_plan(r);
  EXPECT_LE(tight.total(), r.budget);
  EXPECT_TRUE(tight.recompute || tight.micro_batch < 4);
  EXPECT_EQ(tight.trainable_layers, 2);
  // Fixed choices are honoured.
  r.budget = 0;
  r.micro_batch = 2;
  r.recompute = 1;
  const MemoryPlan fixed = choose_plan(r);
  EXPECT_EQ(fixed.micro_batch, 2);
  EXPECT_TRUE(fixed.recompute);
  r.micro_batch = 3;
  EXPECT_THROW(choose_plan(r), Error);
}

TEST(MemoryPlan, RefusesAnImpossibleBudgetNamingTheSmallestThatWorks) {
  PlanRequest r = tiny_request();
  const int64_t smallest = measure_plan(r, 1, true, 1).total();
  r.budget = smallest - 1;
  try {
    choose_plan(r);
    FAIL() << "a budget below every plan was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(format_bytes(smallest)), std::string::npos) << e.what();
  }
  r.budget = smallest;
  const MemoryPlan p = choose_plan(r);
  EXPECT_LE(p.total(), smallest);
}

TEST(MemoryPlan, NamedShapesHaveTheRealModelsParameterCounts) {
  PlanRequest r;
  r.hp = training_shape("qwen2.5-1.5b");
  EXPECT_EQ(measure_plan(r, 8, true, 28).params, 1543714304);  // Qwen2.5-1.5B (tied embeddings)
  r.hp = training_shape("seed-500m");
  r.batch = 4;
  r.seq = 512;
  // 24 x (4 x 1280^2 + 3 x 1280 x 3456 + 2 x 1280) + 2 x 50257 x 1280 + 1280
  EXPECT_EQ(measure_plan(r, 4, true, 24).params, 24LL * (4 * 1280 * 1280 + 3 * 1280 * 3456 + 2 * 1280) +
                                                     2LL * 50257 * 1280 + 1280);
  EXPECT_THROW(training_shape("layers=2,embd=64,heads=4,ff=128"), Error);  // no vocab
  EXPECT_THROW(training_shape("qwen9"), Error);
}

TEST(MemoryPlan, ParsesMemorySizes) {
  EXPECT_EQ(parse_bytes("8GiB"), 8LL << 30);
  EXPECT_EQ(parse_bytes("512MiB"), 512LL << 20);
  EXPECT_EQ(parse_bytes("1.5G"), 3LL << 29);
  EXPECT_EQ(parse_bytes("4096"), 4096);
  for (const char* bad : {"", "GiB", "8XB", "-1G", "0", "1e30G", "nan"}) EXPECT_THROW(parse_bytes(bad), Error) << bad;
}
