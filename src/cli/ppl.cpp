// primal ppl -m MODEL -f TEXT -c N [--chunks K]: perplexity as llama.cpp's llama-perplexity
// computes it (see infer/perplexity.h); progress with the running estimate on stderr, and the
// last line "Final estimate: PPL = X +/- Y" on stdout.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "infer/loaded_model.h"
#include "cli/device.h"
#include "infer/perplexity.h"

namespace primal::cli {
namespace {

struct PplOptions {
  std::string model, file, bos = "auto";
  int64_t n_ctx = 512, n_chunks = -1, n_batch = 512;
  std::string device;
  int threads = 0;
};

std::string clock_text(double s) {
  const int64_t t = int64_t(s + 0.5);
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60) : fmt::format("{}:{:02}", t / 60, t % 60);
}

void ppl(const PplOptions& o) {
  if (o.threads > 0) omp_set_num_threads(o.threads);
  LoadedModel lm = LoadedModel::open(o.model);
  fmt::print(stderr, "primal: {}: {}\n", o.model, lm.describe());
  std::ifstream f(o.file, std::ios::binary);
  if (!f) fail("{}: cannot open the text file", o.file);
  const std::string text(std::istreambuf_iterator<char>(f), {});
  const Tokenizer& tok = *lm.tokenizer;

  // The text is tokenized as llama.cpp does (add_special: a BOS first when the vocabulary adds
  // one, no parsing of special-token text). BOS replaces position 0 of every window when the
  // vocabulary adds BOS (auto) or when asked (--bos yes: what reference.json's figure for
  // ref-llama-code uses, whose GPT-2 vocabulary does not add BOS).
  bool bos = tok.add_bos();
  if (o.bos == "yes") bos = true;
  else if (o.bos == "no") bos = false;
  if (bos && tok.bos_id() < 0) fail("{}: the vocabulary has no BOS token (use --bos no)", o.model);
  std::vector<int32_t> tokens = tok.encode(text, false, false);
  const size_t n_text = tokens.size();
  const bool prepend = bos && tok.add_bos();
  if (prepend) tokens.insert(tokens.begin(), tok.bos_id());

  PerplexityOptions po;
  po.n_ctx = o.n_ctx;
  po.n_chunks = o.n_chunks;
  po.n_batch = o.n_batch;
  po.bos_id = bos ? tok.bos_id() : -1;
  const int64_t n_chunk_max = int64_t(tokens.size()) / o.n_ctx;
  fmt::print(stderr, "primal: {}: {} bytes, {} tokens{}; {} of {} windows of {} tokens, BOS {}, {} threads\n", o.file,
             text.size(), n_text, prepend ? " + BOS" : "", o.n_chunks < 0 ? n_chunk_max : std::min(o.n_chunks, n_chunk_max),
             n_chunk_max, o.n_ctx, bos ? fmt::format("{} at each window start", tok.bos_id()) : "none",
             omp_get_max_threads());

  const bool tty = isatty(fileno(stderr));
  int64_t last_pct = -1;
  auto progress = [&](int64_t done, int64_t total, double ppl, double sec) {
    const double eta = sec / double(done) * double(total - done);
    if (tty) {
      const int width = 30, fill = int(width * done / total);
      fmt::print(stderr, "\r[{}{}] {}/{} PPL {:.4f}  {} < {}   ", std::string(size_t(fill), '#'),
                 std::string(size_t(width - fill), '.'), done, total, ppl, clock_text(sec), clock_text(eta));
      if (done == total) fmt::print(stderr, "\n");
    } else if (const int64_t pct = 100 * done / total; pct / 10 != last_pct / 10 || done == total) {
      // Logs get a line per 10%, not a carriage-return bar.
      fmt::print(stderr, "[{}/{}] PPL {:.4f}  {} < {}\n", done, total, ppl, clock_text(sec), clock_text(eta));
      last_pct = pct;
    }
  };
  auto be = make_backend(lm.model->w, o.n_ctx, o.device, o.n_batch);
  fmt::print(stderr, "primal: running on {}\n", be->name());
  const PerplexityResult r = perplexity(*be, tokens, po, progress);
  fmt::print(stderr, "primal: scored {} tokens in {} windows, {:.1f} s ({:.1f} tokens/s through the model)\n",
             r.n_scored, r.n_chunks, r.seconds, double(r.n_chunks * o.n_ctx) / r.seconds);
  fmt::print("Final estimate: PPL = {:.4f} +/- {:.5f}\n", r.ppl, r.ppl_err);
}

}  // namespace

void register_ppl(CLI::App& app) {
  auto o = std::make_shared<PplOptions>();
  auto* cmd = app.add_subcommand("ppl", "Perplexity of a text file, as llama.cpp's llama-perplexity computes it");
  cmd->add_option("-m,--model", o->model, "Model: a GGUF file or an HF checkpoint folder")->required();
  cmd->add_option("-f,--file", o->file, "Text file")->required()->check(CLI::ExistingFile);
  cmd->add_option("-c,--ctx-size", o->n_ctx, "Window size in tokens (the second half of each is scored)")
      ->capture_default_str()->check(CLI::Range(int64_t(4), int64_t(1) << 20));
  cmd->add_option("--chunks", o->n_chunks, "Windows to score; -1 = all")->capture_default_str();
  cmd->add_option("-b,--batch-size", o->n_batch, "Most tokens per forward pass")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--bos", o->bos, "BOS at each window start: auto (as the vocabulary adds it), yes, no")
      ->capture_default_str()->check(CLI::IsMember({"auto", "yes", "no"}));
  add_device_option(cmd, o->device);
  cmd->add_option("-t,--threads", o->threads, "CPU threads; 0 = all cores")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->callback([o] { ppl(*o); });
}

}  // namespace primal::cli
