#include <gtest/gtest.h>

#include "core/error.h"
#include "io/gguf.h"
#include "io/hf_config.h"
#include "testing.h"

using namespace primal;

namespace {

void expect_refused(const std::string& json, const std::string& what) {
  try {
    parse_hf_config(json, "cfg.json");
    ADD_FAILURE() << "accepted: " << json;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
  }
}

// A minimal valid llama config with `extra` spliced in (fields later in the object win in nlohmann).
std::string llama_cfg(const std::string& extra) {
  return R"({"model_type":"llama","vocab_size":1000,"hidden_size":256,"num_hidden_layers":2,)"
         R"("num_attention_heads":8,"intermediate_size":512)" +
         extra + "}";
}

}  // namespace

// The real transformers-5 config: rope theta inside rope_parameters.
TEST(HfConfig, RealReferenceConfig) {
  const HfConfig c = read_hf_config(test::data_path("models/ref-llama-code"));
  const HParams& h = c.hp;
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(h.arch, "llama");
  EXPECT_EQ(h.n_vocab, 50257);
  EXPECT_EQ(h.n_ctx_train, 1024);
  EXPECT_EQ(h.n_embd, 256);
  EXPECT_EQ(h.n_layer, 8);
  EXPECT_EQ(h.n_head, 8);
  EXPECT_EQ(h.n_head_kv, 4);
  EXPECT_EQ(h.head_dim, 32);
  EXPECT_EQ(h.rope_dim, 32);
  EXPECT_EQ(h.n_ff, 704);
  EXPECT_EQ(h.rms_eps, 1e-5f);
  EXPECT_EQ(h.rope_theta, 10000.0f);
  EXPECT_TRUE(c.has_rope_theta);
  EXPECT_TRUE(c.has_head_dim);
  EXPECT_EQ(c.rope_type, "default");
  EXPECT_EQ(h.rope_scaling, RopeScaling::None);
  EXPECT_FALSE(h.tied_embeddings);
  EXPECT_FALSE(h.qkv_bias);
  EXPECT_TRUE(h.rope_neox);
  EXPECT_EQ(h.bos_id, 50256);
  EXPECT_EQ(h.eos_id, 50256);
  EXPECT_EQ(c.pad_id, -1);  // "pad_token_id": null
}

// The same model as llama.cpp converted it: every hyper-parameter agrees (rope layout aside).
TEST(HfConfig, AgreesWithLlamaCppGguf) {
  const HParams a = read_hf_config(test::data_path("models/ref-llama-code/config.json")).hp;
  const HParams b = hparams_from_gguf(GgufFile(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf")));
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.n_vocab, b.n_vocab);
  EXPECT_EQ(a.n_ctx_train, b.n_ctx_train);
  EXPECT_EQ(a.n_embd, b.n_embd);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.n_head_kv, b.n_head_kv);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rope_dim, b.rope_dim);
  EXPECT_EQ(a.n_ff, b.n_ff);
  EXPECT_EQ(a.rms_eps, b.rms_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.bos_id, b.bos_id);
  EXPECT_EQ(a.eos_id, b.eos_id);
  EXPECT_EQ(a.rope_scaling, b.rope_scaling);
  EXPECT_EQ(a.rope_orig_ctx, b.rope_orig_ctx);
  EXPECT_NE(a.rope_neox, b.rope_neox);  // HF rotates halves; llama.cpp's permuted llama rows pairs
}

// Qwen2.5-0.5B-style: q/k/v biases, tied head, top-level rope_theta, yarn scaling (transformers 4).
TEST(HfConfig, Qwen2WithYarn) {
  const HfConfig c = parse_hf_config(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 21,
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_sliding_window": false,
    "vocab_size": 151936,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}})",
                                     "qwen.json");
  const HParams& h = c.hp;
  EXPECT_EQ(h.arch, "qwen2");
  EXPECT_TRUE(h.qkv_bias);
  EXPECT_TRUE(h.tied_embeddings);
  EXPECT_TRUE(h.rope_neox);
  EXPECT_EQ(h.head_dim, 64);  // 896 / 14
  EXPECT_EQ(h.n_head_kv, 2);
  EXPECT_EQ(h.rope_theta, 1e6f);
  EXPECT_EQ(h.rms_eps, 1e-6f);
  EXPECT_FALSE(c.has_head_dim);
  EXPECT_EQ(h.rope_scaling, RopeScaling::Yarn);
  EXPECT_EQ(h.rope_factor, 4.0f);
  EXPECT_EQ(h.rope_orig_ctx, 32768);
  EXPECT_EQ(h.bos_id, 151643);
  EXPECT_EQ(h.eos_id, 151645);
}

// Mistral-7B-v0.2-style: model_type mistral is the llama architecture; head_dim null is derived.
TEST(HfConfig, Mistral) {
  const HfConfig c = parse_hf_config(R"({
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "head_dim": null,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false, "vocab_size": 32000})",
                                     "mistral.json");
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.hp.arch, "llama");
  EXPECT_EQ(c.hp.head_dim, 128);
  EXPECT_FALSE(c.has_head_dim);
  EXPECT_EQ(c.hp.n_head_kv, 8);
  EXPECT_EQ(c.hp.rope_theta, 1e6f);
  EXPECT_FALSE(c.hp.qkv_bias);
  EXPECT_EQ(c.hp.rope_scaling, RopeScaling::None);
}

// Llama-3.1-style: llama3 rope scaling (transformers 4 spelling) and a list of eos ids.
TEST(HfConfig, Llama3ScalingTransformers4) {
  const HfConfig c = parse_hf_config(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_size": 2048, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "num_attention_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": true, "vocab_size": 128256})",
                                     "l3.json");
  const HParams& h = c.hp;
  EXPECT_EQ(c.rope_type, "llama3");
  EXPECT_EQ(h.rope_scaling, RopeScaling::Llama3);
  EXPECT_EQ(h.rope_factor, 32.0f);
  EXPECT_EQ(h.rope_low_freq_factor, 1.0f);
  EXPECT_EQ(h.rope_high_freq_factor, 4.0f);
  EXPECT_EQ(h.rope_orig_ctx, 8192);
  EXPECT_EQ(h.rope_theta, 500000.0f);
  EXPECT_EQ(h.eos_id, 128001);
  EXPECT_EQ(c.eos_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_TRUE(h.tied_embeddings);
}

// The same scaling as transformers 5 writes it: everything inside rope_parameters.
TEST(HfConfig, Llama3ScalingTransformers5) {
  const HfConfig c = parse_hf_config(
      llama_cfg(R"(,"rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,)"
                R"("low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192})"),
      "l3t5.json");
  EXPECT_EQ(c.hp.rope_scaling, RopeScaling::Llama3);
  EXPECT_EQ(c.hp.rope_theta, 500000.0f);
  EXPECT_TRUE(c.has_rope_theta);
  EXPECT_EQ(c.hp.rope_factor, 8.0f);
  EXPECT_EQ(c.hp.rope_orig_ctx, 8192);
}

TEST(HfConfig, LinearScalingAndDefaults) {
  const HfConfig c = parse_hf_config(llama_cfg(R"(,"rope_scaling":{"type":"linear","factor":2.0})"), "lin.json");
  EXPECT_EQ(c.hp.rope_scaling, RopeScaling::Linear);
  EXPECT_EQ(c.hp.rope_factor, 2.0f);
  EXPECT_EQ(c.hp.rope_theta, 10000.0f);  // default
  EXPECT_FALSE(c.has_rope_theta);
  EXPECT_EQ(c.hp.n_head_kv, 8);    // no num_key_value_heads: MHA
  EXPECT_EQ(c.hp.head_dim, 32);
  EXPECT_EQ(c.hp.n_ctx_train, 2048);
  EXPECT_EQ(c.hp.bos_id, -1);
  // "rope_scaling": null is no scaling.
  EXPECT_EQ(parse_hf_config(llama_cfg(R"(,"rope_scaling":null)"), "n.json").hp.rope_scaling, RopeScaling::None);
}

TEST(HfConfig, RefusesBadConfigs) {
  expect_refused("{\"model_type\": ", "invalid JSON");
  expect_refused("[]", "not a JSON object");
  expect_refused(R"({"model_type":"gpt2","vocab_size":5})", "model_type 'gpt2'");
  expect_refused(R"({"architectures":["FalconForCausalLM"]})", "not supported");
  expect_refused(llama_cfg(R"(,"rope_scaling":{"type":"dynamic","factor":2.0})"), "rope scaling 'dynamic'");
  expect_refused(llama_cfg(R"(,"rope_scaling":{"rope_type":"llama3","factor":8.0,"high_freq_factor":4.0,)"
                           R"("original_max_position_embeddings":8192})"),
                 "needs 'low_freq_factor'");
  expect_refused(llama_cfg(R"(,"rope_scaling":{"type":"linear"})"), "needs 'factor'");
  expect_refused(llama_cfg(R"(,"rope_scaling":"yes")"), "must be an object");
  expect_refused(R"({"model_type":"llama","vocab_size":1000,"hidden_size":"256"})", "'hidden_size' must be an integer");
  expect_refused(R"({"model_type":"llama","vocab_size":1000})", "missing 'hidden_size'");
  expect_refused(llama_cfg(R"(,"attention_bias":true)"), "attention_bias");
  expect_refused(llama_cfg(R"(,"hidden_act":"gelu")"), "hidden_act 'gelu'");
  expect_refused(llama_cfg(R"(,"hidden_size":250)"), "not a multiple of num_attention_heads");
  expect_refused(llama_cfg(R"(,"eos_token_id":1000)"), "eos_token_id 1000 is outside");
  expect_refused(llama_cfg(R"(,"bos_token_id":-3)"), "negative token id");
  expect_refused(llama_cfg(R"(,"num_key_value_heads":3)"), "n_head_kv");
  expect_refused(llama_cfg(R"(,"rms_norm_eps":0)"), "rms_eps");
  expect_refused(llama_cfg(R"(,"num_hidden_layers":99999999999)"), "absurdly large");
  EXPECT_THROW(read_hf_config("/nonexistent/folder"), Error);
}
