// Hugging Face config.json -> HParams, for the Llama family: model_type "llama", "mistral" (both
// arch "llama") and "qwen2" (q/k/v biases). Reads transformers 4 configs (top-level rope_theta,
// "rope_scaling") and transformers 5 configs ("rope_parameters" with rope_theta and rope_type).
// HF checkpoints keep Q/K rows unpermuted, so rope_neox is true for every HF source.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/hparams.h"

namespace primal {

struct HfConfig {
  HParams hp;
  std::string model_type;         // as written: "llama", "mistral", "qwen2"
  std::string architecture;       // architectures[0], e.g. "LlamaForCausalLM" (may be empty)
  std::string rope_type = "default";  // "default", "linear", "llama3", "yarn"
  std::vector<int32_t> bos_ids;   // bos_token_id as int or list (hp.bos_id is the first)
  std::vector<int32_t> eos_ids;   // eos_token_id as int or list (hp.eos_id is the first)
  int32_t pad_id = -1;            // pad_token_id, -1 when null or absent
  bool has_head_dim = false;      // head_dim given explicitly (llama.cpp then writes key_length)
  bool has_rope_theta = false;    // rope theta given explicitly (else the default 10000)
};

// Parse config.json text; `source` names the file in errors. Throws Error for invalid JSON,
// missing or mistyped fields, unsupported model types or rope scalings, and bad hyper-parameters.
HfConfig parse_hf_config(const std::string& json_text, const std::string& source);
// Read DIR/config.json (or the file itself when `path` is a file).
HfConfig read_hf_config(const std::string& path);

}  // namespace primal
