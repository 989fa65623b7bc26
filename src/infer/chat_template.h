// Chat prompt formats. A model's Jinja template (GGUF tokenizer.chat_template, HF
// tokenizer_config.json chat_template) is not interpreted; it is recognized by its markers, as
// llama.cpp's llm_chat_detect_template does, and one of the known formats is written out:
//   ChatML  <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n        (Qwen2, many)
//   Llama 2 [INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] answer </s><s>[INST] user [/INST]
//   Llama 3 <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
//           <|start_header_id|>assistant<|end_header_id|>\n\n
// The BOS at the very start comes from the tokenizer (add_bos), not from the text.
#pragma once
#include <string>
#include <vector>

namespace primal {

enum class ChatFormat { ChatML, Llama2, Llama3 };

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// From the template text when there is one; otherwise from the architecture and vocabulary
// (qwen2 -> ChatML; a vocabulary with <|start_header_id|> -> Llama 3; a Llama 2 style
// SentencePiece vocabulary with BOS "<s>" -> Llama 2); ChatML when nothing tells (llama.cpp's
// default). Throws for a template that has markers of none of the known formats.
ChatFormat detect_chat_format(const std::string& template_text, const std::string& arch,
                              bool vocab_has_llama3_headers, bool vocab_is_llama2);
const char* chat_format_name(ChatFormat f);

// The prompt text for the conversation; with add_generation_prompt the assistant's turn is opened.
std::string format_chat(ChatFormat f, const std::vector<ChatMessage>& messages, bool add_generation_prompt);

// The text that ends an assistant turn in this format (also an EOG token in a proper vocabulary;
// used to stop when the vocabulary lacks it as a special token).
std::string chat_turn_end(ChatFormat f);

}  // namespace primal
