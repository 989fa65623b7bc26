// Test helpers for HF checkpoints: write safetensors files byte by byte (so tests control every
// header field), and a tiny hand-made Llama-family checkpoint folder (config, tokenizer, weights)
// for the cases the real reference model does not cover (qwen2 biases, tied head, rope scalings).
#pragma once
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/half.h"

namespace primal::test {

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A safetensors file from a raw JSON header and raw data bytes: u64 length, header, data.
inline std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

struct StTensor {
  std::string name;
  std::string dtype;  // "BF16", "F32", ...
  std::vector<int64_t> shape;
  std::string bytes;
};

// A well-formed safetensors file holding `ts` back to back, in the given order.
inline std::string safetensors_bytes(const std::vector<StTensor>& ts) {
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}", data;
  for (const auto& t : ts) {
    header += ",\"" + t.name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":[";
    for (size_t k = 0; k < t.shape.size(); ++k) header += (k ? "," : "") + std::to_string(t.shape[k]);
    header += "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + t.bytes.size()) + "]}";
    data += t.bytes;
  }
  header += "}";
  while ((8 + header.size()) % 8) header += ' ';  // as the safetensors library pads
  return safetensors_bytes(header, data);
}

// Deterministic pseudo-random values in [-scale, scale] (an LCG: reproducible on every platform).
inline std::vector<float> lcg_values(size_t n, uint32_t seed, float scale) {
  std::vector<float> v(n);
  uint32_t s = seed * 2654435761u + 12345u;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = scale * (float(s >> 8) / float(1 << 24) * 2.0f - 1.0f);
  }
  return v;
}

inline std::string bf16_bytes(const std::vector<float>& v) {
  std::string out(v.size() * 2, '\0');
  for (size_t k = 0; k < v.size(); ++k) {
    const uint16_t h = f32_to_bf16(v[k]);
    std::memcpy(out.data() + 2 * k, &h, 2);
  }
  return out;
}

struct TinyModel {
  std::string model_type = "llama";  // "llama", "mistral", "qwen2"
  bool tied = false;
  std::string rope_json;             // extra config text, e.g. ",\"rope_scaling\":{...}"
  std::string pre_regex;             // Split regex (JSON-escaped); empty: plain GPT-2 ByteLevel
  bool drop_bias = false;            // qwen2 without q/k/v biases (an error case)
  std::string extra_tensor;          // name of an extra tensor to add (an error case)
  // Dimensions: C = 64, 4 heads of 16, 2 kv heads, FFN 96, 2 layers, vocab 16.
  static constexpr int64_t C = 64, NH = 4, KVH = 2, HS = 16, F = 96, L = 2, V = 16;
};

// Writes config.json, tokenizer.json, tokenizer_config.json and model.safetensors into `dir`.
inline void write_tiny_model(const std::string& dir, const TinyModel& m) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  using T = TinyModel;
  const bool qwen = m.model_type == "qwen2";
  write_file(dir + "/config.json",
             "{\"architectures\":[\"X\"],\"model_type\":\"" + m.model_type +
                 "\",\"vocab_size\":16,\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                 "\"num_key_value_heads\":2,\"intermediate_size\":96,\"max_position_embeddings\":256,"
                 "\"rms_norm_eps\":1e-06,\"rope_theta\":500000.0,\"bos_token_id\":14,\"eos_token_id\":15,"
                 "\"hidden_act\":\"silu\",\"tie_word_embeddings\":" +
                 std::string(m.tied ? "true" : "false") + m.rope_json + "}");
  std::string pre = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}";
  if (!m.pre_regex.empty())
    pre = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"" + m.pre_regex +
          "\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
          "\"trim_offsets\":true,\"use_regex\":false}]}";
  write_file(dir + "/tokenizer.json",
             "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":14,\"content\":\"<s>\",\"special\":true},"
             "{\"id\":15,\"content\":\"<|end|>\",\"special\":true}],\"normalizer\":null,\"pre_tokenizer\":" +
                 pre +
                 ",\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
                 "\"byte_fallback\":false,\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"d\":3,\"\xc4\xa0\":4,\"ab\":5,"
                 "\"cd\":6,\"\xc4\xa0" "a\":7,\"abcd\":8,\"e\":9,\"f\":10,\"g\":11,\"h\":12},"
                 "\"merges\":[[\"a\",\"b\"],[\"c\",\"d\"],[\"\xc4\xa0\",\"a\"],[\"ab\",\"cd\"]]}}");
  write_file(dir + "/tokenizer_config.json",
             "{\"bos_token\":\"<s>\",\"eos_token\":\"<|end|>\",\"add_bos_token\":true,"
             "\"chat_template\":\"{% for m in messages %}{{ m.content }}{% endfor %}\"}");

  std::vector<StTensor> ts;
  uint32_t seed = 1;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale) {
    size_t n = 1;
    for (auto d : shape) n *= size_t(d);
    ts.push_back({name, "BF16", shape, bf16_bytes(lcg_values(n, seed++, scale))});
  };
  add("model.embed_tokens.weight", {T::V, T::C}, 1.0f);
  for (int l = 0; l < T::L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {T::C}, 1.0f);
    add(p + "self_attn.q_proj.weight", {T::NH * T::HS, T::C}, 0.1f);
    add(p + "self_attn.k_proj.weight", {T::KVH * T::HS, T::C}, 0.1f);
    add(p + "self_attn.v_proj.weight", {T::KVH * T::HS, T::C}, 0.1f);
    if (qwen && !m.drop_bias) {
      add(p + "self_attn.q_proj.bias", {T::NH * T::HS}, 0.5f);
      add(p + "self_attn.k_proj.bias", {T::KVH * T::HS}, 0.5f);
      add(p + "self_attn.v_proj.bias", {T::KVH * T::HS}, 0.5f);
    }
    add(p + "self_attn.o_proj.weight", {T::C, T::NH * T::HS}, 0.1f);
    add(p + "post_attention_layernorm.weight", {T::C}, 1.0f);
    add(p + "mlp.gate_proj.weight", {T::F, T::C}, 0.1f);
    add(p + "mlp.up_proj.weight", {T::F, T::C}, 0.1f);
    add(p + "mlp.down_proj.weight", {T::C, T::F}, 0.1f);
  }
  add("model.norm.weight", {T::C}, 1.0f);
  if (!m.tied) add("lm_head.weight", {T::V, T::C}, 0.1f);
  if (!m.extra_tensor.empty()) add(m.extra_tensor, {4}, 1.0f);
  write_file(dir + "/model.safetensors", safetensors_bytes(ts));
}

}  // namespace primal::test
