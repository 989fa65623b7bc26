// The memory planner (train/memory_plan.h): its byte counts against formulas written out here by
// hand, the choices it makes under budgets, the refusal naming the smallest budget, and the
// parameter count of the named shapes against the real models.
#include <gtest/gtest.h>

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
