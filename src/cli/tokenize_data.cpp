// primal tokenize-data: a corpus (text files, folders, JSONL) into one pre-tokenized token file
// (src/train/token_file.h) that `primal train --data` reads without tokenizing again.
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "train/corpus.h"
#include "train/token_file.h"

namespace primal::cli {

void register_tokenize_data(CLI::App& app) {
  struct Args {
    std::vector<std::string> inputs, ext;
    std::string tokenizer, out;
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("tokenize-data", "Pre-tokenize a corpus into a token file for primal train");
  cmd->add_option("inputs", a->inputs, "text files, folders, .jsonl files")->required()->expected(1, -1);
  cmd->add_option("--tokenizer", a->tokenizer, "tokenizer: a GGUF model or vocabulary, or an HF folder")->required();
  cmd->add_option("-o,--out", a->out, "output token file")->required();
  cmd->add_option("--ext", a->ext, "only files ending so in folders (e.g. .py)")->expected(1, -1);
  cmd->add_flag("-q,--quiet", a->quiet, "no progress output");
  cmd->callback([a] {
    const auto tok = Tokenizer::open(a->tokenizer);
    const int32_t eos = tok->eos_id();
    PRIMAL_CHECK(eos >= 0, "{}: the tokenizer has no EOS token to separate documents", a->tokenizer);
    train::CorpusOptions co;
    co.extensions = a->ext;
    const train::Corpus c = train::Corpus::scan(a->inputs, co);
    train::TokenFileWriter w(a->out, uint32_t(tok->n_vocab()), eos);
    // Documents are tokenized in parallel a block at a time and written in order.
    constexpr size_t kBlock = 256;
    std::vector<std::vector<int32_t>> ids(kBlock);
    for (size_t b = 0; b < c.size(); b += kBlock) {
      const size_t n = std::min(kBlock, c.size() - b);
      std::exception_ptr err;
#pragma omp parallel for schedule(dynamic, 1)
      for (size_t k = 0; k < n; ++k) {
        try {
          ids[k] = c.tokenize(b + k, *tok, eos);
        } catch (...) {
#pragma omp critical
          if (!err) err = std::current_exception();
        }
      }
      if (err) std::rethrow_exception(err);
      for (size_t k = 0; k < n; ++k) w.write(ids[k]);
      if (!a->quiet)
        std::fprintf(stderr, "\r%zu/%zu documents, %llu tokens", b + n, c.size(), (unsigned long long)w.count());
    }
    w.finish();
    if (!a->quiet) std::fprintf(stderr, "\n");
    std::printf("%s: %llu tokens from %zu documents (%.1f MB of text)\n", a->out.c_str(),
                (unsigned long long)w.count(), c.size(), double(c.bytes()) * 1e-6);
  });
}

}  // namespace primal::cli
