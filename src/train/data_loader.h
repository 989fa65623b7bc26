// The training token stream: documents of a Corpus tokenized by a background thread into a
// bounded prefetch queue, packed back to back (each document followed by its EOS) and cut into
// sequences of T + 1 tokens that advance by T (the last target of one sequence is the first
// input of the next). Epochs repeat the corpus, in file order or in an order shuffled from
// (seed, epoch).
//
// The position of the next unread token (epoch, document in epoch order, token offset) is all a
// checkpoint needs: a loader started there produces exactly the batches that would have come.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "train/corpus.h"

namespace primal::train {

struct DataPosition {
  uint64_t epoch = 0, doc = 0, offset = 0;
  bool operator==(const DataPosition&) const = default;
};

class DataLoader {
 public:
  // corpus and tok must outlive the loader. prefetch_tokens: how far the tokenizer runs ahead.
  DataLoader(const Corpus& corpus, const Tokenizer& tok, int32_t eos, uint64_t seed, bool shuffle,
             DataPosition start, uint64_t prefetch_tokens = 1 << 20);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // B sequences of T tokens: inputs (B, T) and targets (B, T), the stream shifted by one.
  // Rethrows an error of the tokenizer thread (e.g. a bad JSONL line).
  void next(int64_t B, int64_t T, std::vector<int32_t>& inputs, std::vector<int32_t>& targets);
  DataPosition position() const;      // of the next sequence's first token
  uint64_t tokens_consumed() const { return consumed_; }

  // Document k of epoch e in the order this loader visits them.
  uint64_t doc_at(uint64_t epoch, uint64_t k) const;

 private:
  struct Doc {
    uint64_t epoch, index;
    std::vector<int32_t> tokens;
  };
  void produce(DataPosition start);
  Doc pop();

  const Corpus& corpus_;
  const Tokenizer& tok_;
  int32_t eos_;
  uint64_t seed_;
  bool shuffle_;
  uint64_t prefetch_;

  // Queue between the tokenizer thread and next().
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Doc> queue_;
  uint64_t queued_tokens_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;

  // Consumer side: docs from the cursor on; off_ is the cursor in buf_[0].
  std::deque<Doc> buf_;
  uint64_t off_ = 0;
  DataPosition start_;
  uint64_t consumed_ = 0;
  mutable std::vector<uint64_t> perm_;  // order of the epoch perm_epoch_
  mutable uint64_t perm_epoch_ = UINT64_MAX;
  mutable std::mutex perm_mu_;
};

// Evaluation sequences: the corpus packed in order (no shuffle) into sequences of T + 1 tokens
// (advancing by T), at most max_seqs of them. Each row is T + 1 tokens.
std::vector<std::vector<int32_t>> eval_sequences(const Corpus& corpus, const Tokenizer& tok, int32_t eos, int64_t T,
                                                 int64_t max_seqs);

}  // namespace primal::train
