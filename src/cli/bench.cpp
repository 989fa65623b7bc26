// primal bench -m MODEL -p 512 -n 128 -r 3 [--json]: prompt processing and generation speed as
// llama-bench measures them, plus the share of the bandwidth floor reached by generation.
//   pp<N>: N prompt tokens in one pass from an empty cache (the logits of the last one only);
//   tg<N>: N tokens generated one by one from an empty cache, each step a forward pass of one
//          token and the choice of the next (argmax, on the GPU for cuda), host-synchronized;
//   floor: weight bytes read per generated token / memory bandwidth (--bandwidth, default the
//          3.0 TB/s measured device-to-device on the H100 of this project).
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/commands.h"
#include "cli/device.h"
#include "core/error.h"
#include "infer/backend.h"
#include "model/weights.h"

namespace primal::cli {
namespace {

struct BenchCli {
  std::string model, device;
  int64_t n_prompt = 512, n_gen = 128;
  int reps = 3;
  double bandwidth = 3.0e12;
  bool json = false;
  std::string json_out;  // also write the JSON here (the table still goes to stdout)
};

struct Stat {
  double mean = 0, sd = 0;
  std::vector<double> samples;
};

Stat stats(const std::vector<double>& v) {
  Stat s;
  s.samples = v;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / double(v.size() - 1)) : 0.0;
  return s;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string human_params(double n) {
  return n >= 1e9 ? fmt::format("{:.2f} B", n / 1e9) : fmt::format("{:.2f} M", n / 1e6);
}

void run_bench(const BenchCli& c) {
  auto m = Model::open(c.model);
  const LlamaWeights& w = m->w;
  const HParams& hp = w.hp;
  size_t bytes = 0;
  double params = 0;
  for (const TensorRef& t : m->source->tensors()) bytes += t.nbytes, params += double(t.nelements());
  const std::string label = fmt::format("{} {} {}", hp.arch, human_params(params), dtype_name(w.layers[0].w_gate->type));
  const int64_t n_ctx = std::max<int64_t>(c.n_prompt + c.n_gen, 16);
  auto be = make_backend(w, n_ctx, c.device, std::max<int64_t>(c.n_prompt, 1));
  const size_t floor_bytes = decode_weight_bytes(w);
  const double floor_tps = c.bandwidth / double(floor_bytes);

  std::mt19937 rng(42);
  std::uniform_int_distribution<int32_t> any(0, int32_t(hp.n_vocab - 1));
  auto prompt = [&](int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = any(rng);
    return t;
  };
  auto pp = [&](int64_t n) {
    const auto toks = prompt(n);
    be->truncate(0);
    const double t0 = now_s();
    be->forward(toks.data(), n, 1, nullptr);
    be->top_k(1, 1.0f, {});  // waits for the pass to finish
    return now_s() - t0;
  };
  auto tg = [&](int64_t n) {
    be->truncate(0);
    int32_t tok = any(rng);
    const double t0 = now_s();
    for (int64_t i = 0; i < n; ++i) {
      be->forward(&tok, 1, 1, nullptr);
      tok = be->top_k(1, 1.0f, {})[0].id;
    }
    return now_s() - t0;
  };
  // Warm-up: kernel loading, cuBLAS heuristics, the decode graph's capture.
  if (c.n_prompt > 0) pp(c.n_prompt);
  if (c.n_gen > 0) tg(std::min<int64_t>(c.n_gen, 8));

  nlohmann::json out = nlohmann::json::array();
  auto row = [&](const std::string& test, int64_t n_p, int64_t n_g, const Stat& s, bool floor) {
    const std::string pct = floor ? fmt::format("{:.1f}%", 100.0 * s.mean / floor_tps) : "";
    if (!c.json)
      fmt::print("| {:<30} | {:>7.2f} GiB | {:>10} | {:<10} | {:>6} | {:>10.2f} ± {:<8.2f} | {:>7} |\n", label,
                 double(bytes) / (1ull << 30), human_params(params), be->name().substr(0, 10), test, s.mean, s.sd, pct);
    out.push_back({{"model", label},
                   {"model_file", c.model},
                   {"size", bytes},
                   {"params", params},
                   {"backend", be->name()},
                   {"test", test},
                   {"n_prompt", n_p},
                   {"n_gen", n_g},
                   {"avg_ts", s.mean},
                   {"stddev_ts", s.sd},
                   {"samples_ts", s.samples},
                   {"weight_bytes_per_token", floor_bytes},
                   {"floor_ts", floor_tps},
                   {"floor_pct", floor ? 100.0 * s.mean / floor_tps : 0.0}});
  };
  if (!c.json) {
    fmt::print("| {:<30} | {:>11} | {:>10} | {:<10} | {:>6} | {:>21} | {:>7} |\n", "model", "size", "params",
               "backend", "test", "t/s", "% floor");
    fmt::print("| {:-<30} | {:->11} | {:->10} | {:-<10} | {:->6} | {:->21} | {:->7} |\n", "", "", "", "", "", "", "");
  }
  if (c.n_prompt > 0) {
    std::vector<double> v;
    for (int r = 0; r < c.reps; ++r) v.push_back(double(c.n_prompt) / pp(c.n_prompt));
    row(fmt::format("pp{}", c.n_prompt), c.n_prompt, 0, stats(v), false);
  }
  if (c.n_gen > 0) {
    std::vector<double> v;
    for (int r = 0; r < c.reps; ++r) v.push_back(double(c.n_gen) / tg(c.n_gen));
    row(fmt::format("tg{}", c.n_gen), 0, c.n_gen, stats(v), true);
  }
  if (!c.json_out.empty()) {
    std::ofstream f(c.json_out);
    f << out.dump(2) << "\n";
    if (!f) fail("{}: cannot write the JSON results", c.json_out);
  }
  if (c.json) {
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("\nfloor: {:.1f} MB of weights per token at {:.2f} TB/s = {:.0f} t/s\n", double(floor_bytes) / 1e6,
               c.bandwidth / 1e12, floor_tps);
  }
}

}  // namespace

void register_bench(CLI::App& app) {
  auto c = std::make_shared<BenchCli>();
  auto* cmd = app.add_subcommand("bench", "Benchmark prompt processing and generation speed (llama-bench style)");
  cmd->add_option("-m,--model", c->model, "Model: a GGUF file or an HF checkpoint folder")->required();
  cmd->add_option("-p,--n-prompt", c->n_prompt, "Prompt tokens of the pp test (0: skip)")->capture_default_str();
  cmd->add_option("-n,--n-gen", c->n_gen, "Generated tokens of the tg test (0: skip)")->capture_default_str();
  cmd->add_option("-r,--repetitions", c->reps, "Repetitions of each test")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--bandwidth", c->bandwidth, "Memory bandwidth in bytes/s for the floor")->capture_default_str();
  cmd->add_flag("--json", c->json, "Print the results as JSON");
  cmd->add_option("--json-out", c->json_out, "Also write the results as JSON to this file");
  add_device_option(cmd, c->device);
  cmd->callback([c] { run_bench(*c); });
}

}  // namespace primal::cli
