// Tensor names of Hugging Face Llama-family checkpoints and their llama.cpp (GGUF) equivalents.
#pragma once
#include <optional>
#include <string>

namespace primal {

struct GgufName {
  std::string name;  // "blk.3.attn_q.weight", "token_embd.weight", ...
  int64_t layer;     // block index, -1 for tensors outside the blocks
};

// "model.layers.3.self_attn.q_proj.weight" -> {"blk.3.attn_q.weight", 3}; nullopt for names that
// are not weights of the llama / mistral / qwen2 layout.
std::optional<GgufName> gguf_name_for_hf(const std::string& hf_name);

// Buffers that HF checkpoints sometimes save but that are not weights (rotary inv_freq tables):
// skipped, as llama.cpp's converter does.
bool hf_tensor_is_ignored(const std::string& hf_name);

}  // namespace primal
