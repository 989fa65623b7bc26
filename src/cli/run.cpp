// primal run -m MODEL -p PROMPT -n N: prints the prompt, then streams the generated text.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <memory>

#include "cli/commands.h"
#include "cli/gen_options.h"
#include "core/error.h"
#include "infer/generate.h"
#include "infer/loaded_model.h"
#include "model/dump.h"

namespace primal::cli {
namespace {

struct RunOptions {
  GenOptions gen;
  std::string prompt;
  std::string prompt_file;
  int64_t n_predict = 128;
  bool ignore_eos = false;
  bool no_bos = false;
  std::string dump_dir;
  bool dump_summary = false;
};

void run(RunOptions& o) {
  LoadedModel lm = LoadedModel::open(o.gen.model);
  fmt::print(stderr, "primal: {}: {}\n", o.gen.model, lm.describe());
  const int64_t n_ctx = prepare_gen(o.gen, lm.model->hparams().n_ctx_train);
  if (!o.prompt_file.empty()) {
    std::ifstream f(o.prompt_file, std::ios::binary);
    if (!f) fail("{}: cannot open the prompt file", o.prompt_file);
    o.prompt.assign(std::istreambuf_iterator<char>(f), {});
  }
  const Tokenizer& tok = *lm.tokenizer;
  std::vector<int32_t> ids = tok.encode(o.prompt, false, true);
  if (!o.no_bos && tok.add_bos() && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
  if (ids.empty()) fail("the prompt is empty; give one with -p (or --no-bos off for a BOS-only start)");
  const int64_t n_predict = o.n_predict < 0 ? n_ctx - int64_t(ids.size()) : o.n_predict;
  if (int64_t(ids.size()) + n_predict > n_ctx)
    fail("the prompt ({} tokens) and {} tokens to generate exceed the context of {} tokens (raise it with -c)",
         ids.size(), n_predict, n_ctx);

  Generator gen = make_generator(lm.model->w, n_ctx, o.gen);
  DumpFn dump;
  if (!o.dump_dir.empty()) dump = npy_dumper(o.dump_dir);
  if (o.dump_summary) dump = both(dump, summary_dumper(stderr));

  fmt::print("{}", o.prompt);
  std::fflush(stdout);
  gen.set_context(ids, dump);
  Utf8Stream out;
  for (int64_t i = 0; i < n_predict; ++i) {
    const int32_t t = gen.sample();
    if (!o.ignore_eos && tok.is_eog(t)) break;
    // Special tokens are not printed (as llama.cpp does by default).
    if (!tok.is_special(t)) {
      fmt::print("{}", out.push(tok.token_to_piece(t)));
      std::fflush(stdout);
    }
    if (i + 1 < n_predict) gen.push(t);
  }
  fmt::print("{}\n", out.flush());
  std::fflush(stdout);
  print_speed(gen.stats());
}

}  // namespace

void register_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "Generate text from a prompt (GPU when present, else the CPU reference path)");
  add_gen_options(cmd, o->gen);
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text");
  cmd->add_option("-f,--file", o->prompt_file, "Read the prompt from a file")->check(CLI::ExistingFile);
  cmd->add_option("-n,--n-predict", o->n_predict, "Tokens to generate; -1 = until the context is full")
      ->capture_default_str();
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep generating past end-of-generation tokens");
  cmd->add_flag("--no-bos", o->no_bos, "Do not start with BOS even when the vocabulary adds one");
  cmd->add_option("--dump-dir", o->dump_dir, "Write every named intermediate of the prompt pass as DIR/NAME.npy");
  cmd->add_flag("--dump-summary", o->dump_summary, "Print one line per named intermediate of the prompt pass");
  cmd->callback([o] { run(*o); });
}

}  // namespace primal::cli
