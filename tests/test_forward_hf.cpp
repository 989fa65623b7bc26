// The HF checkpoint (bf16 safetensors, NeoX RoPE) through the CPU forward against reference.json,
// which HF transformers computed from the same weights in fp32 without TF32: the same top-20 ids
// (order may differ only between values closer than 1e-4), each value within 1e-3 relative, and
// the 32 greedy tokens identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "model/forward.h"
#include "testing.h"

using namespace primal;

namespace {

const Model& hf_model() {
  static std::unique_ptr<Model> m = Model::open(test::data_path("models/ref-llama-code"));
  return *m;
}

nlohmann::json reference() {
  std::ifstream f(test::data_path("models/ref-llama-code/reference.json"));
  return nlohmann::json::parse(f);
}

}  // namespace

TEST(ForwardHf, LoadsAsNeoxLlama) {
  const HParams& hp = hf_model().hparams();
  EXPECT_EQ(hp.arch, "llama");
  EXPECT_TRUE(hp.rope_neox);
  EXPECT_FALSE(hp.tied_embeddings);
  EXPECT_EQ(hp.n_layer, 8);
  EXPECT_EQ(hp.n_head_kv, 4);
  EXPECT_EQ(hf_model().w.tok_embd->type, DType::BF16);
}

TEST(ForwardHf, TopLogitsAndGreedyMatchTransformers) {
  const Model& m = hf_model();
  const int64_t V = m.hparams().n_vocab;
  const auto ref = reference();
  ASSERT_EQ(ref.at("reference_outputs").size(), 3u);
  for (const auto& r : ref.at("reference_outputs")) {
    const auto ids = r.at("prompt_ids").get<std::vector<int32_t>>();
    const auto top_ids = r.at("last_logits_top20_ids").get<std::vector<int32_t>>();
    const auto top = r.at("last_logits_top20").get<std::vector<double>>();
    KVCache cache = make_kv_cache(m.w, 128);
    std::vector<float> logits(static_cast<size_t>(V));
    llama_forward(m.w, cache, ids.data(), int64_t(ids.size()), 1, logits.data());

    std::vector<int32_t> order(static_cast<size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 20, order.end(), [&](int32_t a, int32_t b) {
      return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
    });
    for (size_t i = 0; i < 20; ++i) {
      EXPECT_NEAR(logits[size_t(top_ids[i])], top[i], 1e-3 * std::fabs(top[i])) << "reference rank " << i;
      // Our rank i must hold the reference's id, or one whose reference value is within 1e-4 of it.
      if (order[i] != top_ids[i]) {
        const auto at = std::find(top_ids.begin(), top_ids.end(), order[i]);
        ASSERT_NE(at, top_ids.end()) << "id " << order[i] << " is not in the reference top-20";
        EXPECT_LT(std::fabs(top[size_t(at - top_ids.begin())] - top[i]), 1e-4) << "rank " << i;
      }
    }
    double l2 = 0;
    for (float v : logits) l2 += double(v) * v;
    EXPECT_NEAR(std::sqrt(l2), r.at("logits_l2").get<double>(), 1e-4 * r.at("logits_l2").get<double>());

    std::vector<int32_t> gen;
    for (int k = 0; k < 32; ++k) {
      const int32_t t = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      gen.push_back(t);
      llama_forward(m.w, cache, &t, 1, 1, logits.data());
    }
    EXPECT_EQ(gen, r.at("greedy32_ids").get<std::vector<int32_t>>());
  }
}

// The same model through llama.cpp's Q8_0 GGUF (rows permuted for the pairs RoPE layout) agrees
// with the HF checkpoint to Q8_0's quantization noise at every layer: the residual stream after
// the last layer within 3% RMS.
TEST(ForwardHf, LayerDumpsAgreeWithTheQ8_0Gguf) {
  const Model& hf = hf_model();
  auto q8 = Model::open(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"));
  const std::vector<int32_t> ids = {11748, 28686, 198, 11748, 25064, 628, 198, 4871, 220};
  auto collect = [&](const Model& m) {
    std::map<std::string, std::vector<float>> out;
    KVCache cache = make_kv_cache(m.w, 16);
    std::vector<float> logits(static_cast<size_t>(m.hparams().n_vocab));
    llama_forward(m.w, cache, ids.data(), int64_t(ids.size()), 1, logits.data(),
                  [&](const std::string& name, const float* d, const std::vector<int64_t>& shape) {
                    int64_t n = 1;
                    for (int64_t s : shape) n *= s;
                    out[name].assign(d, d + n);
                  });
    return out;
  };
  const auto a = collect(hf), b = collect(*q8);
  ASSERT_EQ(a.size(), b.size());
  for (const char* name : {"inp_embd", "Vcur-0", "kqv-0", "l_out-0", "l_out-3", "l_out-7", "result_output"}) {
    const auto& x = a.at(name);
    const auto& y = b.at(name);
    ASSERT_EQ(x.size(), y.size()) << name;
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      den += double(x[i]) * x[i];
    }
    EXPECT_LT(std::sqrt(num / den), 0.03) << name;
  }
}
