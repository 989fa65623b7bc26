// primal train: discrete training of a LUT model on the CPU (src/train/trainer.h).
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "io/gguf.h"
#include "io/model_source.h"
#include "quant/lut_pack.h"
#include "tokenizer/tokenizer.h"
#include "train/eval.h"
#include "train/model_io.h"
#include "train/memory_plan.h"
#include "train/trainer.h"
#ifdef PRIMAL_HAVE_CUDA
#include "ops/cuda/buffer.h"
#include "ops/cuda/device.h"
#include "train/cuda/gpu_engine.h"
#endif

namespace primal::cli {
namespace {

struct Args {
  train::TrainConfig c;
  std::string init, resume, rule = "momentum", lut_type = "lut4", group = "32", schedule = "none";
  int64_t steps = 0, threads = 0, stop_after = 0, ctx = 512, chunks = -1;
  std::string eval_ppl;
  bool quiet = false, freeze_embd = false, freeze_head = false, train_embd = false, train_head = false;
  bool no_shuffle = false, no_second_moment = false, freeze_scales = false;
  std::string device = "cpu";  // where the steps run (not part of the run's configuration)
  bool fast = false, recompute = false, deterministic = false, fused_dw = false, fused_dequant = false;
  int64_t head_chunk = 0;
  std::string memory;  // cuda: device-memory budget (empty: what is free)
};

// --device cuda: the CUDA engine with the GPU options, sized by the memory planner
// (train/memory_plan.h) once the model is loaded: it recomputes as few layers as the budget allows
// at the configured micro-batch, or refuses the run naming the smallest budget. It does not split
// the micro-batch: votes are cast once per micro-batch backward (each cast normalized by its own
// second moments), so more accumulation would change the vote rule's step, not only the memory.
void set_engine(const Args& a, train::TrainRunOptions& o) {
  if (a.device != "cuda") {
    PRIMAL_CHECK(!a.fast && !a.recompute && !a.deterministic && !a.fused_dw && !a.fused_dequant && a.head_chunk == 0 &&
                     a.memory.empty(),
                 "--fast, --deterministic, --fused-dw, --fused-dequant, --recompute, --head-chunk and --memory need "
                 "--device cuda");
    return;
  }
  const int64_t budget = a.memory.empty() ? 0 : train::parse_bytes(a.memory);  // bad sizes fail before any work
#ifdef PRIMAL_HAVE_CUDA
  PRIMAL_CHECK(cuda::device_count() > 0, "--device cuda: no usable GPU (use --device cpu)");
  auto g = std::make_shared<train::GpuEngineOptions>();
  g->fast = a.fast;
  if (a.deterministic) g->cudnn_attention = train::GpuEngineOptions::Cudnn::Off;
  g->fused_dw = a.fused_dw;
  g->fused_dequant = a.fused_dequant;
  g->head_chunk = a.head_chunk;
  g->verbose = !a.quiet;
  const bool recompute = a.recompute, quiet = a.quiet;
  o.plan = [g, budget, recompute, quiet](const train::TrainModel& m, const train::TrainConfig& c) {
    train::PlanRequest r = train::plan_request(m, c, g->fast ? 2 : 4, train::cuda_head_chunk(*g));
    r.budget = budget > 0 ? budget : int64_t(cuda::memory_info().first);
    r.recompute = recompute ? 1 : -1;
    r.micro_batch = r.batch;            // --batch as configured (see above)
    r.trainable_layers = m.hp.n_layer;  // the schedule may train every layer
    train::MemoryPlan p;
    try {
      p = train::choose_plan(r);
    } catch (const Error& e) {
      fail("{} (--device cuda trains --batch {} sequences at once: a smaller --batch with a larger --accum needs less)",
           e.what(), r.batch);
    }
    if (!quiet)
      std::fprintf(stderr, "%s%s\n", p.describe(r).c_str(),
                   budget > 0 ? "" : "\n  (budget: the device memory free at the start; --memory sets one)");
    g->recompute = p.recompute;
    g->kept_layers = p.kept_layers;
    g->keep_attention = p.keep_attention;
    g->qkv_layers = p.qkv_layers;
  };
  o.engine = [g](const train::EngineContext& ctx) { return train::make_cuda_engine(ctx, *g); };
#else
  (void)o, (void)budget;
  fail("--device cuda: this primal was built without CUDA");
#endif
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<Args>();
  train::TrainConfig& c = a->c;
  c.sched.seq = 256;
  c.sched.batch = 4;
  c.sched.warmup = -1;
  // Rule defaults from recovering a LUT4 ref-llama-code (bench/RESULTS.md). A LUT4 bucket is a
  // few thousandths in weight units, so a momentum step of 5e-4 (Adam-normalized) needs several
  // agreeing steps per flip (~0.003% of the weights a step); at 3e-3 ~2% flipped every step and
  // the loss rose. The seed rule is gated harder than the seeds' k = 1, consensus 4, p = sigmoid(z): at
  // k 1.5, consensus 6, flip-lr 0.05 it flipped 0.009% a step and the perplexity rose.
  c.votes.lr = 5e-4;
  c.votes.sensitivity = 2.0;
  c.votes.consensus = 8;
  c.votes.flip_lr = 0.02;
  auto* cmd = app.add_subcommand("train", "Discrete training of a LUT model (indices learn by integer votes)");
  cmd->footer(
      "Examples:\n"
      "  primal train --model ref.gguf --data src/ --ext .py --steps 500 --seq 256 --batch 4 --out run1\n"
      "  primal train --init random --shape layers=4,embd=64,heads=4,ff=172 --tokenizer vocab.gguf \\\n"
      "               --data text.txt --steps 200 --out run2\n"
      "  primal train --resume run1 [--steps 1000]");
  auto* g_model = "Model";
  cmd->add_option("--model", c.model, "GGUF file or HF folder (LUT, float or block-quantized)")->group(g_model);
  cmd->add_option("--init", a->init, "'random': train from scratch (with --shape and --tokenizer)")
      ->group(g_model)
      ->check(CLI::IsMember({"random"}));
  cmd->add_option("--shape", c.shape, "layers=L,embd=C,heads=H,kv_heads=K,ff=F[,ctx=,head_dim=,theta=,eps=,qkv_bias=1]")
      ->group(g_model);
  cmd->add_option("--tokenizer", c.tokenizer, "tokenizer (GGUF or HF folder; default: the model)")->group(g_model);
  cmd->add_option("--lut", a->lut_type, "LUT type for float matrices: lut2, lut3, lut4, lut5, lut6, lut8, lut16, or none (keep them float)")
      ->group(g_model)
      ->check(CLI::IsMember({"lut2", "lut3", "lut4", "lut5", "lut6", "lut8", "lut16", "none"}));
  cmd->add_option("--grid", c.lut.grid, "grid for float matrices: prime, iq4nl, nf4, uniform, learned (quant/lut_grid.h)")->group(g_model);
  cmd->add_option("--group", a->group, "weights per scale for float matrices: a number or 'row'")->group(g_model);
  cmd->add_option("--share", c.share, "share layers: the model keeps N physical layers, used cyclically")
      ->group(g_model);
  cmd->add_flag("--train-embd", a->train_embd, "train the token embeddings (default: on for --init random)")
      ->group(g_model);
  cmd->add_flag("--freeze-embd", a->freeze_embd, "keep the token embeddings fixed")->group(g_model);
  cmd->add_flag("--train-head", a->train_head, "train the output head (default: on for --init random)")->group(g_model);
  cmd->add_flag("--freeze-head", a->freeze_head, "keep the output head fixed")->group(g_model);
  cmd->add_flag("--freeze-scales", a->freeze_scales, "keep LUT scales fixed (indices only)")->group(g_model);
  cmd->add_option("--teacher", c.teacher,
                  "distil: the loss is the KL to this model's next-token distribution (GGUF or HF folder of the same "
                  "vocabulary, e.g. the float model a LUT model was quantized from) instead of the cross-entropy; "
                  "evaluation stays cross-entropy")
      ->group(g_model);

  auto* g_data = "Data";
  cmd->add_option("--data", c.data, "text files, folders, .jsonl, or token files from tokenize-data")
      ->group(g_data)
      ->expected(1, -1);
  cmd->add_option("--ext", c.extensions, "only files ending so in folders (e.g. .py)")->group(g_data)->expected(1, -1);
  cmd->add_option("--eval-data", c.eval_data, "held-out data (default: the tail of --data)")->group(g_data)->expected(1, -1);
  cmd->add_option("--eval-frac", c.eval_frac, "fraction of --data held out when no --eval-data")->group(g_data);
  cmd->add_option("--eval-seqs", c.eval_seqs, "evaluation sequences")->group(g_data);
  cmd->add_flag("--no-shuffle", a->no_shuffle, "visit documents in file order every epoch")->group(g_data);

  auto* g_sched = "Schedule";
  cmd->add_option("--steps", a->steps, "optimizer steps")->group(g_sched);
  cmd->add_option("--seq", c.sched.seq, "sequence length T")->group(g_sched);
  cmd->add_option("--batch", c.sched.batch, "sequences per micro-batch B")->group(g_sched);
  cmd->add_option("--accum", c.sched.accum, "micro-batches per step (gradient accumulation)")->group(g_sched);
  cmd->add_option("--warmup", c.sched.warmup, "warm-up steps (default: 5% of --steps)")->group(g_sched);
  cmd->add_option("--min-lr-frac", c.sched.min_frac, "final / peak learning rate of the cosine")->group(g_sched);
  cmd->add_option("--schedule", a->schedule, "preset: none, peel, seal, peel+seal")
      ->group(g_sched)
      ->check(CLI::IsMember({"none", "peel", "seal", "peel+seal"}));
  cmd->add_option("--peel-every", c.sched.peel_every, "layer peel: steps per phase (0: off)")->group(g_sched);
  cmd->add_option("--peel-layers", c.sched.peel_layers, "layer peel: layers added per phase")->group(g_sched);
  cmd->add_option("--seal-steps", c.sched.seal_steps, "sealing pass: the last N steps (0: off)")->group(g_sched);
  cmd->add_option("--seal-seq", c.sched.seal_seq, "sealing pass: sequence length (default seq / 2)")->group(g_sched);
  cmd->add_option("--seal-accum", c.sched.seal_accum, "sealing pass: accumulation (default 2 x accum)")->group(g_sched);

  auto* g_rule = "Votes";
  cmd->add_option("--rule", a->rule, "seed or momentum")->group(g_rule)->check(CLI::IsMember({"seed", "momentum"}));
  cmd->add_option("--vote-bits", c.votes.vote_bits, "8 or 16")->group(g_rule);
  cmd->add_option("--sensitivity", c.votes.sensitivity, "seed: k in mean + k std of |g|")->group(g_rule);
  cmd->add_option("--consensus", c.votes.consensus, "seed: |votes| needed to flip")->group(g_rule);
  cmd->add_option("--flip-lr", c.votes.flip_lr, "seed: flip probability scale")->group(g_rule);
  cmd->add_option("--noise", c.votes.noise, "integer jitter added to votes each step")->group(g_rule);
  cmd->add_option("--cooldown", c.votes.cooldown, "steps a weight holds after a flip")->group(g_rule);
  cmd->add_option("--flip-cap", c.votes.flip_cap, "governor: max fraction of weights flipped per step (0: off)")
      ->group(g_rule);
  cmd->add_option("--lut-lr", c.votes.lr, "momentum: weight-space learning rate")->group(g_rule);
  cmd->add_flag("--no-second-moment", a->no_second_moment, "momentum: plain -lr g steps")->group(g_rule);
  cmd->add_option("--lut-beta2", c.votes.beta2, "momentum: second-moment decay")->group(g_rule);

  auto* g_opt = "Float parameters (AdamW)";
  cmd->add_option("--lr", c.adam.lr, "norms, biases, embeddings, head")->group(g_opt);
  cmd->add_option("--scale-lr", c.adam.scale_lr, "LUT scales (relative step)")->group(g_opt);
  cmd->add_option("--weight-decay", c.adam.weight_decay, "embeddings and head")->group(g_opt);
  cmd->add_option("--scale-decay", c.adam.scale_decay, "LUT scales")->group(g_opt);
  cmd->add_option("--clip", c.adam.clip, "gradient-norm clip (0: off)")->group(g_opt);
  cmd->add_option("--beta1", c.adam.beta1)->group(g_opt);
  cmd->add_option("--beta2", c.adam.beta2)->group(g_opt);

  auto* g_out = "Output";
  cmd->add_option("--out", c.out, "output folder (metrics.jsonl, checkpoint.gguf, model.gguf)")->group(g_out);
  cmd->add_option("--resume", a->resume, "continue the run in this folder from its checkpoint")->group(g_out);
  cmd->add_option("--stop-after", a->stop_after, "stop (with a checkpoint) after N steps of this invocation")
      ->group(g_out);
  cmd->add_option("--checkpoint-every", c.checkpoint_every, "steps between checkpoints (0: only at the end)")
      ->group(g_out);
  cmd->add_option("--eval-every", c.eval_every, "steps between evaluations (0: only at the end)")->group(g_out);
  cmd->add_option("--sample-every", c.sample_every, "steps between generated samples (0: never)")->group(g_out);
  cmd->add_option("--sample-tokens", c.sample_tokens, "tokens per sample")->group(g_out);
  cmd->add_option("--sample-prompt", c.sample_prompt, "prompt of the samples (default: held-out text)")->group(g_out);
  cmd->add_flag("--save-f32", c.save_f32, "dense matrices of the final model in F32 (default F16)")->group(g_out);
  cmd->add_option("--seed", c.seed, "random seed")->group(g_out);
  cmd->add_option("--threads", a->threads, "OpenMP threads (default: all cores)")->group(g_out);
  cmd->add_flag("-q,--quiet", a->quiet, "no progress output");
  const char* g_dev = "Device";
  cmd->add_option("--device", a->device, "where the steps run: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->group(g_dev);
  cmd->add_flag("--fast", a->fast, "cuda: GEMMs on bf16 tensor cores (default: fp32, the CPU's results)")->group(g_dev);
  cmd->add_flag("--deterministic", a->deterministic,
                "cuda --fast: our attention kernels instead of cuDNN's (bitwise reproducible runs, ~5% slower)")
      ->group(g_dev);
  cmd->add_flag("--fused-dw", a->fused_dw,
                "cuda --fast on Hopper: weight gradients and vote casts in one fused kernel (slower today)")
      ->group(g_dev);
  cmd->add_flag("--fused-dequant", a->fused_dequant,
                "cuda --fast on Hopper: forward and input-gradient GEMMs dequantize the LUT indices in their loads "
                "(no bf16 copy of the weights; slower today)")
      ->group(g_dev);
  cmd->add_option("--memory", a->memory,
                  "cuda: device-memory budget, e.g. 8GiB; the planner picks how many layers to recompute, or names "
                  "the smallest budget that fits --batch (default: what is free)")
      ->group(g_dev);
  cmd->add_flag("--recompute", a->recompute, "cuda: recompute every layer's activations in the backward (least memory)")
      ->group(g_dev);
  cmd->add_option("--head-chunk", a->head_chunk, "cuda: rows of logits at once (default 128, 2048 with --fast)")
      ->check(CLI::NonNegativeNumber)
      ->group(g_dev);
  auto* g_eval = "Evaluation only";
  cmd->add_option("--eval-ppl", a->eval_ppl, "print the perplexity of --model on this text (llama.cpp definition) and exit")
      ->group(g_eval);
  cmd->add_option("-c,--ctx", a->ctx, "--eval-ppl window")->group(g_eval);
  cmd->add_option("--chunks", a->chunks, "--eval-ppl windows (default all)")->group(g_eval);

  cmd->callback([a] {
    train::TrainConfig& c = a->c;
    if (a->threads > 0) omp_set_num_threads(int(a->threads));
    train::TrainRunOptions o;
    o.stop_after = a->stop_after;
    o.tty = !a->quiet && isatty(2);
    if (!a->quiet) o.log = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
    set_engine(*a, o);
    if (!a->resume.empty()) {
      PRIMAL_CHECK(c.out.empty() || c.out == a->resume, "--resume {} and --out {} name different folders", a->resume,
                   c.out);
      c.out = a->resume;
      o.resume = true;
      o.steps_override = a->steps;
      const auto s = train::run_training(c, o);
      std::printf("trained %lld steps, %llu tokens; final loss %.4f, eval loss %.4f\n", (long long)s.steps,
                  (unsigned long long)s.tokens, s.last_loss, s.last_eval);
      return;
    }
    c.lut.type = a->lut_type == "none" ? DType::F32  // layers stay float
                                       : lut_type_for_bits(std::stoi(a->lut_type.substr(3)));
    if (a->group == "row") {
      c.lut.group = 0;
    } else {
      try {
        c.lut.group = std::stoll(a->group);
      } catch (const std::exception&) {
        fail("--group: '{}' is not a number or 'row'", a->group);
      }
      PRIMAL_CHECK(c.lut.group > 0, "--group must be positive or 'row'");
    }
    if (!a->eval_ppl.empty()) {
      PRIMAL_CHECK(!c.model.empty(), "--eval-ppl needs --model");
      const auto src = ModelSource::open(c.model);
      const train::TrainModel m = train::load_train_model(*src, c.lut, 0);
      const auto tok = Tokenizer::open(c.tokenizer.empty() ? c.model : c.tokenizer);
      std::ifstream in(a->eval_ppl, std::ios::binary);
      PRIMAL_CHECK(in, "{}: cannot open", a->eval_ppl);
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      const auto ids = tok->encode(text, false, false);
      const auto t0 = std::chrono::steady_clock::now();
      const auto r = train::perplexity(m, ids, a->ctx, tok->bos_id(), a->chunks, 4, [&](int64_t d, int64_t n, double p) {
        if (!a->quiet) std::fprintf(stderr, "\r[%lld/%lld] ppl %.4f", (long long)d, (long long)n, p);
      });
      if (!a->quiet) std::fprintf(stderr, "\n");
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("%s: ppl %.4f over %lld windows of %lld (%lld scored tokens, %.0f tokens/s)\n", a->eval_ppl.c_str(),
                  r.ppl, (long long)r.windows, (long long)a->ctx, (long long)r.scored,
                  double(r.windows * a->ctx) / s);
      return;
    }
    c.init_random = a->init == "random";
    PRIMAL_CHECK(!(c.init_random && !c.model.empty()), "--init random and --model exclude each other");
    PRIMAL_CHECK(!c.init_random || !c.shape.empty(), "--init random needs --shape");
    PRIMAL_CHECK(c.init_random || c.shape.empty(), "--shape is for --init random");
    PRIMAL_CHECK(c.init_random || !c.model.empty(), "train: give --model, or --init random --shape ...");
    PRIMAL_CHECK(!c.data.empty(), "train: --data is required");
    PRIMAL_CHECK(!c.out.empty(), "train: --out is required");
    PRIMAL_CHECK(a->steps > 0, "train: --steps must be positive");
    c.sched.steps = a->steps;
    if (c.sched.warmup < 0) c.sched.warmup = std::max<int64_t>(0, a->steps / 20);
    c.votes.rule = a->rule == "seed" ? train::Rule::Seed : train::Rule::Momentum;
    c.votes.second_moment = !a->no_second_moment;
    PRIMAL_CHECK(!(a->train_embd && a->freeze_embd) && !(a->train_head && a->freeze_head),
                 "--train-X and --freeze-X exclude each other");
    if (a->train_embd) c.train_embd = 1;
    if (a->freeze_embd) c.train_embd = 0;
    if (a->train_head) c.train_head = 1;
    if (a->freeze_head) c.train_head = 0;
    c.shuffle = !a->no_shuffle;
    c.preset = a->schedule;
    c.freeze_scales = a->freeze_scales;
    const auto s = train::run_training(c, o);
    std::printf("trained %lld steps, %llu tokens; loss %.4f -> %.4f, eval loss %.4f -> %.4f\n", (long long)s.steps,
                (unsigned long long)s.tokens, s.first_loss, s.last_loss, s.first_eval, s.last_eval);
  });
}

}  // namespace primal::cli
