// Hyper-parameters of a Llama-family model (llama, qwen2, mistral), from GGUF metadata or an HF
// config.json, in one struct.
#pragma once
#include <cstdint>
#include <string>

namespace primal {

class GgufFile;

enum class RopeScaling { None, Linear, Llama3, Yarn };

struct HParams {
  std::string arch = "llama";  // "llama" (Llama 2/3, Mistral) or "qwen2"
  std::string name;            // general.name, informational
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;     // trained context length
  int64_t n_embd = 0;          // C
  int64_t n_layer = 0;         // L
  int64_t n_head = 0;          // NH (query heads)
  int64_t n_head_kv = 0;       // KVH (GQA when < n_head)
  int64_t head_dim = 0;        // HS; usually n_embd / n_head
  int64_t n_ff = 0;            // FFN hidden size
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;        // rotated dimensions per head (n_rot), usually head_dim
  // RoPE layout: false = pairs (2i, 2i+1) as llama.cpp's llama GGUFs (Q/K rows permuted by the
  // converter); true = halves (i, i + d/2) as HF checkpoints and qwen2 GGUFs ("NeoX").
  bool rope_neox = false;
  RopeScaling rope_scaling = RopeScaling::None;
  float rope_factor = 1.0f;             // linear / llama3 / yarn factor
  float rope_low_freq_factor = 1.0f;    // llama3
  float rope_high_freq_factor = 4.0f;   // llama3
  int64_t rope_orig_ctx = 0;            // llama3 / yarn original_max_position_embeddings
  bool tied_embeddings = false;         // head reuses token_embd.weight
  bool qkv_bias = false;                // qwen2: q/k/v projections have biases
  int32_t bos_id = -1;
  int32_t eos_id = -1;

  int64_t n_embd_kv() const { return n_head_kv * head_dim; }  // width of K and V
  void validate(const std::string& source) const;             // throws naming the source
};

// From `{arch}.*` keys; tied_embeddings / qkv_bias are set by the model source from its tensors.
HParams hparams_from_gguf(const GgufFile& f);

}  // namespace primal
