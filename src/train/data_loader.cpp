#include "train/data_loader.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "train/rng.h"

namespace primal::train {

DataLoader::DataLoader(const Corpus& corpus, const Tokenizer& tok, int32_t eos, uint64_t seed, bool shuffle,
                       DataPosition start, uint64_t prefetch_tokens)
    : corpus_(corpus), tok_(tok), eos_(eos), seed_(seed), shuffle_(shuffle), prefetch_(prefetch_tokens) {
  PRIMAL_CHECK(corpus.size() > 0, "data: no documents");
  PRIMAL_CHECK(start.doc < corpus.size(), "data: position at document {} of a corpus of {}", start.doc,
               corpus.size());
  off_ = start.offset;
  start_ = start;
  thread_ = std::thread([this, start] { produce(start); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

uint64_t DataLoader::doc_at(uint64_t epoch, uint64_t k) const {
  if (!shuffle_) return k;
  std::lock_guard<std::mutex> lk(perm_mu_);
  if (perm_epoch_ != epoch) {
    // Fisher-Yates from the stream (seed, epoch).
    perm_.resize(corpus_.size());
    std::iota(perm_.begin(), perm_.end(), uint64_t(0));
    Rng rng(seed_, 0xDA7Aull, epoch);
    for (uint64_t i = perm_.size() - 1; i > 0; --i) std::swap(perm_[i], perm_[uint64_t(rng.range(0, int64_t(i)))]);
    perm_epoch_ = epoch;
  }
  return perm_[k];
}

void DataLoader::produce(DataPosition pos) {
  try {
    uint64_t epoch = pos.epoch, k = pos.doc;
    for (;;) {
      Doc d{epoch, k, corpus_.tokenize(size_t(doc_at(epoch, k)), tok_, eos_)};
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || queued_tokens_ < prefetch_ || queue_.empty(); });
      if (stop_) return;
      queued_tokens_ += d.tokens.size();
      queue_.push_back(std::move(d));
      lk.unlock();
      cv_.notify_all();
      if (++k == corpus_.size()) k = 0, ++epoch;
    }
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

DataLoader::Doc DataLoader::pop() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return !queue_.empty() || error_; });
  if (queue_.empty()) std::rethrow_exception(error_);
  Doc d = std::move(queue_.front());
  queue_.pop_front();
  queued_tokens_ -= d.tokens.size();
  lk.unlock();
  cv_.notify_all();
  return d;
}

void DataLoader::next(int64_t B, int64_t T, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  PRIMAL_CHECK(B > 0 && T > 0, "data: empty batch {} x {}", B, T);
  inputs.resize(size_t(B * T));
  targets.resize(size_t(B * T));
  std::vector<int32_t> seq(static_cast<size_t>(T + 1));
  for (int64_t b = 0; b < B; ++b) {
    // Walk T + 1 tokens from the cursor without consuming.
    size_t k = 0;
    uint64_t off = off_;
    for (int64_t t = 0; t <= T; ++t) {
      for (;;) {
        if (buf_.size() <= k) buf_.push_back(pop());
        if (off < buf_[k].tokens.size()) break;
        off -= buf_[k].tokens.size();  // an offset past a document's end continues in the next
        ++k;
      }
      seq[size_t(t)] = buf_[k].tokens[size_t(off)];
      ++off;
    }
    std::copy(seq.begin(), seq.begin() + T, inputs.begin() + b * T);
    std::copy(seq.begin() + 1, seq.end(), targets.begin() + b * T);
    // Advance the cursor by T.
    off_ += uint64_t(T);
    while (!buf_.empty() && off_ >= buf_.front().tokens.size()) {
      if (buf_.size() == 1) buf_.push_back(pop());
      off_ -= buf_.front().tokens.size();
      buf_.pop_front();
    }
    consumed_ += uint64_t(T);
  }
}

DataPosition DataLoader::position() const {
  if (buf_.empty()) return start_;  // before the first batch
  return DataPosition{buf_.front().epoch, buf_.front().index, off_};
}

std::vector<std::vector<int32_t>> eval_sequences(const Corpus& corpus, const Tokenizer& tok, int32_t eos, int64_t T,
                                                 int64_t max_seqs) {
  std::vector<std::vector<int32_t>> out;
  std::vector<int32_t> stream;
  size_t used = 0;
  for (size_t k = 0; k < corpus.size() && int64_t(out.size()) < max_seqs; ++k) {
    const auto ids = corpus.tokenize(k, tok, eos);
    stream.insert(stream.end(), ids.begin(), ids.end());
    while (int64_t(out.size()) < max_seqs && stream.size() - used >= size_t(T + 1)) {
      out.emplace_back(stream.begin() + std::ptrdiff_t(used), stream.begin() + std::ptrdiff_t(used + size_t(T) + 1));
      used += size_t(T);
    }
  }
  return out;
}

}  // namespace primal::train
