// A model with what the CLI needs beside the weights: its tokenizer and chat template, found the
// same way for a GGUF file (tokenizer.ggml.*, tokenizer.chat_template) and an HF checkpoint folder
// (tokenizer.json, tokenizer_config.json's chat_template or chat_template.jinja).
#pragma once
#include <memory>
#include <string>

#include "infer/chat_template.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace primal {

struct LoadedModel {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string chat_template;  // the Jinja text; empty when the model has none

  static LoadedModel open(const std::string& path);
  // The chat format for this model (see detect_chat_format).
  ChatFormat chat_format() const;
  // "llama, 8 layers, 31.6M parameters, Q8_0" for the log.
  std::string describe() const;
};

}  // namespace primal
