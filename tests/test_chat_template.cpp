// Chat formats: detection from real template texts' markers and the exact prompt strings of each
// format (written out by hand from the model cards: Qwen2 ChatML, Meta's Llama 2 and Llama 3).
#include <gtest/gtest.h>

#include "core/error.h"
#include "infer/chat_template.h"

using namespace primal;

namespace {
const std::vector<ChatMessage> kConv = {
    {"system", "You are terse."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", " 2+2? "}};
}

TEST(ChatTemplate, DetectsFormatsFromTemplateMarkers) {
  // Excerpts of the real templates (Qwen2-Instruct, Llama-2-chat, Llama-3-Instruct).
  const std::string qwen =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
      "'<|im_end|>' + '\\n'}}{% endfor %}";
  const std::string llama2 =
      "{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + messages[0]['content'] "
      "%}{% endif %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}";
  const std::string llama3 =
      "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
      "message['content'] | trim + '<|eot_id|>' %}";
  EXPECT_EQ(detect_chat_format(qwen, "llama", false, false), ChatFormat::ChatML);
  EXPECT_EQ(detect_chat_format(llama2, "llama", false, true), ChatFormat::Llama2);
  EXPECT_EQ(detect_chat_format(llama3, "llama", true, false), ChatFormat::Llama3);
  EXPECT_THROW(detect_chat_format("{{ messages }}", "llama", false, false), Error);
  // Without a template: from the model type and vocabulary.
  EXPECT_EQ(detect_chat_format("", "qwen2", false, false), ChatFormat::ChatML);
  EXPECT_EQ(detect_chat_format("", "llama", true, false), ChatFormat::Llama3);
  EXPECT_EQ(detect_chat_format("", "llama", false, true), ChatFormat::Llama2);
  EXPECT_EQ(detect_chat_format("", "llama", false, false), ChatFormat::ChatML);
}

TEST(ChatTemplate, ChatMLPrompt) {
  EXPECT_EQ(format_chat(ChatFormat::ChatML, kConv, true),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n 2+2? <|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(format_chat(ChatFormat::ChatML, {{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");
  EXPECT_EQ(chat_turn_end(ChatFormat::ChatML), "<|im_end|>");
}

TEST(ChatTemplate, Llama3Prompt) {
  EXPECT_EQ(format_chat(ChatFormat::Llama3, kConv, true),
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(chat_turn_end(ChatFormat::Llama3), "<|eot_id|>");
}

TEST(ChatTemplate, Llama2Prompt) {
  EXPECT_EQ(format_chat(ChatFormat::Llama2, kConv, true),
            "[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] 2+2? [/INST]");
  EXPECT_EQ(format_chat(ChatFormat::Llama2, {{"user", "a"}}, true), "[INST] a [/INST]");
  EXPECT_THROW(format_chat(ChatFormat::Llama2, {{"robot", "a"}}, true), Error);
}
