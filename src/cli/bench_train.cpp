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
#include "train/step_engine.h"
#include "train/train_config.h"
#include "quant/lut_grid.h"
#ifdef PRIMAL_HAVE_CUDA
#include "ops/cuda/device.h"
#include "train/cuda/gpu_engine.h"
#endif

namespace primal::cli {

namespace {

struct BenchTrainArgs {
  std::string shape, memory, device = "cuda", act = "bf16", recompute = "auto", lut = "lut4", math = "bf16";
  int64_t batch = 8, seq = 1024, group = 32, micro_batch = 0, trainable_layers = 0, steps = 3, warmup = 2;
  int vote_bits = 8, threads = 0;
  bool plan_only = false, json = false, dense_embd = false, deterministic = false, fused_dw = false, fused_dequant = false;
};

double peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) * 1024.0;  // Linux: kilobytes
}

// A model of the shape with random LUT weights: indices from a counter hash, scales 0.02 / the
// grid's largest value (N(0, 0.02)-sized weights). Throughput does not depend on the values, and
// this takes seconds where quantizing 1.5B random floats takes minutes.
train::TrainModel random_lut_model(const HParams& hp, DType type, int64_t group, bool lut_embd) {
  using namespace train;
  const std::vector<float> grid = nf4_grid(lut_entries(type));
  const float scale = 0.02f / std::max(std::fabs(grid.front()), std::fabs(grid.back()));
  uint64_t tensor = 0;
  return model_skeleton(hp, 0, [&](const std::string& name, int64_t O, int64_t I, double, bool embedding) {
    Matrix mt;
    mt.name = name;
    mt.O = O;
    mt.I = I;
    const uint64_t key = 0x9E3779B97F4A7C15ull * ++tensor;
    if (embedding && !lut_embd) {
      mt.dense.resize(size_t(O * I));
#pragma omp parallel for schedule(static)
      for (int64_t k = 0; k < O * I; ++k)
        mt.dense[size_t(k)] = 0.02f * float(int64_t(splitmix64(key + uint64_t(k)) % 2001) - 1000) / 1000.0f;
      return mt;
    }
    auto w = std::make_shared<LutWeight>(LutWeight::make(type, O, I, std::min(group, I), grid, name));
    const int64_t nb = int64_t(w->idx.size());
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < nb; ++k) w->idx[size_t(k)] = uint8_t(splitmix64(key + uint64_t(k)));
    std::fill(w->scale.begin(), w->scale.end(), scale);
    mt.lut = std::move(w);
    return mt;
  });
}

// Optimizer steps of B x T random tokens on the CPU or CUDA engine (train/step_engine.h): the
// plan's trainable layers (the top ones), the head, and the embeddings when every layer trains
// (votes for LUT indices, AdamW for the rest); frozen layers get no votes, gradients or moments,
// as the planner counted.
// Prints tok/s, the model FLOP utilization (6 N tokens, as bench/train_pytorch.py) and the peak
// memory (device: what the engine took from the device, cuBLAS included; CPU: peak RSS).
void bench_engine(const BenchTrainArgs& a, const HParams& hp, const train::MemoryPlan& plan,
                  const train::PlanRequest& r) {
  using namespace train;
#ifdef PRIMAL_HAVE_CUDA
  // Before the model is built (seconds for the large shapes), not after.
  PRIMAL_CHECK(a.device != "cuda" || cuda::device_count() > 0, "--device cuda: no usable GPU (use --device cpu)");
#endif
  const auto t_init = std::chrono::steady_clock::now();
  TrainModel m = random_lut_model(hp, lut_type_for_bits(std::stoi(a.lut.substr(3))), a.group, !a.dense_embd);
  const int64_t L = m.n_physical(), first = L - plan.trainable_layers;  // the lowest trainable layer
  const bool embd_tr = first == 0 || hp.tied_embeddings;
  Grads<float> grads;
  grads.allocate(m, embd_tr, true);
  for (int64_t p = 0; p < first; ++p) {  // frozen: no gradient buffers, so no AdamW moments either
    LayerGrad<float>& lg = grads.layers[size_t(p)];
    for (auto* v : {&lg.attn_norm, &lg.ffn_norm, &lg.bq, &lg.bk, &lg.bv}) std::vector<float>().swap(*v);
    for (MatGrad<float>* mg : lg.matrices()) std::vector<float>().swap(mg->dW), std::vector<float>().swap(mg->dscale);
  }
  std::vector<Matrix*> voting;
  for (Matrix* mt : m.lut_matrices()) {
    bool frozen = mt == &m.tok_embd && !embd_tr;
    for (int64_t p = 0; p < first && !frozen; ++p)
      for (const Matrix* lm : m.layers[size_t(p)].matrices()) frozen = frozen || lm == mt;
    if (!frozen) voting.push_back(mt);
  }
  TrainConfig cfg;
  cfg.votes.vote_bits = a.vote_bits;
  VoteEngine votes(cfg.votes, voting);
  AdamW adam(cfg.adam, m, grads);
  if (!a.json)
    std::fprintf(stderr, "random LUT model built in %.1f s\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t_init).count());
  TrainMask mask;
  mask.layer.assign(size_t(L), false);
  for (int64_t p = first; p < L; ++p) mask.layer[size_t(p)] = true;
  mask.embd = first == 0;
  const int64_t B = plan.micro_batch, T = a.seq, N = B * T;
  EngineContext ctx;
  ctx.model = &m, ctx.votes = &votes, ctx.adam = &adam, ctx.grads = &grads, ctx.cfg = &cfg;
  ctx.max_batch = B, ctx.max_seq = T;
  std::unique_ptr<StepEngine> engine;
  if (a.device == "cpu") {
    engine = make_cpu_engine(ctx);
  } else {
#ifdef PRIMAL_HAVE_CUDA
    GpuEngineOptions g;
    g.fast = a.math == "bf16";
    if (a.deterministic) g.cudnn_attention = GpuEngineOptions::Cudnn::Off;
    g.fused_dw = a.fused_dw;
    g.fused_dequant = a.fused_dequant;
    g.recompute = plan.recompute;
    g.kept_layers = plan.kept_layers;
    g.keep_attention = plan.keep_attention;
    g.qkv_layers = plan.qkv_layers;
    g.head_chunk = r.head_chunk;
    g.verbose = !a.json;
    engine = make_cuda_engine(ctx, g);
#else
    fail("--device cuda: this primal was built without CUDA");
#endif
  }
  std::vector<int32_t> in(static_cast<size_t>(N)), tg(static_cast<size_t>(N));
  Rng rng(7, 1);
  double timed = 0, first_loss = 0, last_loss = 0;
  int64_t timed_tokens = 0, flips = 0;
  const auto all_m = [](const Matrix&) { return true; };
  const auto all_p = [](const FloatParam&) { return true; };
  for (int64_t s = 0; s < a.warmup + a.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    engine->begin_step(s, 1.0);
    double nll = 0;
    for (int64_t k = 0; k < plan.accum; ++k) {
      for (int64_t i = 0; i < N; ++i) in[size_t(i)] = int32_t(rng.range(0, hp.n_vocab - 1));
      for (int64_t i = 0; i < N; ++i) tg[size_t(i)] = int32_t(rng.range(0, hp.n_vocab - 1));
      nll += engine->forward_backward(mask, in.data(), tg.data(), B, T, 1.0 / double(a.batch * T), true).nll;
    }
    flips = engine->apply_votes(all_m).flips;
    engine->adam_step(1.0, all_p);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double loss = nll / double(a.batch * T);
    if (s == 0) first_loss = loss;
    last_loss = loss;
    if (s >= a.warmup) timed += dt, timed_tokens += a.batch * T;
    if (!a.json)
      std::fprintf(stderr, "step %lld/%lld: %.3f s, loss %.4f, %lld flips\n", (long long)(s + 1),
                   (long long)(a.warmup + a.steps), dt, loss, (long long)flips);
  }
  const double tok_s = double(timed_tokens) / timed;
  const double flops = 6.0 * double(plan.params) * tok_s;
  const bool cpu = a.device == "cpu";
  const double peak = cpu ? peak_rss_bytes() : double(engine->peak_bytes());
  const double gib = 1024.0 * 1024 * 1024;
  if (a.json) {
    nlohmann::json j;
    j["device"] = engine->name();
    if (cpu) j["threads"] = omp_get_max_threads();
    j["tok_s"] = tok_s;
    j["model_tflops"] = flops * 1e-12;
    j["mfu"] = flops / 989e12;
    j[cpu ? "peak_rss_bytes" : "peak_device_bytes"] = peak;
    j["planned_bytes"] = plan.total();
    j["batch"] = a.batch;
    j["seq"] = a.seq;
    j["micro_batch"] = plan.micro_batch;
    j["accum"] = plan.accum;
    j["recompute"] = plan.recompute;
    j["kept_layers"] = plan.kept_layers;
    j["keep_attention"] = plan.keep_attention;
    j["qkv_layers"] = plan.qkv_layers;
    j["params"] = plan.params;
    j["first_loss"] = first_loss;
    j["last_loss"] = last_loss;
    std::printf("%s\n", j.dump().c_str());
  } else {
    const std::string rc = !plan.recompute ? ""
                           : ", recomputation of " + std::to_string(plan.trainable_layers - plan.kept_layers) + " layers" +
                                 (plan.keep_attention ? " (attention outputs kept)" : "");
    std::printf("%s: %.0f tok/s, %.1f model TFLOP/s (MFU %.1f%% of 989), peak %s %.2f GiB (planned %.2f); "
                "%lld x %lld tokens per step, micro-batch %lld x %lld%s\n",
                engine->name().c_str(), tok_s, flops * 1e-12, 100 * flops / 989e12, cpu ? "RSS" : "device memory",
                peak / gib, double(plan.total()) / gib, (long long)a.batch, (long long)a.seq,
                (long long)plan.micro_batch, (long long)plan.accum, rc.c_str());
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
      "layers=,embd=,heads=,kv_heads=,ff=,vocab=[,head_dim=,ctx=,theta=,eps=,qkv_bias=1].");
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
  cmd->add_option("--recompute", a->recompute, "per-layer activation recomputation: auto (as few layers as fit), on (every layer), off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_option("--trainable-layers", a->trainable_layers, "fix the number of trainable (top) layers")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--plan", a->plan_only, "print the memory plan and exit (no device needed)");
  cmd->add_option("--device", a->device, "cuda or cpu (the CPU trainer)")->check(CLI::IsMember({"cuda", "cpu"}));
  cmd->add_option("--math", a->math, "cuda GEMMs: bf16 (tensor cores) or fp32 (the CPU's arithmetic)")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--steps", a->steps, "timed optimizer steps")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", a->warmup,
                  "untimed steps first (cuda --math bf16 captures a step as a CUDA graph on its first run, "
                  "after an eager run that tunes the GEMMs with PRIMAL_GEMM_TUNE=1)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-t,--threads", a->threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--json", a->json, "one JSON object instead of text");
  cmd->add_flag("--deterministic", a->deterministic,
                "bf16: our attention kernels instead of cuDNN's (where libcudnn.so.9 loads; bitwise reproducible)");
  cmd->add_flag("--fused-dw", a->fused_dw,
                "bf16 on Hopper: weight gradients and vote casts in one fused kernel (slower than cuBLAS + the cast "
                "beside it today)");
  cmd->add_flag("--fused-dequant", a->fused_dequant,
                "bf16 on Hopper: forward and input-gradient GEMMs dequantize the LUT indices in their loads (no bf16 "
                "copy of the weights; slower than dequantization + cuBLAS today)");
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
    // A run is planned for the engine mode it runs (--math); --plan alone plans the --act type.
    r.act_bytes = (a->plan_only ? a->act : a->math) == "bf16" ? 2 : 4;
    // The head's rows of logits at once: the bf16 mode keeps bf16 logits, 2048 rows cost less than
    // 1024 fp32 ones (and a quarter of the vote-cast passes over the head of 512).
    r.head_chunk = r.act_bytes == 2 ? 2048 : 512;
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
    PRIMAL_CHECK(a->device == "cuda" || a->dense_embd,
                 "--device cpu: the CPU trainer trains dense embeddings/head only (add --dense-embd)");
    if (!a->json) std::fprintf(stderr, "%s\n", plan.describe(r).c_str());
    bench_engine(*a, r.hp, plan, r);
  });
}

}  // namespace primal::cli
