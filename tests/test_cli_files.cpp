// The binary on the real files: inspect (GGUF, safetensors, HF folder) and convert.
#include <gtest/gtest.h>

#include <filesystem>

#include "hf_fixture.h"
#include "io/gguf.h"
#include "testing.h"

using namespace primal;
namespace fs = std::filesystem;

namespace {
const std::string kRef = "models/ref-llama-code";

bool has(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }
}  // namespace

TEST(CliFiles, InspectHfFolder) {
  const auto r = test::run_primal("inspect " + test::data_path(kRef));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "Hugging Face checkpoint, model_type llama (LlamaForCausalLM), 3 safetensors file(s), 75 tensors"))
      << r.out;
  EXPECT_TRUE(has(r.out, "heads 8 (kv 4), head_dim 32, ffn 704")) << r.out;
  EXPECT_TRUE(has(r.out, "model.layers.0.self_attn.q_proj.weight")) << r.out;
  EXPECT_TRUE(has(r.out, "blk.0.attn_q.weight")) << r.out;
  EXPECT_TRUE(has(r.out, "[50257, 256]")) << r.out;
  EXPECT_TRUE(has(r.out, "model-00002-of-00003.safetensors")) << r.out;
}

TEST(CliFiles, InspectSafetensorsFile) {
  const auto r = test::run_primal("inspect " + test::data_path(kRef + "/model-00003-of-00003.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "safetensors, header 7880 bytes, 73 tensors, data at offset 7888")) << r.out;
  EXPECT_TRUE(has(r.out, "__metadata__ format = \"pt\"")) << r.out;
  EXPECT_TRUE(has(r.out, "model.layers.7.self_attn.v_proj.weight")) << r.out;
  EXPECT_TRUE(has(r.out, "BF16")) << r.out;
}

TEST(CliFiles, InspectGgufStillWorks) {
  const auto r = test::run_primal("inspect --no-tensors " + test::data_path(kRef + "/ref-llama-code-Q8_0.gguf"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "general.architecture = \"llama\"")) << r.out;
}

TEST(CliFiles, ConvertThenInspect) {
  const std::string out = test::temp_dir() + "/cli-q8_0.gguf";
  const auto r = test::run_primal("convert " + test::data_path(kRef) + " " + out + " --type q8_0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;  // progress goes to stderr
  EXPECT_TRUE(has(r.err, "[  75/75] output.weight")) << r.err;
  EXPECT_TRUE(has(r.err, "wrote " + out)) << r.err;
  const auto i = test::run_primal("inspect " + out);
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_TRUE(has(i.out, "general.file_type = 7")) << i.out;
  EXPECT_TRUE(has(i.out, "Q8_0")) << i.out;
  GgufFile g(out);
  EXPECT_EQ(g.tensor("blk.4.attn_v.weight").type, DType::Q8_0);

  const auto q = test::run_primal("convert -q " + test::data_path(kRef) + " " + out + " --type bf16");
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_TRUE(q.err.empty()) << q.err;
}

TEST(CliFiles, ErrorsAreReportedCleanly) {
  const std::string dir = test::temp_dir() + "/cli-bad";
  fs::create_directories(dir + "/empty");
  auto r = test::run_primal("convert " + dir + "/empty " + dir + "/x.gguf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "primal: error: " + dir + "/empty: no config.json")) << r.err;
  EXPECT_FALSE(fs::exists(dir + "/x.gguf"));

  r = test::run_primal("convert " + test::data_path(kRef) + " " + dir + "/x.gguf --type q4_k");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "primal: error: --type q4_k")) << r.err;

  const std::string real = test::read_file(test::data_path(kRef + "/model-00003-of-00003.safetensors"));
  test::write_file(dir + "/cut.safetensors", real.substr(0, 5000));
  r = test::run_primal("inspect " + dir + "/cut.safetensors");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "primal: error: " + dir + "/cut.safetensors: header length 7880 extends past the end"))
      << r.err;
}
