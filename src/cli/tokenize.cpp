// primal tokenize -m MODEL TEXT: token ids of a text (or, with --decode, the text of ids) with the
// vocabulary of a GGUF file, an HF checkpoint folder or a tiktoken tokenizer.model.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace primal::cli {
namespace {

struct TokenizeOptions {
  std::string model;
  std::vector<std::string> text;  // positional words, joined by spaces
  std::string prompt;
  std::string file;
  bool from_stdin = false;
  bool pieces = false;
  bool decode = false;
  bool no_bos = false;
  bool parse_special = false;
  bool no_parse_special = false;  // llama-tokenize's flag; here it is the default
  bool skip_special = false;
  bool show_count = false;
  bool info = false;
  bool prompt_given = false;  // -p "" is an empty text, not a missing one
};

std::string read_all(std::istream& in) {
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A piece for humans: printable UTF-8 as is, control characters and stray bytes escaped.
std::string escape_piece(const std::string& s) {
  std::string out;
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t start = pos;
    const uint32_t c = unicode::decode_one(s, pos);
    const bool bad = c == unicode::kReplacement && !(pos - start == 3 && s.compare(start, 3, "\xEF\xBF\xBD") == 0);
    if (bad) {
      for (size_t k = start; k < pos; ++k) out += fmt::format("\\x{:02x}", uint8_t(s[k]));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out.append(s, start, pos - start);
    }
  }
  return out;
}

// "1 2 3", "1,2,3" or "[1, 2, 3]"
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string cur;
  auto flush = [&] {
    if (cur.empty()) return;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(cur, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    PRIMAL_CHECK(used == cur.size() && v >= INT32_MIN && v <= INT32_MAX, "--decode: '{}' is not a token id", cur);
    ids.push_back(int32_t(v));
    cur.clear();
  };
  for (const char c : s) {
    if (c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']') {
      flush();
    } else {
      cur.push_back(c);
    }
  }
  flush();
  return ids;
}

void run_tokenize(const TokenizeOptions& o) {
  const int sources = int(!o.text.empty()) + int(o.prompt_given) + int(!o.file.empty()) + int(o.from_stdin);
  PRIMAL_CHECK(sources <= 1, "give the text one way only: TEXT, -p, -f or --stdin");
  PRIMAL_CHECK(sources == 1, "no text: give TEXT, -p TEXT, -f FILE or --stdin");
  std::string input;
  if (!o.file.empty()) {
    std::ifstream in(o.file, std::ios::binary);
    PRIMAL_CHECK(in, "{}: cannot open", o.file);
    input = read_all(in);
  } else if (o.from_stdin) {
    input = read_all(std::cin);
  } else if (o.prompt_given) {
    input = o.prompt;
  } else {
    for (size_t i = 0; i < o.text.size(); ++i) input += (i ? " " : "") + o.text[i];
  }

  const auto tok = Tokenizer::open(o.model);
  if (o.info) fmt::print(stderr, "{}\n", tok->describe());

  if (o.decode) {
    const std::vector<int32_t> ids = parse_ids(input);
    const std::string text = tok->decode(ids, o.skip_special);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    return;
  }

  const std::vector<int32_t> ids = tok->encode(input, !o.no_bos, o.parse_special);
  if (o.pieces) {
    for (const int32_t id : ids) {
      fmt::print("{:>7} '{}'\n", id, escape_piece(tok->token_to_piece(id)));
    }
  } else {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stdout);
  }
  if (o.show_count) fmt::print(stderr, "Total number of tokens: {}\n", ids.size());
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  auto* cmd = app.add_subcommand("tokenize", "Tokenize text with a model's vocabulary (or decode ids with --decode)");
  cmd->footer(
      "MODEL is a GGUF file (vocab-only or a full model), an HF checkpoint folder with tokenizer.json,\n"
      "or a tiktoken tokenizer.model (Llama 3). Prints the ids on one line separated by spaces.\n"
      "BOS/EOS are added as the vocabulary's metadata says (tokenizer.ggml.add_bos_token, ...) unless\n"
      "--no-bos. Special-token text such as <|endoftext|> is plain text unless --parse-special\n"
      "(llama-tokenize parses it by default; primal follows the llama.cpp library default).\n\n"
      "Examples:\n"
      "  primal tokenize -m model.gguf \"Hello world\"\n"
      "  primal tokenize -m hf-folder/ -f prompt.txt --pieces\n"
      "  primal tokenize -m model.gguf --decode \"15496 995\"");
  cmd->add_option("-m,--model", o->model, "GGUF file, HF folder, or tiktoken tokenizer.model")->required();
  cmd->add_option("text", o->text, "Text to tokenize (with --decode: token ids)");
  auto* prompt = cmd->add_option("-p,--prompt", o->prompt, "Text to tokenize (same as TEXT)");
  cmd->add_option("-f,--file", o->file, "Read the text from a file (bytes as they are)")->check(CLI::ExistingFile);
  cmd->add_flag("--stdin", o->from_stdin, "Read the text from standard input");
  cmd->add_flag("--pieces", o->pieces, "One token per line: id and the text it stands for");
  cmd->add_flag("--decode", o->decode, "The input is token ids ('1 2 3', '1,2,3' or '[1, 2, 3]'); print their text");
  cmd->add_flag("--no-bos", o->no_bos, "Add no BOS/EOS even if the vocabulary asks for them");
  cmd->add_flag("--parse-special", o->parse_special, "Turn special-token text (<|endoftext|>, <s>, ...) into those tokens");
  cmd->add_flag("--no-parse-special", o->no_parse_special, "Keep special-token text as text (the default)")
      ->excludes(cmd->get_option("--parse-special"));
  cmd->add_flag("--skip-special", o->skip_special, "With --decode: leave special tokens (BOS, EOS, ...) out of the text");
  cmd->add_flag("--show-count", o->show_count, "Print the number of tokens on stderr");
  cmd->add_flag("--info", o->info, "Describe the tokenizer on stderr");
  cmd->callback([o, prompt] {
    o->prompt_given = prompt->count() > 0;
    run_tokenize(*o);
  });
}

}  // namespace primal::cli
