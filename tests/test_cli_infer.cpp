// The `run`, `chat` and `ppl` subcommands, run as a user runs them, on the real reference model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "infer/chat_template.h"
#include "infer/perplexity.h"
#include "model/forward.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"

using namespace primal;

namespace {

const std::string kDir = "models/ref-llama-code";

nlohmann::json reference() {
  std::ifstream f(test::data_path(kDir + "/reference.json"));
  return nlohmann::json::parse(f);
}

std::string write_temp(const std::string& name, const std::string& text) {
  const std::string p = test::temp_dir() + "/" + name;
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

}  // namespace

// `run --temp 0` prints the prompt, then the greedy continuation: for both the HF checkpoint and
// the Q8_0 GGUF that is exactly reference.json's greedy text (32 tokens).
TEST(CliRun, GreedyTextEqualsTheReference) {
  const auto ref = reference();
  for (const char* model : {"", "/ref-llama-code-Q8_0.gguf"}) {
    for (size_t k : {size_t(1), size_t(2)}) {
      const auto& r = ref.at("reference_outputs")[k];
      const std::string prompt = r.at("prompt").get<std::string>();
      const std::string pf = write_temp("prompt" + std::to_string(k) + ".txt", prompt);
      const auto res = test::run_primal("run -m " + test::data_path(kDir + model) + " -f " + pf + " -n 32 --temp 0");
      ASSERT_EQ(res.exit_code, 0) << res.err;
      EXPECT_EQ(res.out, prompt + r.at("greedy32_text").get<std::string>() + "\n") << model;
      EXPECT_NE(res.err.find("prompt eval time"), std::string::npos) << res.err;
      EXPECT_NE(res.err.find("tokens per second"), std::string::npos) << res.err;
    }
  }
}

TEST(CliRun, SeededSamplingIsReproducible) {
  const std::string m = test::data_path(kDir + "/ref-llama-code-Q8_0.gguf");
  const std::string args = "run -m " + m + " -p 'def main():' -n 24 --temp 1.0 --top-k 50 --top-p 0.9 --seed ";
  const auto a = test::run_primal(args + "7"), b = test::run_primal(args + "7"), c = test::run_primal(args + "8");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_EQ(a.out.rfind("def main():", 0), 0u);
}

// --dump-dir writes every named intermediate of the prompt pass as .npy; the last layer's output
// holds the prompt's 9 tokens x 256 features after a 128-byte header.
TEST(CliRun, DumpWritesEveryIntermediate) {
  const std::string m = test::data_path(kDir + "/ref-llama-code-Q8_0.gguf");
  const std::string dir = test::temp_dir() + "/dump";
  const std::string pf = write_temp("dump_prompt.txt", "import os\nimport sys\n\n\nclass ");
  const auto res = test::run_primal("run -m " + m + " -f " + pf + " -n 1 --temp 0 --dump-summary --dump-dir " + dir);
  ASSERT_EQ(res.exit_code, 0) << res.err;
  size_t n_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) n_files += e.path().extension() == ".npy";
  EXPECT_EQ(n_files, 1u + 13u * 8u + 2u);
  EXPECT_EQ(std::filesystem::file_size(dir + "/l_out-7.npy"), 128u + 9u * 256u * 4u);
  EXPECT_EQ(std::filesystem::file_size(dir + "/result_output.npy"), 128u + 50257u * 4u);
  EXPECT_NE(res.err.find("l_out-7"), std::string::npos);
  EXPECT_NE(res.err.find("[9 x 256]"), std::string::npos) << res.err;
}

TEST(CliRun, ClearErrors) {
  const std::string m = test::data_path(kDir + "/ref-llama-code-Q8_0.gguf");
  auto r = test::run_primal("run -m /no/such/model.gguf -p hi -n 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("primal: error: /no/such/model.gguf"), std::string::npos) << r.err;
  r = test::run_primal("run -m " + m + " -p 'import os' -n 40 -c 16");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("exceed the context of 16 tokens"), std::string::npos) << r.err;
  r = test::run_primal("run -m " + m + " -p hi -n 4 --top-p 0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("top-p"), std::string::npos) << r.err;
}

// One chat turn with -p: the reply is the greedy continuation of the ChatML prompt (the model has
// no chat template), cut where the turn-end marker would start.
TEST(CliChat, OneTurnIsTheGreedyContinuationOfTheFormattedPrompt) {
  const std::string m = test::data_path(kDir + "/ref-llama-code-Q8_0.gguf");
  const auto res = test::run_primal("chat -m " + m + " -p 'write a function' -n 12 --temp 0");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_NE(res.err.find("chat format chatml"), std::string::npos) << res.err;

  auto model = Model::open(m);
  auto tok = Tokenizer::from_gguf(*model->source->gguf());
  const std::vector<int32_t> ids =
      tok->encode(format_chat(ChatFormat::ChatML, {{"user", "write a function"}}, true), false, true);
  KVCache cache = make_kv_cache(model->w, 256);
  std::vector<float> logits(static_cast<size_t>(model->hparams().n_vocab));
  llama_forward(model->w, cache, ids.data(), int64_t(ids.size()), 1, logits.data());
  std::string text;
  for (int i = 0; i < 12; ++i) {
    const int32_t t = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (tok->is_eog(t)) break;
    text += tok->token_to_piece(t);
    llama_forward(model->w, cache, &t, 1, 1, logits.data());
  }
  if (const size_t at = text.find("<|im_end|>"); at != std::string::npos) text.resize(at);
  EXPECT_EQ(res.out, text + "\n");
}

// `ppl` on a slice (CI time): the CLI's number is the library's llama.cpp-definition perplexity of
// the same tokens, in llama.cpp's output format; the HF checkpoint and the Q8_0 GGUF agree to
// quantization noise (llama.cpp's full-file figures: HF 6.4826, Q8_0 6.4844, Q4_K_M 6.5427).
TEST(CliPpl, SliceMatchesTheLibraryAndTheFormats) {
  const std::string text = test::data_path("text/python-stdlib-valid.txt");
  const std::regex final_re(R"(Final estimate: PPL = ([0-9]+\.[0-9]{4}) \+/- ([0-9]+\.[0-9]{5})\n$)");
  double ppl[3] = {0, 0, 0};
  int i = 0;
  for (const char* model : {"", "/ref-llama-code-Q8_0.gguf", "/ref-llama-code-Q4_K_M.gguf"}) {
    const std::string m = test::data_path(kDir + model);
    const auto res = test::run_primal("ppl -m " + m + " -f " + text + " -c 256 --chunks 6 --bos yes");
    ASSERT_EQ(res.exit_code, 0) << res.err;
    std::smatch mt;
    ASSERT_TRUE(std::regex_search(res.out, mt, final_re)) << res.out;
    ppl[i++] = std::stod(mt[1]);
    EXPECT_NE(res.err.find("[6/6] PPL"), std::string::npos) << res.err;
    EXPECT_NE(res.err.find("485363 tokens;"), std::string::npos) << res.err;  // GPT-2 vocab: no BOS prepended
  }
  EXPECT_NEAR(ppl[1], ppl[0], 0.003 * ppl[0]);
  EXPECT_NEAR(ppl[2], ppl[0], 0.03 * ppl[0]);  // full file: +0.9% for Q4_K_M

  auto model = Model::open(test::data_path(kDir));
  auto tok = Tokenizer::from_hf_dir(test::data_path(kDir));
  std::ifstream f(text, std::ios::binary);
  std::vector<int32_t> ids = tok->encode(std::string(std::istreambuf_iterator<char>(f), {}), false, false);
  PerplexityOptions o;
  o.n_ctx = 256;
  o.n_chunks = 6;
  o.bos_id = 50256;
  EXPECT_NEAR(perplexity(model->w, ids, o).ppl, ppl[0], 5e-5);
}

TEST(CliPpl, ClearErrors) {
  const std::string m = test::data_path(kDir + "/ref-llama-code-Q8_0.gguf");
  const std::string small = write_temp("small.txt", "def f(x):\n    return x + 1\n");
  auto r = test::run_primal("ppl -m " + m + " -f " + small + " -c 512");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("at least 1024"), std::string::npos) << r.err;
  r = test::run_primal("ppl -m " + m + " -f " + small + " -c 512 --bos maybe");
  EXPECT_NE(r.exit_code, 0);
}
