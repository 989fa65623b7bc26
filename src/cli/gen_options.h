// Options shared by `run` and `chat`: sampling, context, threads, and the speed report.
#pragma once
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

#include "cli/device.h"
#include "infer/generate.h"
#include "infer/sampler.h"

namespace primal::cli {

struct GenOptions {
  std::string model;
  SamplerParams sampling;
  int64_t seed = -1;     // -1: random (printed, so that the run can be repeated)
  int64_t n_ctx = 0;     // 0: the model's training context
  int64_t n_batch = 512;
  int threads = 0;       // 0: OpenMP's default (all cores)
  std::string device;    // "cpu", "cuda", "" (cuda when a GPU is present)
};

inline void add_gen_options(CLI::App* cmd, GenOptions& o) {
  cmd->add_option("-m,--model", o.model, "Model: a GGUF file or an HF checkpoint folder")->required();
  cmd->add_option("--temp", o.sampling.temperature, "Temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", o.sampling.top_k, "Top-k sampling; 0 = off")->capture_default_str();
  cmd->add_option("--top-p", o.sampling.top_p, "Top-p (nucleus) sampling; 1 = off")->capture_default_str();
  cmd->add_option("--min-p", o.sampling.min_p, "Min-p sampling; 0 = off")->capture_default_str();
  cmd->add_option("--repeat-penalty", o.sampling.repeat_penalty, "Repetition penalty; 1 = off")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", o.sampling.repeat_last_n, "Tokens the repetition penalty looks back on")
      ->capture_default_str();
  cmd->add_option("-s,--seed", o.seed, "Random seed; -1 = random")->capture_default_str();
  cmd->add_option("-c,--ctx-size", o.n_ctx, "Context size in tokens; 0 = the model's training context")
      ->capture_default_str();
  cmd->add_option("-b,--batch-size", o.n_batch, "Most prompt tokens per forward pass")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("-t,--threads", o.threads, "CPU threads; 0 = all cores")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o.device);
}

// The generator for the options' device, with its backend named on stderr.
inline Generator make_generator(const LlamaWeights& w, int64_t n_ctx, const GenOptions& o) {
  auto be = make_backend(w, n_ctx, o.device, o.n_batch);
  fmt::print(stderr, "primal: running on {}\n", be->name());
  return Generator(std::move(be), o.sampling, o.n_batch);
}

// Applies threads and seed; returns the context size to use.
inline int64_t prepare_gen(GenOptions& o, int64_t n_ctx_train) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  if (o.seed < 0) {
    o.seed = int64_t(std::random_device{}() & 0x7fffffff);
    if (o.sampling.temperature > 0) fmt::print(stderr, "primal: seed {}\n", o.seed);
  }
  o.sampling.seed = uint64_t(o.seed);
  const int64_t n_ctx = o.n_ctx > 0 ? o.n_ctx : (n_ctx_train > 0 ? n_ctx_train : 4096);
  return n_ctx;
}

// llama.cpp's closing report: prompt processing and generation speed.
inline void print_speed(const GenerateStats& s) {
  auto line = [](const char* what, double sec, int64_t n, const char* unit) {
    const double ms = sec * 1e3;
    fmt::print(stderr, "primal: {:>17} = {:10.2f} ms / {:5} {} ({:8.2f} ms per token, {:9.2f} tokens per second)\n",
               what, ms, n, unit, n ? ms / double(n) : 0.0, sec > 0 ? double(n) / sec : 0.0);
  };
  line("prompt eval time", s.prompt_s, s.n_prompt, "tokens");
  line("eval time", s.decode_s, s.n_decode, "runs  ");
}

}  // namespace primal::cli
