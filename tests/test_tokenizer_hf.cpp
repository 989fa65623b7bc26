// The Hugging Face path: models/ref-llama-code/tokenizer.json must give the prompt ids its
// reference.json was made with, the same ids as the gpt-2 GGUF vocabulary, and the same 485,363
// tokens on the 1 MB validation text; variants of the file (merge forms, pre-tokenizer spellings,
// tokenizer_config flags, added tokens) behave as HF does; broken files give clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

using namespace primal;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::string& ref_dir() {
  static const std::string d = test::data_path("models/ref-llama-code");
  return d;
}
const Tokenizer& hf() {
  static const auto t = Tokenizer::from_hf_dir(ref_dir());
  return *t;
}
const Tokenizer& gguf_gpt2() {
  static const auto t = Tokenizer::open(test::data_path("vocab/ggml-vocab-gpt-2.gguf"));
  return *t;
}

std::vector<std::string> gpt2_inputs() {
  const std::string raw = slurp(test::data_path("vocab/ggml-vocab-gpt-2.gguf.inp"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> v;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(sep, pos);
    if (next == std::string::npos) break;
    v.push_back(raw.substr(pos, next - pos));
    pos = next + sep.size();
  }
  return v;
}

// A copy of the reference tokenizer folder with tokenizer.json (and tokenizer_config.json) edited.
std::string variant(const std::string& name, const std::function<void(json&)>& edit,
                    const json& config = json()) {
  namespace fs = std::filesystem;
  const std::string dir = test::temp_dir() + "/" + name;
  fs::create_directories(dir);
  json j = json::parse(slurp(ref_dir() + "/tokenizer.json"));
  edit(j);
  std::ofstream(dir + "/tokenizer.json") << j.dump();
  if (!config.is_null()) std::ofstream(dir + "/tokenizer_config.json") << config.dump();
  return dir;
}

TEST(TokenizerHf, ReferencePromptIds) {
  const json ref = json::parse(slurp(ref_dir() + "/reference.json"));
  ASSERT_EQ(ref.at("reference_outputs").size(), 3u);
  for (const json& r : ref.at("reference_outputs")) {
    const std::string prompt = r.at("prompt").get<std::string>();
    const Ids want = r.at("prompt_ids").get<Ids>();
    // tokenizer_config.json sets no add_bos_token and the post-processor adds nothing
    EXPECT_EQ(hf().encode(prompt, true, false), want) << prompt;
    EXPECT_EQ(hf().decode(want), prompt);
  }
  EXPECT_FALSE(hf().add_bos());
  EXPECT_EQ(hf().bos_id(), 50256);
  EXPECT_EQ(hf().eos_id(), 50256);
  EXPECT_TRUE(hf().is_eog(50256));
  EXPECT_TRUE(hf().is_special(50256));
}

TEST(TokenizerHf, SameIdsAsTheGpt2GgufOnItsVectors) {
  const std::vector<std::string> inputs = gpt2_inputs();
  ASSERT_EQ(inputs.size(), 46u);
  for (const std::string& s : inputs) {
    EXPECT_EQ(hf().encode(s, false, false), gguf_gpt2().encode(s, false, false)) << s;
    EXPECT_EQ(hf().encode(s, false, true), gguf_gpt2().encode(s, false, true)) << s;
  }
  EXPECT_EQ(hf().encode("x<|endoftext|>y", false, true), (Ids{87, 50256, 88}));
}

TEST(TokenizerHf, WholeValidationFileMatchesTheReferenceCount) {
  const json ref = json::parse(slurp(ref_dir() + "/reference.json"));
  const std::string text = slurp(test::data_path("text/python-stdlib-valid.txt"));
  const Ids ids = hf().encode(text, false, false);
  EXPECT_EQ(ids.size(), ref.at("valid_tokens_whole_file").get<size_t>());
  EXPECT_EQ(ids, gguf_gpt2().encode(text, false, false));
  // the converted model's GGUF carries the same vocabulary
  const auto q8 = Tokenizer::open(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"));
  EXPECT_EQ(ids, q8->encode(text, false, false));
}

TEST(TokenizerHf, MergesAsStringsAndPreTokenizerAsSplit) {
  // merges written "a b" instead of ["a", "b"]
  const std::string strings = variant("merge-strings", [](json& j) {
    for (json& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  });
  // the GPT-2 regex as an explicit Split, then a ByteLevel that only maps bytes
  const std::string split = variant("split", [](json& j) {
    j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"},
       "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})");
  });
  const auto a = Tokenizer::from_hf_dir(strings);
  const auto b = Tokenizer::from_hf_dir(split);
  for (const std::string& s : gpt2_inputs()) {
    const Ids want = hf().encode(s, false, false);
    EXPECT_EQ(a->encode(s, false, false), want) << s;
    EXPECT_EQ(b->encode(s, false, false), want) << s;
  }
  // Digits(individual_digits) splits every digit off before BPE
  const std::string digits = variant("digits", [](json& j) {
    j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Digits", "individual_digits": true},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]})");
  });
  EXPECT_EQ(Tokenizer::from_hf_dir(digits)->encode("x 2024", false, false), (Ids{87, 220, 17, 15, 17, 19}));
}

TEST(TokenizerHf, ConfigFlagsAndAddedTokens) {
  const std::string dir = variant(
      "bos-and-added",
      [](json& j) {
        j["added_tokens"].push_back({{"id", 50257}, {"content", "<|user|>"}, {"special", false},
                                     {"lstrip", false}, {"rstrip", true}, {"normalized", false},
                                     {"single_word", false}});
        j["added_tokens"].push_back({{"id", 50258}, {"content", "<|ctl|>"}, {"special", true},
                                     {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                                     {"single_word", false}});
      },
      json{{"bos_token", {{"content", "<|endoftext|>"}}}, {"eos_token", "<|ctl|>"}, {"add_bos_token", true},
           {"add_eos_token", true}});
  const auto t = Tokenizer::from_hf_dir(dir);
  EXPECT_EQ(t->n_vocab(), 50259);
  EXPECT_TRUE(t->add_bos());
  EXPECT_TRUE(t->add_eos());
  EXPECT_EQ(t->eos_id(), 50258);
  // a non-special added token is matched even without parse_special, and its rstrip eats the spaces
  EXPECT_EQ(t->encode("a<|user|>  b", true, false), (Ids{50256, 64, 50257, 65, 50258}));
  // a special one only with parse_special
  EXPECT_EQ(t->encode("a<|ctl|>", false, true), (Ids{64, 50258}));
  const Ids plain = t->encode("a<|ctl|>", false, false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50258), 0);
}

TEST(TokenizerHf, TemplatePostProcessorAddsBos) {
  const std::string dir = variant("template", [](json& j) {
    j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {}})");
  });
  const auto t = Tokenizer::from_hf_dir(dir);  // no tokenizer_config.json in this copy
  EXPECT_TRUE(t->add_bos());
  EXPECT_FALSE(t->add_eos());
  EXPECT_EQ(t->encode("Hello", true, false), (Ids{50256, 15496}));
}

void expect_hf_error(const std::string& name, const std::function<void(json&)>& edit, const std::string& what) {
  const std::string dir = variant(name, edit);
  try {
    Tokenizer::from_hf_dir(dir);
    ADD_FAILURE() << name << ": expected an error mentioning '" << what << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

TEST(TokenizerHf, UnsupportedOrBrokenFilesAreClearErrors) {
  expect_hf_error("wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, "WordPiece");
  expect_hf_error("metaspace", [](json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }, "Metaspace");
  expect_hf_error("no-merges", [](json& j) { j["model"].erase("merges"); }, "merges");
  expect_hf_error("bad-merge", [](json& j) { j["model"]["merges"][0] = json::array({"a"}); }, "merge 0");
  expect_hf_error("bad-id", [](json& j) { j["model"]["vocab"]["!"] = -4; }, "out of range");
  expect_hf_error("dup", [](json& j) { j["added_tokens"][0]["content"] = "Hello"; }, "duplicate");
  expect_hf_error("bad-regex",
                  [](json& j) {
                    j["pre_tokenizer"] = json::parse(R"({"type": "Split", "pattern": {"Regex": "(x"},
                      "behavior": "Isolated", "invert": false})");
                  },
                  "regex");
  expect_hf_error("vocab-type", [](json& j) { j["model"]["vocab"] = {{"a", "not a number"}}; }, "unexpected structure");
  // not JSON at all
  const std::string dir = test::temp_dir() + "/not-json";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/tokenizer.json") << "{\"model\": ";
  try {
    Tokenizer::from_hf_dir(dir);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
}

}  // namespace
