#include "infer/chat_template.h"

#include "core/error.h"

namespace primal {
namespace {

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

std::string trim(const std::string& s) {
  const char* ws = " \t\n\r";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

}  // namespace

ChatFormat detect_chat_format(const std::string& tmpl, const std::string& arch, bool llama3_headers, bool llama2) {
  if (!tmpl.empty()) {
    if (contains(tmpl, "<|im_start|>")) return ChatFormat::ChatML;
    if (contains(tmpl, "<|start_header_id|>") && contains(tmpl, "<|end_header_id|>")) return ChatFormat::Llama3;
    if (contains(tmpl, "[INST]")) return ChatFormat::Llama2;
    fail("the model's chat template is not one of the supported formats (ChatML, Llama 2, Llama 3)");
  }
  if (arch == "qwen2") return ChatFormat::ChatML;
  if (llama3_headers) return ChatFormat::Llama3;
  if (llama2) return ChatFormat::Llama2;
  return ChatFormat::ChatML;
}

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Llama2: return "llama2";
    case ChatFormat::Llama3: return "llama3";
  }
  return "?";
}

std::string format_chat(ChatFormat f, const std::vector<ChatMessage>& msgs, bool add_generation_prompt) {
  for (const auto& m : msgs)
    PRIMAL_CHECK(m.role == "system" || m.role == "user" || m.role == "assistant", "chat: unknown role '{}'", m.role);
  std::string s;
  switch (f) {
    case ChatFormat::ChatML:
      for (const auto& m : msgs)
        s.append("<|im_start|>").append(m.role).append("\n").append(m.content).append("<|im_end|>\n");
      if (add_generation_prompt) s += "<|im_start|>assistant\n";
      break;
    case ChatFormat::Llama3:
      // Meta's template trims every message.
      for (const auto& m : msgs)
        s.append("<|start_header_id|>")
            .append(m.role)
            .append("<|end_header_id|>\n\n")
            .append(trim(m.content))
            .append("<|eot_id|>");
      if (add_generation_prompt) s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case ChatFormat::Llama2: {
      // Meta's format: the system prompt sits inside the first [INST]; every later turn starts
      // with <s>; an answer ends with </s>. (The generation prompt is the open "[/INST]".)
      bool in_turn = false;
      for (const auto& m : msgs) {
        if (!in_turn) {
          s.append(s.empty() ? "[INST] " : "<s>[INST] ");
          in_turn = true;
        }
        if (m.role == "system") {
          s.append("<<SYS>>\n").append(trim(m.content)).append("\n<</SYS>>\n\n");
        } else if (m.role == "user") {
          s.append(trim(m.content)).append(" [/INST]");
        } else {
          s.append(" ").append(trim(m.content)).append(" </s>");
          in_turn = false;
        }
      }
      break;
    }
  }
  return s;
}

std::string chat_turn_end(ChatFormat f) {
  switch (f) {
    case ChatFormat::ChatML: return "<|im_end|>";
    case ChatFormat::Llama2: return "</s>";
    case ChatFormat::Llama3: return "<|eot_id|>";
  }
  return "";
}

}  // namespace primal
