// The tokenizer.ggml.* metadata of an HF checkpoint's byte-level BPE tokenizer (tokenizer.json +
// tokenizer_config.json + config.json), written as llama.cpp's convert_hf_to_gguf.py writes it, so
// that llama.cpp (and primal's own GGUF tokenizer) load the converted file. Read with
// nlohmann-json directly; no tokenizer object is built.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "io/gguf.h"

namespace primal {

struct HfConfig;

// tokenizer.ggml.pre for a tokenizer.json "pre_tokenizer" object (given as JSON text):
//   ByteLevel with its own regex (GPT-2's)                      -> "gpt-2"
//   Sequence[Split(Llama 3 / cl100k regex), ByteLevel(no regex)] -> "llama-bpe"
//   Sequence[Split(Qwen2 regex), ByteLevel(no regex)]            -> "qwen2"
// and "" for anything else (the caller refuses it unless the user names the pre-tokenizer).
std::string detect_bpe_pre(const std::string& pre_tokenizer_json);

// Metadata in llama.cpp's order: model, pre, tokens, token_type, merges, special token ids,
// add_bos/add_eos flags, chat template. `pre` overrides the detected pre-tokenizer when not
// empty. Throws Error naming the file for tokenizers that are not byte-level BPE, unknown
// pre-tokenizers, and ids outside the vocabulary.
std::vector<std::pair<std::string, GgufValue>> hf_tokenizer_metadata(const std::string& dir, const HfConfig& cfg,
                                                                     const std::string& pre = "");

}  // namespace primal
