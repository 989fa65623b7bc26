// primal synth --shape S --type T OUT.gguf: a random-weight model of a real shape (model/synth.h).
#include <fmt/format.h>

#include <chrono>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "model/synth.h"

namespace primal::cli {
namespace {

struct SynthCli {
  std::string shape, type = "F16", out;
  uint64_t seed = 1;
  int64_t layers = 0, ctx = 0;
  bool quiet = false;
};

void run_synth(const SynthCli& c) {
  SynthShape s = synth_shape(c.shape);
  if (c.layers > 0) s.n_layer = c.layers;
  if (c.ctx > 0) s.n_ctx = c.ctx;
  SynthOptions o;
  const auto t = dtype_from_name(c.type);
  if (!t) fail("--type {}: unknown type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K .. Q6_K, IQ4_NL)", c.type);
  o.type = *t;
  o.seed = c.seed;
  const auto t0 = std::chrono::steady_clock::now();
  if (!c.quiet)
    o.progress = [](size_t i, size_t n, const std::string& name) {
      if (i == n || i % 16 == 0) fmt::print(stderr, "\rprimal: synth: {}/{} tensors ({})          ", i, n, name);
    };
  write_synth_gguf(s, o, c.out);
  if (!c.quiet)
    fmt::print(stderr, "\nprimal: wrote {} ({} {}, {} layers) in {:.1f} s\n", c.out, s.name, dtype_name(o.type),
               s.n_layer, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace

void register_synth(CLI::App& app) {
  auto c = std::make_shared<SynthCli>();
  auto* cmd = app.add_subcommand("synth", "Write a random-weight GGUF of a real model shape (for benchmarks)");
  cmd->add_option("--shape", c->shape, "Shape: " + synth_shape_names())->required();
  cmd->add_option("--type", c->type, "Type of the matrices (the head follows llama-quantize's choice)")
      ->capture_default_str();
  cmd->add_option("out", c->out, "Output GGUF file")->required();
  cmd->add_option("--seed", c->seed, "Random seed")->capture_default_str();
  cmd->add_option("--layers", c->layers, "Override the number of layers (small test models)");
  cmd->add_option("--ctx", c->ctx, "Override the training context length written to the metadata");
  cmd->add_flag("-q,--quiet", c->quiet, "No progress on stderr");
  cmd->callback([c] { run_synth(*c); });
}

}  // namespace primal::cli
