#include "io/hf_names.h"

#include <cstdint>
#include <string_view>

namespace primal {
namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Per-block HF suffix -> llama.cpp suffix.
struct BlockName {
  const char* hf;
  const char* gguf;
};
constexpr BlockName kBlock[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

}  // namespace

std::optional<GgufName> gguf_name_for_hf(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return GgufName{"token_embd.weight", -1};
  if (hf == "model.norm.weight") return GgufName{"output_norm.weight", -1};
  if (hf == "lm_head.weight") return GgufName{"output.weight", -1};
  constexpr std::string_view prefix = "model.layers.";
  std::string_view s(hf);
  if (s.substr(0, prefix.size()) != prefix) return std::nullopt;
  s.remove_prefix(prefix.size());
  // The block index: decimal digits, no sign, no leading zeros, bounded.
  size_t n = 0;
  int64_t layer = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9' && n < 6) layer = layer * 10 + (s[n++] - '0');
  if (n == 0 || n >= s.size() || s[n] != '.' || (n > 1 && s[0] == '0')) return std::nullopt;
  s.remove_prefix(n + 1);
  for (const auto& b : kBlock)
    if (s == b.hf) return GgufName{"blk." + std::to_string(layer) + "." + b.gguf, layer};
  return std::nullopt;
}

bool hf_tensor_is_ignored(const std::string& hf) { return ends_with(hf, "rotary_emb.inv_freq"); }

}  // namespace primal
