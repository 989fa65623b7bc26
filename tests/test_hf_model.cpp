#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.h"
#include "core/half.h"
#include "hf_fixture.h"
#include "io/gguf.h"
#include "io/hf_names.h"
#include "io/model_source.h"
#include "quant/dequant.h"
#include "testing.h"

using namespace primal;
namespace fs = std::filesystem;

namespace {

void expect_open_fails(const std::string& dir, const std::string& what) {
  try {
    ModelSource::open(dir);
    ADD_FAILURE() << "opened " << dir;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(HfNames, Mapping) {
  EXPECT_EQ(gguf_name_for_hf("model.embed_tokens.weight")->name, "token_embd.weight");
  EXPECT_EQ(gguf_name_for_hf("model.norm.weight")->name, "output_norm.weight");
  EXPECT_EQ(gguf_name_for_hf("lm_head.weight")->name, "output.weight");
  const auto q = gguf_name_for_hf("model.layers.12.self_attn.q_proj.weight");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->name, "blk.12.attn_q.weight");
  EXPECT_EQ(q->layer, 12);
  EXPECT_EQ(gguf_name_for_hf("model.layers.0.self_attn.k_proj.bias")->name, "blk.0.attn_k.bias");
  EXPECT_EQ(gguf_name_for_hf("model.layers.3.self_attn.o_proj.weight")->name, "blk.3.attn_output.weight");
  EXPECT_EQ(gguf_name_for_hf("model.layers.3.mlp.down_proj.weight")->name, "blk.3.ffn_down.weight");
  EXPECT_EQ(gguf_name_for_hf("model.layers.3.input_layernorm.weight")->name, "blk.3.attn_norm.weight");
  EXPECT_EQ(gguf_name_for_hf("model.layers.3.post_attention_layernorm.weight")->name, "blk.3.ffn_norm.weight");
  EXPECT_FALSE(gguf_name_for_hf("model.layers.x.mlp.up_proj.weight"));
  EXPECT_FALSE(gguf_name_for_hf("model.layers.01.mlp.up_proj.weight"));
  EXPECT_FALSE(gguf_name_for_hf("model.layers.1.mlp.up_proj"));
  EXPECT_FALSE(gguf_name_for_hf("model.layers.1.self_attn.o_proj.bias"));
  EXPECT_FALSE(gguf_name_for_hf("transformer.h.0.attn.c_attn.weight"));
  EXPECT_TRUE(hf_tensor_is_ignored("model.layers.0.self_attn.rotary_emb.inv_freq"));
}

TEST(HfModel, OpensRealCheckpoint) {
  const auto m = ModelSource::open(test::data_path("models/ref-llama-code"));
  EXPECT_TRUE(m->is_hf());
  EXPECT_EQ(m->tensors().size(), 75u);
  const HParams& h = m->hparams();
  EXPECT_TRUE(h.rope_neox);
  EXPECT_FALSE(h.tied_embeddings);
  EXPECT_FALSE(h.qkv_bias);
  EXPECT_EQ(h.n_vocab, 50257);
  const TensorRef& e = m->tensor("token_embd.weight");
  EXPECT_EQ(e.type, DType::BF16);
  EXPECT_EQ(e.ne, (std::vector<int64_t>{256, 50257}));  // ggml order
  EXPECT_EQ(e.row_stride(), 512u);
  EXPECT_EQ(m->tensor("blk.0.attn_k.weight").ne, (std::vector<int64_t>{256, 128}));
  EXPECT_EQ(m->tensor("blk.0.ffn_down.weight").ne, (std::vector<int64_t>{704, 256}));
  EXPECT_EQ(m->tensor("output.weight").ne, (std::vector<int64_t>{256, 50257}));
}

// The embedding row of token t is the same vector in the HF checkpoint and (to Q8_0 precision)
// in llama.cpp's file: checks the name mapping and ggml dimension order end to end. The Q8_0 error
// per element is at most d/2 + fp16 rounding (see test_convert for the full derivation); a loose
// 2% of the row's max magnitude holds with a wide margin.
TEST(HfModel, EmbeddingRowsMatchLlamaCpp) {
  const auto hf = ModelSource::open(test::data_path("models/ref-llama-code"));
  const auto gg = ModelSource::open(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"));
  std::vector<float> a(256), b(256);
  for (int64_t tok : {0, 1, 464, 50256}) {
    dequantize_tensor_row(hf->tensor("token_embd.weight"), tok, a.data());
    dequantize_tensor_row(gg->tensor("token_embd.weight"), tok, b.data());
    float amax = 0, err = 0;
    for (int i = 0; i < 256; ++i) amax = std::max(amax, std::fabs(a[i])), err = std::max(err, std::fabs(a[i] - b[i]));
    EXPECT_GT(amax, 0.0f);
    EXPECT_LE(err, 0.02f * amax) << "token " << tok;
  }
}

TEST(HfModel, TinyQwen2TiedWithBiases) {
  const std::string dir = test::temp_dir() + "/tiny_qwen";
  test::TinyModel tm;
  tm.model_type = "qwen2";
  tm.tied = true;
  test::write_tiny_model(dir, tm);
  const auto m = ModelSource::open(dir);
  EXPECT_EQ(m->hparams().arch, "qwen2");
  EXPECT_TRUE(m->hparams().qkv_bias);
  EXPECT_TRUE(m->hparams().tied_embeddings);
  EXPECT_EQ(m->find("output.weight"), nullptr);
  EXPECT_EQ(m->tensor("blk.1.attn_k.bias").ne, (std::vector<int64_t>{32}));
  EXPECT_EQ(m->tensor("blk.1.attn_q.weight").ne, (std::vector<int64_t>{64, 64}));
}

TEST(HfModel, TiedCheckpointThatStillSavesLmHead) {
  // tie_word_embeddings with a saved lm_head copy: the copy is not a separate weight.
  const std::string dir = test::temp_dir() + "/tied_with_head";
  test::TinyModel tm;
  tm.extra_tensor = "lm_head.weight";  // shape {4}: would fail finish() if it were used
  tm.tied = true;
  test::write_tiny_model(dir, tm);
  const auto m = ModelSource::open(dir);
  EXPECT_TRUE(m->hparams().tied_embeddings);
  EXPECT_EQ(m->find("output.weight"), nullptr);
}

TEST(HfModel, RefusesInconsistentCheckpoints) {
  const std::string base = test::temp_dir() + "/bad_models";
  {
    test::TinyModel tm;
    tm.model_type = "qwen2";
    tm.drop_bias = true;
    test::write_tiny_model(base + "/nobias", tm);
    expect_open_fails(base + "/nobias", "q_proj.bias");
  }
  {
    test::TinyModel tm;
    tm.extra_tensor = "model.layers.0.mlp.experts.weight";
    test::write_tiny_model(base + "/extra", tm);
    expect_open_fails(base + "/extra", "'model.layers.0.mlp.experts.weight' is not a weight");
  }
  {
    test::TinyModel tm;
    tm.extra_tensor = "model.layers.5.input_layernorm.weight";
    test::write_tiny_model(base + "/layer5", tm);
    expect_open_fails(base + "/layer5", "belongs to layer 5");
  }
  {
    test::TinyModel tm;
    test::write_tiny_model(base + "/nohead", tm);
    // Rewrite the config to an untied model whose checkpoint lacks lm_head: drop it from the file.
    tm.tied = true;
    test::write_tiny_model(base + "/nohead_src", tm);
    fs::copy_file(base + "/nohead_src/model.safetensors", base + "/nohead/model.safetensors",
                  fs::copy_options::overwrite_existing);
    expect_open_fails(base + "/nohead", "no lm_head.weight");
  }
  {
    // A config whose hidden size disagrees with the weights: finish() names the tensor.
    test::TinyModel tm;
    test::write_tiny_model(base + "/shape", tm);
    std::string cfg = test::read_file(base + "/shape/config.json");
    cfg.replace(cfg.find("\"intermediate_size\":96"), 22, "\"intermediate_size\":64");
    test::write_file(base + "/shape/config.json", cfg);
    expect_open_fails(base + "/shape", "ffn_gate.weight' has shape");
  }
  {
    // An integer tensor where a weight should be.
    test::TinyModel tm;
    tm.tied = true;
    test::write_tiny_model(base + "/i32", tm);
    std::string st = test::read_file(base + "/i32/model.safetensors");
    const std::string from = "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[64]";
    const size_t at = st.find(from);
    ASSERT_NE(at, std::string::npos);
    st.replace(at, from.size(), "\"model.norm.weight\":{\"dtype\":\"I16\", \"shape\":[64]");
    test::write_file(base + "/i32/model.safetensors", st);
    expect_open_fails(base + "/i32", "dtype I16, which cannot be used as a weight");
  }
  expect_open_fails(base + "/does-not-exist", "no such file or folder");
}
