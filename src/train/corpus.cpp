#include "train/corpus.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "train/token_file.h"

namespace primal::train {
namespace fs = std::filesystem;
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_range(const std::string& path, uint64_t begin, uint64_t end) {
  std::ifstream in(path, std::ios::binary);
  PRIMAL_CHECK(in, "{}: cannot open: {}", path, std::strerror(errno));
  std::string s(size_t(end - begin), '\0');
  in.seekg(std::streamoff(begin));
  PRIMAL_CHECK(in.read(s.data(), std::streamsize(s.size())), "{}: cannot read bytes {}..{} (file changed?)", path,
               begin, end);
  return s;
}

bool looks_binary(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char buf[8192];
  in.read(buf, sizeof buf);
  return std::memchr(buf, 0, size_t(in.gcount())) != nullptr;
}

}  // namespace

Corpus Corpus::scan(const std::vector<std::string>& paths, const CorpusOptions& o) {
  PRIMAL_CHECK(!paths.empty(), "no data given");
  Corpus c;
  // Expand folders (sorted, recursive) into files.
  std::vector<std::pair<std::string, bool>> files;  // path, named explicitly
  for (const std::string& p : paths) {
    std::error_code ec;
    const auto st = fs::status(p, ec);
    PRIMAL_CHECK(!ec && fs::exists(st), "{}: no such file or folder", p);
    if (fs::is_directory(st)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(p, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (!it->is_regular_file(ec)) continue;
        const std::string f = it->path().string();
        if (!o.extensions.empty() &&
            std::none_of(o.extensions.begin(), o.extensions.end(), [&](const std::string& e) { return ends_with(f, e); }))
          continue;
        found.push_back(f);
      }
      PRIMAL_CHECK(!ec, "{}: cannot walk the folder: {}", p, ec.message());
      std::sort(found.begin(), found.end());
      for (auto& f : found) files.emplace_back(f, false);
    } else {
      files.emplace_back(p, true);
    }
  }
  for (const auto& [path, named] : files) {
    const uint64_t size = fs::file_size(path);
    if (size == 0) continue;
    const uint32_t fi = uint32_t(c.files_.size());
    if (is_token_file(path)) {
      const TokenFileHeader h = read_token_file_header(path);
      c.files_.push_back(path);
      c.kinds_.push_back(DocKind::Tokens);
      c.token_bytes_.push_back(h.width);
      for (uint64_t b = 0; b < h.n_tokens; b += o.chunk_tokens)
        c.docs_.push_back(DocRef{fi, b, std::min(h.n_tokens, b + o.chunk_tokens), false});
      continue;
    }
    if (looks_binary(path)) {
      PRIMAL_CHECK(!named, "{}: looks like a binary file (NUL bytes), not text, JSONL or a token file", path);
      continue;
    }
    const bool jsonl = ends_with(path, ".jsonl");
    c.files_.push_back(path);
    c.kinds_.push_back(jsonl ? DocKind::Jsonl : DocKind::Text);
    c.token_bytes_.push_back(0);
    // One pass over the file for line ends: JSONL lines, or text pieces cut at a line end.
    std::ifstream in(path, std::ios::binary);
    PRIMAL_CHECK(in, "{}: cannot open: {}", path, std::strerror(errno));
    std::vector<char> buf(1 << 20);
    uint64_t pos = 0, start = 0;
    while (in) {
      in.read(buf.data(), std::streamsize(buf.size()));
      const uint64_t got = uint64_t(in.gcount());
      for (uint64_t k = 0; k < got; ++k) {
        if (buf[size_t(k)] != '\n') continue;
        const uint64_t line_end = pos + k + 1;
        if (jsonl) {
          if (line_end - start > 1) c.docs_.push_back(DocRef{fi, start, line_end, true});
          start = line_end;
        } else if (line_end - start >= o.chunk_bytes) {
          c.docs_.push_back(DocRef{fi, start, line_end, false});
          start = line_end;
        }
      }
      pos += got;
    }
    if (start < size) {
      if (jsonl) {
        // A last line without its newline; blank ones are skipped at tokenization.
        c.docs_.push_back(DocRef{fi, start, size, true});
      } else {
        c.docs_.push_back(DocRef{fi, start, size, true});
      }
    } else if (!jsonl && !c.docs_.empty() && c.docs_.back().file == fi) {
      c.docs_.back().eos_after = true;
    }
  }
  std::string what;
  for (const auto& p : paths) what += (what.empty() ? "" : ", ") + p;
  PRIMAL_CHECK(!c.docs_.empty(), "{}: no documents found{}", what,
               o.extensions.empty() ? "" : " with the requested extensions");
  return c;
}

uint64_t Corpus::bytes() const {
  uint64_t n = 0;
  for (const DocRef& d : docs_) n += (d.end - d.begin) * (kinds_[d.file] == DocKind::Tokens ? 4 : 1);
  return n;
}

std::vector<int32_t> Corpus::tokenize(size_t k, const Tokenizer& tok, int32_t eos) const {
  const DocRef& d = docs_.at(k);
  const std::string& path = files_[d.file];
  std::vector<int32_t> ids;
  switch (kinds_[d.file]) {
    case DocKind::Tokens: {
      TokenFileHeader h = read_token_file_header(path);
      PRIMAL_CHECK(int64_t(h.vocab) <= tok.n_vocab(), "{}: tokens of a vocabulary of {}, the model has {}", path,
                   h.vocab, tok.n_vocab());
      ids = read_tokens(path, h, d.begin, d.end);
      break;
    }
    case DocKind::Text: ids = tok.encode(read_range(path, d.begin, d.end), false, false); break;
    case DocKind::Jsonl: {
      const std::string line = read_range(path, d.begin, d.end);
      if (line.find_first_not_of(" \t\r\n") == std::string::npos) return ids;
      auto line_no = [&] {
        const std::string head = read_range(path, 0, d.begin);
        return 1 + std::count(head.begin(), head.end(), '\n');
      };
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        fail("{}: line {}: not valid JSON ({})", path, line_no(), e.what());
      }
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
        fail("{}: line {}: no string field \"text\"", path, line_no());
      ids = tok.encode(j["text"].get<std::string>(), false, false);
      break;
    }
  }
  if (d.eos_after && eos >= 0) ids.push_back(eos);
  return ids;
}

void Corpus::split_tail(double frac, Corpus& train, Corpus& held) const {
  PRIMAL_CHECK(frac > 0 && frac < 1, "eval fraction {} outside (0, 1)", frac);
  train = *this;
  held = *this;
  train.docs_.clear();
  held.docs_.clear();
  const size_t n = docs_.size();
  if (n >= 2) {
    const size_t k = std::clamp<size_t>(size_t(std::ceil(frac * double(n))), 1, n - 1);
    train.docs_.assign(docs_.begin(), docs_.end() - std::ptrdiff_t(k));
    held.docs_.assign(docs_.end() - std::ptrdiff_t(k), docs_.end());
    return;
  }
  // One document: cut its range; a text cut moves forward to just after a line end.
  const DocRef& d = docs_[0];
  uint64_t cut = d.begin + uint64_t(double(d.end - d.begin) * (1 - frac));
  if (kinds_[d.file] == DocKind::Text) {
    const std::string tail = read_range(files_[d.file], cut, d.end);
    const size_t nl = tail.find('\n');
    if (nl != std::string::npos) cut += nl + 1;
  } else {
    PRIMAL_CHECK(kinds_[d.file] == DocKind::Tokens, "{}: a single JSONL document cannot be split for evaluation",
                 files_[d.file]);
  }
  PRIMAL_CHECK(cut > d.begin && cut < d.end, "{}: too small to hold out {} for evaluation", files_[d.file], frac);
  train.docs_.push_back(DocRef{d.file, d.begin, cut, false});
  held.docs_.push_back(DocRef{d.file, cut, d.end, d.eos_after});
}

}  // namespace primal::train
