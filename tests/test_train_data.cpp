// The training data pipeline: folders and extensions, JSONL documents and their errors, the
// pre-tokenized format, packing with one EOS between documents and sequences that overlap by
// one token, resuming from a position, shuffled epochs, and the held-out split.
// Tokens come from a byte-level vocabulary (tests/train_fixture.h): one token per byte, so every
// expected stream is written down from the text itself.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "testing.h"
#include "tokenizer/tokenizer.h"
#include "train/corpus.h"
#include "train/data_loader.h"
#include "train/token_file.h"
#include "train_fixture.h"

using namespace primal;
using namespace primal::train;
namespace fs = std::filesystem;

namespace {

constexpr int32_t kEos = 256;

std::string dir(const std::string& name) {
  const std::string d = test::temp_dir() + "/" + name;
  fs::create_directories(d);
  return d;
}

void write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

const Tokenizer& vocab() {
  static const std::unique_ptr<Tokenizer> t = [] {
    const std::string p = test::temp_dir() + "/bytes.gguf";
    test::write_byte_vocab(p);
    return Tokenizer::open(p);
  }();
  return *t;
}

std::vector<int32_t> bytes_of(const std::string& s) { return std::vector<int32_t>(s.begin(), s.end()); }

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

}  // namespace

TEST(Corpus, FoldersAreWalkedInOrderWithExtensionFilterAndBinariesSkipped) {
  const std::string d = dir("walk");
  write(d + "/b.py", "bb\n");
  write(d + "/a.py", "aa\n");
  write(d + "/sub/c.py", "cc\n");
  write(d + "/notes.txt", "tt\n");
  write(d + "/empty.py", "");
  write(d + "/blob.bin", std::string("x\0y", 3));
  CorpusOptions o;
  o.extensions = {".py"};
  const Corpus c = Corpus::scan({d}, o);
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c.tokenize(0, vocab(), kEos), cat({bytes_of("aa\n"), {kEos}}));
  EXPECT_EQ(c.tokenize(1, vocab(), kEos), cat({bytes_of("bb\n"), {kEos}}));
  EXPECT_EQ(c.tokenize(2, vocab(), kEos), cat({bytes_of("cc\n"), {kEos}}));
  const Corpus all = Corpus::scan({d}, CorpusOptions{});
  EXPECT_EQ(all.size(), 4u);  // the binary file and the empty one are left out
  try {
    Corpus::scan({d + "/blob.bin"}, CorpusOptions{});
    FAIL() << "a named binary file must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blob.bin"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Corpus::scan({d + "/missing"}, CorpusOptions{}), Error);
  CorpusOptions none;
  none.extensions = {".rs"};
  EXPECT_THROW(Corpus::scan({d}, none), Error);
}

TEST(Corpus, LargeTextFilesArePiecesWithoutEosBetweenThem) {
  const std::string d = dir("pieces");
  std::string text;
  for (int k = 0; k < 100; ++k) text += "line " + std::to_string(k) + "\n";
  write(d + "/t.txt", text);
  CorpusOptions o;
  o.chunk_bytes = 64;
  const Corpus c = Corpus::scan({d + "/t.txt"}, o);
  ASSERT_GT(c.size(), 5u);
  std::vector<int32_t> all;
  for (size_t k = 0; k < c.size(); ++k) {
    const auto ids = c.tokenize(k, vocab(), kEos);
    all.insert(all.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(all, cat({bytes_of(text), {kEos}}));  // the file's bytes, then one EOS
}

TEST(Corpus, JsonlTextFieldsAndErrorsNamingTheLine) {
  const std::string d = dir("jsonl");
  write(d + "/a.jsonl", "{\"text\": \"hi\"}\n\n{\"text\": \"yo\", \"id\": 3}\n{\"id\": 4}\n[1]\n{bad\n{\"text\": \"end\"}");
  const Corpus c = Corpus::scan({d + "/a.jsonl"}, CorpusOptions{});
  ASSERT_EQ(c.size(), 6u);  // the blank line is not a document
  EXPECT_EQ(c.tokenize(0, vocab(), kEos), cat({bytes_of("hi"), {kEos}}));
  EXPECT_EQ(c.tokenize(1, vocab(), kEos), cat({bytes_of("yo"), {kEos}}));
  EXPECT_EQ(c.tokenize(5, vocab(), kEos), cat({bytes_of("end"), {kEos}}));
  auto error_of = [&](size_t k) {
    try {
      c.tokenize(k, vocab(), kEos);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(2).find("a.jsonl: line 4: no string field \"text\""), std::string::npos) << error_of(2);
  EXPECT_NE(error_of(3).find("line 5"), std::string::npos) << error_of(3);
  EXPECT_NE(error_of(4).find("line 6: not valid JSON"), std::string::npos) << error_of(4);
}

TEST(TokenFile, RoundTripsAndRefusesDamage) {
  const std::string p = dir("tok") + "/t.bin";
  {
    TokenFileWriter w(p, 257, kEos);
    w.write({1, 2, 3});
    w.write({256, 0});
    EXPECT_FALSE(fs::exists(p));  // only the temporary exists until finish()
    w.finish();
  }
  const TokenFileHeader h = read_token_file_header(p);
  EXPECT_EQ(h.width, 2u);
  EXPECT_EQ(h.n_tokens, 5u);
  EXPECT_EQ(h.eos, kEos);
  EXPECT_EQ(read_tokens(p, h, 1, 5), (std::vector<int32_t>{2, 3, 256, 0}));
  const Corpus c = Corpus::scan({p}, CorpusOptions{});
  EXPECT_EQ(c.tokenize(0, vocab(), kEos), (std::vector<int32_t>{1, 2, 3, 256, 0}));  // no EOS added
  // Truncated by one byte, and a wrong magic.
  fs::resize_file(p, fs::file_size(p) - 1);
  EXPECT_THROW(read_token_file_header(p), Error);
  write(p, std::string("PRMLTOK2") + std::string(40, '\0'));
  EXPECT_FALSE(is_token_file(p));
  EXPECT_THROW(read_token_file_header(p), Error);
  // Tokens outside the writer's vocabulary are refused.
  TokenFileWriter w2(dir("tok2") + "/u.bin", 10, 9);
  EXPECT_THROW(w2.write({10}), Error);
}

TEST(DataLoader, PacksDocumentsWithOneEosAndSequencesOverlapByOneToken) {
  const std::string d = dir("pack");
  write(d + "/1.txt", "abc");
  write(d + "/2.txt", "de");
  write(d + "/3.txt", "fghij");
  const Corpus c = Corpus::scan({d}, CorpusOptions{});
  DataLoader dl(c, vocab(), kEos, 0, false, DataPosition{});
  std::vector<int32_t> in, tg;
  // Stream: a b c EOS d e EOS f g h i j EOS | a b c ...
  const auto stream = cat({bytes_of("abc"), {kEos}, bytes_of("de"), {kEos}, bytes_of("fghij"), {kEos}});
  dl.next(2, 4, in, tg);
  EXPECT_EQ(in, (std::vector<int32_t>{stream[0], stream[1], stream[2], stream[3], stream[4], stream[5], stream[6],
                                      stream[7]}));
  EXPECT_EQ(tg, (std::vector<int32_t>{stream[1], stream[2], stream[3], stream[4], stream[5], stream[6], stream[7],
                                      stream[8]}));
  EXPECT_EQ(dl.position(), (DataPosition{0, 2, 1}));  // next token: 'g' of document 2
  EXPECT_EQ(dl.tokens_consumed(), 8u);
  dl.next(1, 6, in, tg);  // runs into the next epoch
  EXPECT_EQ(in, (std::vector<int32_t>{'g', 'h', 'i', 'j', kEos, 'a'}));
  EXPECT_EQ(tg, (std::vector<int32_t>{'h', 'i', 'j', kEos, 'a', 'b'}));
  EXPECT_EQ(dl.position(), (DataPosition{1, 0, 1}));
}

TEST(DataLoader, ResumingFromAPositionGivesTheSameBatches) {
  const std::string d = dir("resume");
  for (int k = 0; k < 7; ++k) write(d + "/f" + std::to_string(k) + ".txt", std::string(size_t(5 + 3 * k), char('a' + k)));
  const Corpus c = Corpus::scan({d}, CorpusOptions{});
  std::vector<std::vector<int32_t>> batches;
  DataPosition mid;
  {
    DataLoader dl(c, vocab(), kEos, 99, true, DataPosition{});
    std::vector<int32_t> in, tg;
    for (int k = 0; k < 12; ++k) {
      dl.next(2, 7, in, tg);
      batches.push_back(in);
      batches.push_back(tg);
      if (k == 4) mid = dl.position();
    }
  }
  DataLoader dl(c, vocab(), kEos, 99, true, mid);
  std::vector<int32_t> in, tg;
  for (int k = 5; k < 12; ++k) {
    dl.next(2, 7, in, tg);
    EXPECT_EQ(in, batches[size_t(2 * k)]) << k;
    EXPECT_EQ(tg, batches[size_t(2 * k + 1)]) << k;
  }
}

TEST(DataLoader, ShuffledEpochsArePermutationsThatDifferBySeedAndEpoch) {
  const std::string d = dir("shuffle");
  for (int k = 0; k < 20; ++k) write(d + "/f" + std::to_string(100 + k) + ".txt", "x");
  const Corpus c = Corpus::scan({d}, CorpusOptions{});
  DataLoader a(c, vocab(), kEos, 1, true, DataPosition{}), b(c, vocab(), kEos, 2, true, DataPosition{});
  std::vector<uint64_t> e0, e1, s2;
  for (uint64_t k = 0; k < 20; ++k) e0.push_back(a.doc_at(0, k)), e1.push_back(a.doc_at(1, k)), s2.push_back(b.doc_at(0, k));
  EXPECT_EQ(std::set<uint64_t>(e0.begin(), e0.end()).size(), 20u);
  EXPECT_EQ(std::set<uint64_t>(e1.begin(), e1.end()).size(), 20u);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, s2);
  DataLoader u(c, vocab(), kEos, 1, false, DataPosition{});
  for (uint64_t k = 0; k < 20; ++k) EXPECT_EQ(u.doc_at(3, k), k);
}

TEST(DataLoader, TokenizerErrorsReachTheTrainingThread) {
  const std::string d = dir("bad");
  write(d + "/x.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
  const Corpus c = Corpus::scan({d}, CorpusOptions{});
  DataLoader dl(c, vocab(), kEos, 0, false, DataPosition{});
  std::vector<int32_t> in, tg;
  EXPECT_THROW(dl.next(1, 8, in, tg), Error);
}

TEST(Corpus, HeldOutTailByDocumentsOrByBytesOfOneFile) {
  const std::string d = dir("split");
  for (int k = 0; k < 10; ++k) write(d + "/f" + std::to_string(k) + ".txt", "doc" + std::to_string(k));
  const Corpus c = Corpus::scan({d}, CorpusOptions{});
  Corpus tr, ho;
  c.split_tail(0.2, tr, ho);
  EXPECT_EQ(tr.size(), 8u);
  ASSERT_EQ(ho.size(), 2u);
  EXPECT_EQ(ho.tokenize(0, vocab(), kEos), cat({bytes_of("doc8"), {kEos}}));
  // One text file: cut after a line end near 1 - frac, no EOS after the training part.
  std::string text;
  for (int k = 0; k < 50; ++k) text += "row" + std::to_string(k) + "\n";
  write(d + "/one/t.txt", text);
  const Corpus one = Corpus::scan({d + "/one/t.txt"}, CorpusOptions{});
  one.split_tail(0.1, tr, ho);
  const auto a = tr.tokenize(0, vocab(), kEos), b = ho.tokenize(0, vocab(), kEos);
  EXPECT_EQ(cat({a, b}), cat({bytes_of(text), {kEos}}));
  EXPECT_EQ(a.back(), '\n');
  EXPECT_NEAR(double(b.size()), 0.1 * double(text.size()), 10.0);
  const auto eval = eval_sequences(ho, vocab(), kEos, 8, 100);
  ASSERT_FALSE(eval.empty());
  EXPECT_EQ(eval[0], std::vector<int32_t>(b.begin(), b.begin() + 9));
  EXPECT_EQ(eval[1][0], b[8]);  // sequences advance by T, overlapping one token
}

TEST(Corpus, RealTextAndTheGpt2Vocabulary) {
  // tinyshakespeare through the GPT-2 vocabulary: the pieces of the file concatenate to the
  // tokens of the whole text (cuts fall after a line end, where GPT-2's pre-tokenizer splits).
  const std::string p = test::data_path("text/tinyshakespeare.txt");
  const auto tok = Tokenizer::open(test::data_path("vocab/ggml-vocab-gpt-2.gguf"));
  CorpusOptions o;
  o.chunk_bytes = 200000;
  const Corpus c = Corpus::scan({p}, o);
  EXPECT_GE(c.size(), 5u);
  std::vector<int32_t> pieces;
  for (size_t k = 0; k < c.size(); ++k) {
    const auto ids = c.tokenize(k, *tok, tok->eos_id());
    pieces.insert(pieces.end(), ids.begin(), ids.end());
  }
  std::ifstream in(p, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto whole = tok->encode(text, false, false);
  whole.push_back(tok->eos_id());
  EXPECT_EQ(pieces.size(), whole.size());
  EXPECT_EQ(pieces, whole);
}
