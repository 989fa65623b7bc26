// Whole LUT models on the GPU against the CPU path: the reference model (ref-llama-code, its
// Q8_0 GGUF requantized here to LUT4 with the IQ4_NL grid and groups of 32, as `primal quantize`
// does) and small synthetic models quantized to every other LUT format, group and grid kind.
//
// Tolerance: the LUT GEMVs multiply fp32 inputs (no int8 rounding), so GPU and CPU differ by the
// fp16 operands of the prefill GEMMs and the fp16 KV cache only, as for the float formats in
// test_forward_cuda.cpp: kTol = 1e-2 of the logit vector's norm there (prefill and decode), and
// the greedy choice must stay the CPU's at every step of the reference model.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../testing.h"
#include "gpu_testing.h"
#include "infer/backend.h"
#include "infer/cuda/cuda_backend.h"
#include "infer/generate.h"
#include "model/synth.h"
#include "model/weights.h"
#include "quant/lut_model.h"

using namespace gputest;

namespace {

constexpr double kTol = 1e-2;

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }
int32_t argmax(const std::vector<float>& v) { return int32_t(std::max_element(v.begin(), v.end()) - v.begin()); }

std::string quantized(const std::string& in, const std::string& name, DType t, int64_t group, GridKind grid) {
  LutQuantOptions o;
  o.type = t, o.group = group, o.grid = grid, o.allow_requantize = true;
  const std::string out = test::temp_dir() + "/" + name;
  quantize_model(in, out, o);
  return out;
}

const Model& ref_lut4() {
  static std::unique_ptr<Model> m = Model::open(quantized(test::data_path("models/ref-llama-code/ref-llama-code-Q8_0.gguf"),
                                                          "ref-llama-code-LUT4.gguf", DType::LUT4, 32, GridKind::IQ4NL));
  return *m;
}

// Prompt logits, then `steps` decode steps fed the CPU's greedy token; returns the worst error.
double compare(const LlamaWeights& w, const std::vector<int32_t>& prompt, int steps, bool same_greedy) {
  const int64_t V = w.hp.n_vocab, T = int64_t(prompt.size());
  auto cpu = make_cpu_backend(w, T + steps + 1);
  auto gpu = cuda::make_cuda_backend(w, T + steps + 1);
  std::vector<float> lc(static_cast<size_t>(V)), lg(static_cast<size_t>(V));
  cpu->forward(prompt.data(), T, 1, lc.data());
  gpu->forward(prompt.data(), T, 1, lg.data());
  double worst = rel_err(lg, as_double(lc));
  EXPECT_LE(worst, kTol) << "prompt logits";
  for (int s = 0; s < steps; ++s) {
    const int32_t next = argmax(lc);
    if (same_greedy) EXPECT_EQ(argmax(lg), next) << "step " << s;
    cpu->forward(&next, 1, 1, lc.data());
    gpu->forward(&next, 1, 1, lg.data());
    const double e = rel_err(lg, as_double(lc));
    EXPECT_LE(e, kTol) << "decode step " << s;
    worst = std::max(worst, e);
  }
  return worst;
}

std::vector<std::vector<int32_t>> reference_prompts() {
  std::ifstream f(test::data_path("models/ref-llama-code/reference.json"));
  const auto j = nlohmann::json::parse(f);
  std::vector<std::vector<int32_t>> out;
  for (const auto& r : j.at("reference_outputs")) out.push_back(r.at("prompt_ids").get<std::vector<int32_t>>());
  return out;
}

}  // namespace

TEST(GpuLutForward, ReferenceModelLut4LogitsAndGreedyMatchCpu) {
  REQUIRE_GPU();
  const auto& m = ref_lut4();
  ASSERT_EQ(m.w.layers[0].wq->type, DType::LUT4);
  for (const auto& prompt : reference_prompts())
    fmt::print("LUT4 logits vs CPU: worst {:.2e}\n", compare(m.w, prompt, 8, true));
  // 32 greedy tokens through the Generator (decode graph, GPU top-k) equal the CPU's.
  SamplerParams sp;
  sp.temperature = 0;
  const auto prompt = reference_prompts()[0];
  Generator gpu(cuda::make_cuda_backend(m.w, 128), sp);
  Generator cpu(m.w, 128, sp);
  gpu.set_context(prompt);
  cpu.set_context(prompt);
  std::vector<int32_t> got, want;
  for (int i = 0; i < 32; ++i) {
    got.push_back(gpu.sample());
    want.push_back(cpu.sample());
    gpu.push(got.back());
    cpu.push(want.back());
  }
  EXPECT_EQ(got, want);
}

// A qwen2-layout model (qkv bias, tied head: the LUT token embedding is also the head's GEMV)
// in every LUT format, with groups of 32, 64 and whole rows and both grid kinds.
TEST(GpuLutForward, SyntheticModelsEveryFormatMatchCpu) {
  REQUIRE_GPU();
  SynthShape s;
  s.name = "test-qwen2", s.arch = "qwen2", s.pre = "qwen2";
  s.n_vocab = 1000, s.n_embd = 256, s.n_layer = 2, s.n_head = 4, s.n_head_kv = 2, s.head_dim = 64, s.n_ff = 640;
  s.n_ctx = 256, s.rope_theta = 1e6f, s.rms_eps = 1e-6f, s.tied = true, s.qkv_bias = true;
  SynthOptions so;
  so.type = DType::F16, so.seed = 7;
  const std::string f16 = test::temp_dir() + "/lut-synth-F16.gguf";
  write_synth_gguf(s, so, f16);
  struct Case {
    DType t;
    int64_t group;
    GridKind grid;
  };
  for (const Case& c : {Case{DType::LUT2, 32, GridKind::NF4}, Case{DType::LUT3, 64, GridKind::Uniform},
                        Case{DType::LUT4, 0, GridKind::Prime}, Case{DType::LUT5, 32, GridKind::NF4},
                        Case{DType::LUT6, 64, GridKind::Uniform}, Case{DType::LUT8, 32, GridKind::NF4},
                        Case{DType::LUT16, 128, GridKind::Prime}}) {
    SCOPED_TRACE(dtype_name(c.t) + " G=" + std::to_string(c.group));
    auto m = Model::open(quantized(f16, "lut-synth-" + dtype_name(c.t) + ".gguf", c.t, c.group, c.grid));
    ASSERT_EQ(m->w.layers[1].w_down->type, c.t);
    std::vector<int32_t> prompt;
    for (int i = 0; i < 37; ++i) prompt.push_back(int32_t((i * 7919) % 1000));
    // Random weights give nearly flat logits: greedy ties are likely, only the logits compared.
    fmt::print("{} logits vs CPU: worst {:.2e}\n", dtype_name(c.t), compare(m->w, prompt, 3, false));
  }
}
