// Pre-tokenized corpora (`primal tokenize-data`): a header and the token stream, documents
// already separated by EOS.
//   offset 0   char[8]  "PRMLTOK1"
//          8   u32      token width in bytes (2 when every id < 65536, else 4)
//         12   u32      vocabulary size of the tokenizer
//         16   i32      EOS id (-1: none)
//         20   u32      reserved (0)
//         24   u64      number of tokens n
//         32   n tokens, little-endian, of the given width
// The file is written under a temporary name and renamed when complete.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace primal::train {

struct TokenFileHeader {
  uint32_t width = 2;
  uint32_t vocab = 0;
  int32_t eos = -1;
  uint64_t n_tokens = 0;
};

constexpr uint64_t kTokenFileHeaderBytes = 32;

// Reads and checks the header (magic, width, size consistent with the file); throws naming path.
TokenFileHeader read_token_file_header(const std::string& path);
bool is_token_file(const std::string& path);  // starts with the magic

// Tokens [begin, end) of a token file.
std::vector<int32_t> read_tokens(const std::string& path, const TokenFileHeader& h, uint64_t begin, uint64_t end);

// Streams tokens into a new token file (atomic: temporary name + rename on finish()).
class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, uint32_t vocab, int32_t eos);
  ~TokenFileWriter();  // removes the temporary file unless finished
  void write(const std::vector<int32_t>& tokens);
  uint64_t count() const { return n_; }
  void finish();

 private:
  std::string path_, tmp_;
  uint32_t vocab_, width_;
  int32_t eos_;
  uint64_t n_ = 0;
  void* f_ = nullptr;  // FILE*
  bool done_ = false;
};

}  // namespace primal::train
