// Training text: a list of documents found in files and folders, read and tokenized on demand.
//   - a text file is one document (cut at line ends into pieces of about 1 MiB, which are
//     continued without an EOS between them);
//   - a .jsonl file holds one document per non-empty line, the string field "text";
//   - a pre-tokenized file (token_file.h, written by `primal tokenize-data`) is a token stream
//     that already holds its EOS tokens (read in pieces of 1M tokens);
//   - a folder is walked recursively in sorted path order; files whose name does not end in one
//     of `extensions` are skipped (no filter: every file that does not look binary, i.e. has
//     no NUL byte in its first 8 KiB).
// Each document's tokens are followed by EOS (when the document ends there), so packing them
// back to back puts exactly one EOS between documents.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace primal {
class Tokenizer;
}

namespace primal::train {

enum class DocKind : uint8_t { Text, Jsonl, Tokens };

struct DocRef {
  uint32_t file = 0;
  uint64_t begin = 0, end = 0;  // bytes (text, jsonl line) or tokens (pre-tokenized)
  bool eos_after = true;        // append EOS after this document's tokens
};

struct CorpusOptions {
  std::vector<std::string> extensions;  // e.g. {".py"}; empty: any text file
  uint64_t chunk_bytes = 1 << 20;       // text pieces
  uint64_t chunk_tokens = 1 << 20;      // pre-tokenized pieces
};

class Corpus {
 public:
  // Throws Error naming the path for a missing path, an empty result, a named file that looks
  // binary, or a pre-tokenized file with a bad header.
  static Corpus scan(const std::vector<std::string>& paths, const CorpusOptions& o);

  size_t size() const { return docs_.size(); }
  const std::vector<DocRef>& docs() const { return docs_; }
  const std::vector<std::string>& files() const { return files_; }
  uint64_t bytes() const;  // text bytes (or 4 x tokens) over all documents

  // Tokens of document k (EOS appended when the document ends there). For a JSONL line that is
  // not an object with a string "text", throws naming the file and line. Thread-safe.
  std::vector<int32_t> tokenize(size_t k, const Tokenizer& tok, int32_t eos) const;

  // Holds out the tail for evaluation: the last ceil(frac * n) documents when there are at least
  // two (never all), or the last frac of a single text/token document (cut at a line end).
  void split_tail(double frac, Corpus& train, Corpus& held_out) const;

 private:
  std::vector<std::string> files_;
  std::vector<DocKind> kinds_;      // per file
  std::vector<uint32_t> token_bytes_;  // per file: 2 or 4 for pre-tokenized files
  std::vector<DocRef> docs_;
};

}  // namespace primal::train
