// The forward pass on the real reference model (models/ref-llama-code) against reference.json,
// the outputs of HF transformers on the bf16 checkpoint in fp32: last-position logits of three
// prompts and 32 greedy tokens. Here through llama.cpp's Q8_0 GGUF (permuted Q/K rows, pairs RoPE);
// the HF checkpoint itself is checked to 1e-3 in test_forward_hf.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "core/error.h"
#include "model/dump.h"
#include "model/forward.h"
#include "testing.h"

using namespace primal;

namespace {

using test::RefCase;
using test::reference_cases;

const Model& q8_model() {
  static std::unique_ptr<Model> m = Model::open(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"));
  return *m;
}

int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

}  // namespace

// Q8_0 rounds every weight to 8 bits (relative error up to 1/254 per weight), which moves the
// logits by about 1% here (measured: at most 1.3% on the reference top-20 of the three prompts);
// the ranking of the leading tokens and the greedy continuations must still be the reference's.
TEST(ForwardQ8_0, LastLogitsAndGreedyMatchTheHfReference) {
  const Model& m = q8_model();
  const int64_t V = m.hparams().n_vocab;
  ASSERT_EQ(V, 50257);
  for (const RefCase& rc : reference_cases()) {
    KVCache cache = make_kv_cache(m.w, 128);
    std::vector<float> logits(static_cast<size_t>(V));
    llama_forward(m.w, cache, rc.prompt_ids.data(), int64_t(rc.prompt_ids.size()), 1, logits.data());
    for (size_t i = 0; i < 20; ++i)
      EXPECT_NEAR(logits[size_t(rc.top20_ids[i])], rc.top20[i], 0.02 * std::fabs(rc.top20[i])) << i;
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 10, order.end(),
                      [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    const std::set<int32_t> top10(order.begin(), order.begin() + 10);
    for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(top10.count(rc.top20_ids[i])) << "reference rank " << i;

    std::vector<int32_t> gen;
    for (int k = 0; k < 32; ++k) {
      int32_t t = argmax(logits);
      gen.push_back(t);
      llama_forward(m.w, cache, &t, 1, 1, logits.data());
    }
    EXPECT_EQ(gen, rc.greedy32);
  }
}

// Q4_K_M (Q4_K / Q5_0 / Q6_K tensors, llama-quantize's mix) through the same path: 4-bit weights
// move the logits by up to ~11% here (measured on the reference top-20), so only the leading
// ranks are asserted: the reference's first token, and its top 3 inside our top 10.
TEST(ForwardQ4_K_M, LeadingLogitsMatchTheHfReference) {
  auto m = Model::open(test::data_path("models/ref-llama-code/ref-llama-code-Q4_K_M.gguf"));
  EXPECT_EQ(m->w.layers[0].w_gate->type, DType::Q4_K);
  const int64_t V = m->hparams().n_vocab;
  for (const RefCase& rc : reference_cases()) {
    KVCache cache = make_kv_cache(m->w, 64);
    std::vector<float> logits(static_cast<size_t>(V));
    llama_forward(m->w, cache, rc.prompt_ids.data(), int64_t(rc.prompt_ids.size()), 1, logits.data());
    EXPECT_EQ(argmax(logits), rc.top20_ids[0]);
    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 10, order.end(),
                      [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    const std::set<int32_t> top10(order.begin(), order.begin() + 10);
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(top10.count(rc.top20_ids[i])) << "reference rank " << i;
    for (size_t i = 0; i < 20; ++i)
      EXPECT_NEAR(logits[size_t(rc.top20_ids[i])], rc.top20[i], 0.15 * std::fabs(rc.top20[i])) << i;
  }
}

// Prefill in one call, in two calls, and token by token all describe the same computation; they
// differ only by summation order (sgemm tiles vs row dots), i.e. by fp32 rounding.
TEST(ForwardQ8_0, BatchedAndIncrementalPrefillAgree) {
  const Model& m = q8_model();
  const int64_t V = m.hparams().n_vocab;
  const std::vector<int32_t> ids = reference_cases()[2].prompt_ids;  // 23 tokens
  const int64_t T = int64_t(ids.size());
  auto run = [&](std::vector<int64_t> splits) {
    KVCache cache = make_kv_cache(m.w, 64);
    std::vector<float> logits(static_cast<size_t>(V));
    int64_t at = 0;
    for (int64_t n : splits) {
      llama_forward(m.w, cache, ids.data() + at, n, 1, logits.data());
      at += n;
    }
    EXPECT_EQ(at, T);
    EXPECT_EQ(cache.n_past(), T);
    return logits;
  };
  const auto one = run({T});
  const auto two = run({9, T - 9});
  const auto each = run(std::vector<int64_t>(size_t(T), 1));
  double scale = 0;
  for (float v : one) scale = std::max(scale, double(std::fabs(v)));
  for (int64_t i = 0; i < V; ++i) {
    ASSERT_NEAR(two[size_t(i)], one[size_t(i)], 1e-4 * scale) << i;
    ASSERT_NEAR(each[size_t(i)], one[size_t(i)], 1e-4 * scale) << i;
  }
  // Asking for the logits of every position gives the last one as its last row (the head then
  // runs as a GEMM over 23 rows instead of row dots: rounding differs, nothing else).
  KVCache cache = make_kv_cache(m.w, 64);
  std::vector<float> all(size_t(T * V));
  llama_forward(m.w, cache, ids.data(), T, T, all.data());
  for (int64_t i = 0; i < V; ++i) ASSERT_NEAR(all[size_t((T - 1) * V + i)], one[size_t(i)], 1e-5 * scale) << i;
}

TEST(ForwardQ8_0, KvCacheOverflowIsAClearError) {
  const Model& m = q8_model();
  KVCache cache = make_kv_cache(m.w, 8);
  std::vector<float> logits(static_cast<size_t>(m.hparams().n_vocab));
  const std::vector<int32_t> ids = {11748, 28686, 198, 11748, 25064, 628};
  llama_forward(m.w, cache, ids.data(), 6, 1, logits.data());
  try {
    llama_forward(m.w, cache, ids.data(), 3, 1, logits.data());
    FAIL() << "expected a context-full error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context is full"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("8"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.n_past(), 6);  // the failed call changed nothing
  llama_forward(m.w, cache, ids.data(), 2, 1, logits.data());  // exactly full is fine
  EXPECT_EQ(cache.n_past(), 8);
  EXPECT_THROW(llama_forward(m.w, cache, ids.data(), 1, 1, logits.data()), Error);
  // A token id outside the vocabulary is an error too, and leaves the cache as it was.
  cache.clear();
  const int32_t bad[2] = {5, 50257};
  EXPECT_THROW(llama_forward(m.w, cache, bad, 2, 1, logits.data()), Error);
  EXPECT_EQ(cache.n_past(), 0);
}

TEST(ForwardQ8_0, DumpSeesEveryNamedIntermediate) {
  const Model& m = q8_model();
  const HParams& hp = m.hparams();
  KVCache cache = make_kv_cache(m.w, 16);
  std::vector<float> logits(static_cast<size_t>(hp.n_vocab));
  const std::vector<int32_t> ids = {4299, 12900, 261};
  std::vector<std::string> names;
  std::vector<float> dumped_logits;
  DumpFn dump = [&](const std::string& name, const float* data, const std::vector<int64_t>& shape) {
    names.push_back(name);
    if (name == "result_output") {
      EXPECT_EQ(shape, (std::vector<int64_t>{1, hp.n_vocab}));
      dumped_logits.assign(data, data + hp.n_vocab);
    }
    if (name == "Qcur-0") EXPECT_EQ(shape, (std::vector<int64_t>{3, hp.n_head, hp.head_dim}));
  };
  llama_forward(m.w, cache, ids.data(), 3, 1, logits.data(), dump);
  EXPECT_EQ(dumped_logits, logits);
  // inp_embd, 13 per layer, result_norm, result_output
  EXPECT_EQ(names.size(), size_t(1 + 13 * hp.n_layer + 2));
  EXPECT_EQ(names.front(), "inp_embd");
  EXPECT_EQ(names.back(), "result_output");
  EXPECT_NE(std::find(names.begin(), names.end(), "l_out-7"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "ffn_swiglu-3"), names.end());
}

TEST(Dump, NpyHeaderIsWhatNumpyWrites) {
  const float v[6] = {1, 2, 3, 4, 5, 6};
  const std::string b = npy_bytes(v, {2, 3});
  ASSERT_EQ(b.size(), 128u + 24u);  // header padded to 128 bytes, then 6 floats
  EXPECT_EQ(b.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  EXPECT_EQ(uint8_t(b[8]) | (uint8_t(b[9]) << 8), 118);
  EXPECT_EQ(b.substr(10, 59), "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  EXPECT_EQ(b[127], '\n');
  float back[6];
  std::memcpy(back, b.data() + 128, 24);
  EXPECT_EQ(back[5], 6.0f);
}
