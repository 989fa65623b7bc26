// Perplexity: llama.cpp's definition (windows, BOS, second-half scoring, +/- formula) checked
// against a direct computation on the real reference model, and the +/- on hand-computed values.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "infer/perplexity.h"
#include "model/forward.h"
#include "ops/cpu/softmax.h"
#include "testing.h"

using namespace primal;

namespace {

const Model& q8_model() {
  static std::unique_ptr<Model> m = Model::open(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"));
  return *m;
}

// Real token ids: the reference prompts and their greedy continuations, 172 tokens.
std::vector<int32_t> some_tokens() {
  std::ifstream f(test::data_path("models/ref-llama-code/reference.json"));
  const auto j = nlohmann::json::parse(f);
  std::vector<int32_t> out;
  for (const auto& r : j.at("reference_outputs")) {
    for (int32_t t : r.at("prompt_ids")) out.push_back(t);
    for (int32_t t : r.at("greedy32_ids")) out.push_back(t);
  }
  for (const auto& r : j.at("reference_outputs"))
    for (int32_t t : r.at("prompt_ids")) out.push_back(t);
  return out;
}

}  // namespace

TEST(NllStats, HandComputedEstimate) {
  NllStats s;
  for (double v : {1.0, 2.0, 3.0}) s.add(v);
  EXPECT_DOUBLE_EQ(s.mean(), 2.0);
  EXPECT_DOUBLE_EQ(s.ppl(), std::exp(2.0));
  // mean of squares 14/3, variance 14/3 - 4 = 2/3, standard error sqrt((2/3) / 2)
  EXPECT_NEAR(s.err(), std::sqrt(1.0 / 3.0) * std::exp(2.0), 1e-12);
  NllStats one;
  one.add(1.5);
  EXPECT_EQ(one.err(), 0.0);  // undefined with one sample
}

TEST(Perplexity, WindowsBosAndSecondHalfScoringAsLlamaCpp) {
  const Model& m = q8_model();
  const int64_t V = m.hparams().n_vocab, n_ctx = 32, first = n_ctx / 2;
  const auto tokens = some_tokens();
  ASSERT_GE(tokens.size(), 160u);
  const int64_t n_chunk = int64_t(tokens.size()) / n_ctx;  // 5 windows, the tail dropped
  for (int32_t bos : {-1, 50256}) {
    // Direct computation: every window from an empty cache, logits of all positions.
    NllStats want;
    for (int64_t c = 0; c < n_chunk; ++c) {
      std::vector<int32_t> w(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx);
      if (bos >= 0) w[0] = bos;
      KVCache cache = make_kv_cache(m.w, n_ctx);
      std::vector<float> logits(size_t(n_ctx * V));
      llama_forward(m.w, cache, w.data(), n_ctx, n_ctx, logits.data());
      for (int64_t p = first; p < n_ctx - 1; ++p)
        want.add(cpu::cross_entropy_forward(logits.data() + p * V, V, w[size_t(p + 1)]));
    }
    PerplexityOptions o;
    o.n_ctx = n_ctx;
    o.bos_id = bos;
    int64_t calls = 0;
    const PerplexityResult r = perplexity(m.w, tokens, o, [&](int64_t done, int64_t total, double ppl, double) {
      ++calls;
      EXPECT_EQ(done, calls);
      EXPECT_EQ(total, n_chunk);
      EXPECT_TRUE(std::isfinite(ppl));
    });
    EXPECT_EQ(calls, n_chunk);
    EXPECT_EQ(r.n_chunks, n_chunk);
    EXPECT_EQ(r.n_scored, n_chunk * (n_ctx - 1 - first));
    // Same computation; the head runs over 16 instead of 32 rows, so only rounding differs.
    EXPECT_NEAR(r.ppl, want.ppl(), 1e-6 * want.ppl()) << "bos " << bos;
    EXPECT_NEAR(r.ppl_err, want.err(), 1e-5 * want.err()) << "bos " << bos;
    EXPECT_GT(r.ppl, 1.0);
  }
  // BOS at the window start changes the context, hence the estimate.
  PerplexityOptions a, b;
  a.n_ctx = b.n_ctx = n_ctx;
  b.bos_id = 50256;
  EXPECT_NE(perplexity(m.w, tokens, a).ppl, perplexity(m.w, tokens, b).ppl);
  // --chunks limits the windows; more than available means all of them.
  a.n_chunks = 2;
  EXPECT_EQ(perplexity(m.w, tokens, a).n_chunks, 2);
  a.n_chunks = 100;
  EXPECT_EQ(perplexity(m.w, tokens, a).n_chunks, n_chunk);
  // Prefill split into two batches (the unscored half, then the scored half) is the same.
  PerplexityOptions split = b;
  split.n_batch = first;
  EXPECT_NEAR(perplexity(m.w, tokens, split).ppl, perplexity(m.w, tokens, b).ppl, 1e-5);
}

TEST(Perplexity, RejectsTooFewTokensAndBadContexts) {
  const Model& m = q8_model();
  const auto tokens = some_tokens();
  PerplexityOptions o;
  o.n_ctx = 512;  // needs 1024 tokens
  try {
    perplexity(m.w, tokens, o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1024"), std::string::npos) << e.what();
  }
  o.n_ctx = 33;
  EXPECT_THROW(perplexity(m.w, tokens, o), Error);
  o.n_ctx = 32;
  o.n_chunks = 0;
  EXPECT_THROW(perplexity(m.w, tokens, o), Error);
}
