// `primal bench-train`: training throughput and memory of a model shape, random init, random
// tokens. --plan prints the memory planner's plan for the GPU trainer (no device needed);
// --device cpu times full optimizer steps of the CPU trainer (forward, backward, votes, AdamW).
// The CUDA trainer is not built yet: --device cuda says so.
#include <fmt/format.h>
#include <omp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "model/synth.h"
#include "quant/lut_pack.h"
#include "train/adamw.h"
#include "train/forward_backward.h"
#include "train/memory_plan.h"
#include "train/rng.h"
#include "train/votes.h"

namespace primal::cli {

namespace {

struct BenchTrainArgs {
  std::string shape, memory, device = "cuda", act = "bf16", recompute = "auto", lut = "lut4";
  int64_t batch = 8, seq = 1024, group = 32, micro_batch = 0, trainable_layers = 0, steps = 3, warmup = 1;
  int vote_bits = 8, threads = 0;
  bool plan_only = false, json = false, dense_embd = false;
};

double peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) * 1024.0;  // Linux: kilobytes
}

// Full optimizer steps of the CPU trainer on the shape; prints tok/s and peak RSS.
void bench_cpu(const BenchTrainArgs& a, const HParams& hp, const train::MemoryPlan& plan) {
  using namespace train;
  LutSpec spec;
  spec.type = lut_type_for_bits(std::stoi(a.lut.substr(3)));
  spec.group = a.group;
  spec.grid = "nf4";
  const auto t_init = std::chrono::steady_clock::now();
  TrainModel m = init_random_model(hp, spec, 0, 1234);
  if (!a.json)
    std::fprintf(stderr, "model initialized and quantized in %.1f s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t_init).count());
  Grads<float> grads;
  grads.allocate(m, true, true);
  VoteConfig vc;
  vc.vote_bits = a.vote_bits;
  VoteEngine votes(vc, m.lut_matrices());
  AdamW adam(AdamConfig{}, m, grads);
  TrainMask mask;
  mask.layer.assign(size_t(m.n_physical()), true);
  Workspace<float> ws;
  const int64_t B = plan.micro_batch, T = a.seq, N = B * T;
  std::vector<int32_t> in(static_cast<size_t>(N)), tg(static_cast<size_t>(N));
  Rng rng(7, 1);
  double timed = 0;
  int64_t timed_tokens = 0;
  for (int64_t s = 0; s < a.warmup + a.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    votes.begin_step(s, 1.0);
    grads.zero();
    for (int64_t k = 0; k < plan.accum; ++k) {
      for (int64_t i = 0; i < N; ++i) in[size_t(i)] = int32_t(rng.range(0, hp.n_vocab - 1));
      for (int64_t i = 0; i < N; ++i) tg[size_t(i)] = int32_t(rng.range(0, hp.n_vocab - 1));
      forward_backward<float>(m, mask, ws, in.data(), tg.data(), B, T, 1.0 / double(a.batch * T), &grads, &votes);
    }
    votes.apply([](const Matrix&) { return true; });
    adam.step(1.0, [](const FloatParam&) { return true; });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= a.warmup) timed += dt, timed_tokens += a.batch * T;
    if (!a.json) std::fprintf(stderr, "step %lld/%lld: %.2f s\n", (long long)(s + 1), (long long)(a.warmup + a.steps), dt);
  }
  const double tok_s = double(timed_tokens) / timed;
  // Model FLOPs: 6 per parameter per token (attention not counted), as bench/train_pytorch.py.
  const double flops = 6.0 * double(plan.params) * tok_s;
  if (a.json) {
    nlohmann::json j;
    j["device"] = "cpu";
    j["threads"] = omp_get_max_threads();
    j["tok_s"] = tok_s;
    j["model_tflops"] = flops * 1e-12;
    j["peak_rss_bytes"] = peak_rss_bytes();
    j["batch"] = a.batch;
    j["seq"] = a.seq;
    j["micro_batch"] = plan.micro_batch;
    j["params"] = plan.params;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("cpu (%d threads): %.0f tok/s, %.3f model TFLOP/s, peak RSS %.2f GiB (%lld x %lld tokens per step)\n",
                omp_get_max_threads(), tok_s, flops * 1e-12, peak_rss_bytes() / (1024.0 * 1024 * 1024),
                (long long)a.batch, (long long)a.seq);
  }
}

}  // namespace

void register_bench_train(CLI::App& app) {
  auto a = std::make_shared<BenchTrainArgs>();
  auto* cmd = app.add_subcommand("bench-train", "Training throughput and memory of a model shape (random init)");
  cmd->footer(
      "Examples:\n"
      "  primal bench-train --shape qwen2.5-1.5b --batch 8 --seq 1024 --memory 8GiB --plan\n"
      "  primal bench-train --shape layers=4,embd=256,heads=8,ff=704,vocab=50257 --batch 4 --seq 256 --device cpu\n"
      "Shapes: " + synth_shape_names() + ", or a spec\n"
      "layers=,embd=,heads=,kv_heads=,ff=,vocab=[,head_dim=,ctx=,theta=,eps=].");
  cmd->add_option("--shape", a->shape, "model shape: a name or a spec (see below)")->required();
  cmd->add_option("--batch", a->batch, "sequences per optimizer step")->check(CLI::PositiveNumber);
  cmd->add_option("--seq", a->seq, "tokens per sequence")->check(CLI::PositiveNumber);
  cmd->add_option("--memory", a->memory, "device-memory budget, e.g. 8GiB (default: none for --plan)");
  cmd->add_option("--lut", a->lut, "index width of every linear layer")
      ->check(CLI::IsMember({"lut2", "lut3", "lut4", "lut5", "lut6", "lut8"}));
  cmd->add_option("--group", a->group, "weights per scale")->check(CLI::PositiveNumber);
  cmd->add_option("--vote-bits", a->vote_bits, "8 or 16")->check(CLI::IsMember({8, 16}));
  cmd->add_option("--act", a->act, "activation type of the plan: bf16 or fp32")->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_flag("--dense-embd", a->dense_embd, "embeddings/head dense fp32 + AdamW instead of LUT + votes");
  cmd->add_option("--micro-batch", a->micro_batch, "fix the micro-batch (default: the planner's)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--recompute", a->recompute, "per-layer activation recomputation: auto, on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_option("--trainable-layers", a->trainable_layers, "fix the number of trainable (top) layers")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--plan", a->plan_only, "print the memory plan and exit (no device needed)");
  cmd->add_option("--device", a->device, "cuda or cpu (the CPU trainer)")->check(CLI::IsMember({"cuda", "cpu"}));
  cmd->add_option("--steps", a->steps, "timed optimizer steps")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", a->warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  cmd->add_option("-t,--threads", a->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", a->json, "one JSON object instead of text");
  cmd->callback([a] {
    if (a->threads > 0) omp_set_num_threads(a->threads);
    train::PlanRequest r;
    r.hp = train::training_shape(a->shape);
    r.lut_bits = std::stoi(a->lut.substr(3));
    r.group = a->group;
    r.lut_embeddings = !a->dense_embd;
    r.vote_bits = a->vote_bits;
    r.batch = a->batch;
    r.seq = a->seq;
    r.act_bytes = a->act == "bf16" ? 2 : 4;
    r.micro_batch = a->micro_batch;
    r.recompute = a->recompute == "auto" ? -1 : a->recompute == "on" ? 1 : 0;
    r.trainable_layers = a->trainable_layers;
    if (!a->memory.empty()) r.budget = train::parse_bytes(a->memory);
    const train::MemoryPlan plan = train::choose_plan(r);
    if (a->plan_only) {
      if (a->json) std::printf("%s\n", plan.to_json(r).c_str());
      else std::printf("%s\n", plan.describe(r).c_str());
      return;
    }
    if (a->device == "cuda")
      fail("the CUDA trainer is not built yet, so `bench-train --device cuda` cannot run; --plan prints its memory "
           "plan and --device cpu times the CPU trainer");
    PRIMAL_CHECK(a->dense_embd, "--device cpu: the CPU trainer keeps embeddings/head dense (add --dense-embd)");
    if (!a->json) std::fprintf(stderr, "%s\n", plan.describe(r).c_str());
    bench_cpu(*a, r.hp, plan);
  });
}

}  // namespace primal::cli
