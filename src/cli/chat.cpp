// primal chat -m MODEL [--system TEXT]: an interactive conversation in the model's chat format.
// Each user line becomes a turn; the reply streams on stdout. "/exit" or end of input quits,
// "/clear" forgets the conversation. -p gives a first user message without typing it.
#include <fmt/format.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/gen_options.h"
#include "core/error.h"
#include "infer/chat_template.h"
#include "infer/generate.h"
#include "infer/loaded_model.h"

namespace primal::cli {
namespace {

struct ChatOptions {
  GenOptions gen;
  std::string system;
  std::string prompt;
  int64_t n_predict = -1;  // most tokens per reply; -1 = until the turn ends or the context is full
};

// Generates one assistant reply, streaming it; returns its text without the turn-end marker.
std::string reply(Generator& gen, const Tokenizer& tok, ChatFormat fmt_, int64_t n_predict) {
  const std::string end = chat_turn_end(fmt_);
  std::string text, shown;
  Utf8Stream out;
  for (int64_t i = 0; n_predict < 0 || i < n_predict; ++i) {
    if (int64_t(gen.context().size()) >= gen.n_ctx()) {
      fmt::print(stderr, "\nprimal: the context of {} tokens is full; /clear starts over\n", gen.n_ctx());
      break;
    }
    const int32_t t = gen.sample();
    if (tok.is_eog(t)) break;
    gen.push(t);
    if (tok.is_special(t)) continue;
    text += tok.token_to_piece(t);
    // The turn-end marker may come as plain text when the vocabulary lacks it as a token.
    if (const size_t at = text.find(end); at != std::string::npos) {
      text.resize(at);
      break;
    }
    // Hold back what could be the start of the marker.
    size_t safe = text.size();
    for (size_t k = 1; k < end.size() && k <= text.size(); ++k)
      if (text.compare(text.size() - k, k, end, 0, k) == 0) safe = text.size() - k;
    if (safe > shown.size()) {
      fmt::print("{}", out.push(text.substr(shown.size(), safe - shown.size())));
      shown = text.substr(0, safe);
      std::fflush(stdout);
    }
  }
  if (text.size() > shown.size()) fmt::print("{}", out.push(text.substr(shown.size())));
  fmt::print("{}\n", out.flush());
  std::fflush(stdout);
  return text;
}

void chat(ChatOptions& o) {
  LoadedModel lm = LoadedModel::open(o.gen.model);
  const ChatFormat cf = lm.chat_format();
  fmt::print(stderr, "primal: {}: {}\nprimal: chat format {}{}\n", o.gen.model, lm.describe(), chat_format_name(cf),
             lm.chat_template.empty() ? " (the model has no chat template)" : "");
  const int64_t n_ctx = prepare_gen(o.gen, lm.model->hparams().n_ctx_train);
  const Tokenizer& tok = *lm.tokenizer;
  Generator gen = make_generator(lm.model->w, n_ctx, o.gen);

  std::vector<ChatMessage> msgs;
  if (!o.system.empty()) msgs.push_back({"system", o.system});
  const size_t n_base = msgs.size();
  std::string line = o.prompt;
  bool have_line = !line.empty();
  while (true) {
    if (!have_line) {
      fmt::print(stderr, "> ");
      std::fflush(stderr);
      if (!std::getline(std::cin, line)) break;
    }
    have_line = false;
    if (line == "/exit") break;
    if (line == "/clear") {
      msgs.resize(n_base);
      fmt::print(stderr, "primal: conversation cleared\n");
      continue;
    }
    if (line.empty()) continue;
    msgs.push_back({"user", line});
    // The whole conversation is re-tokenized; the generator reuses the cached common prefix.
    std::vector<int32_t> ids = tok.encode(format_chat(cf, msgs, true), false, true);
    if (tok.add_bos() && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
    gen.set_context(ids);
    msgs.push_back({"assistant", reply(gen, tok, cf, o.n_predict)});
  }
  print_speed(gen.stats());
}

}  // namespace

void register_chat(CLI::App& app) {
  auto o = std::make_shared<ChatOptions>();
  auto* cmd = app.add_subcommand("chat", "Interactive chat in the model's chat format (GPU when present, else CPU)");
  add_gen_options(cmd, o->gen);
  cmd->add_option("--system", o->system, "System message");
  cmd->add_option("-p,--prompt", o->prompt, "First user message (then the conversation goes on from stdin)");
  cmd->add_option("-n,--n-predict", o->n_predict, "Most tokens per reply; -1 = until the turn ends")
      ->capture_default_str();
  cmd->callback([o] { chat(*o); });
}

}  // namespace primal::cli
