// The generation loop around the forward pass: keeps a context of tokens in the KV cache, feeds
// new tokens in batches (prefill) or one at a time (decode), and samples from the last logits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "infer/backend.h"
#include "infer/sampler.h"
#include "model/forward.h"

namespace primal {

struct GenerateStats {
  int64_t n_prompt = 0;   // tokens run through prefill
  double prompt_s = 0;    // seconds spent in prefill
  int64_t n_decode = 0;   // tokens run through decode
  double decode_s = 0;    // seconds spent in decode
};

class Generator {
 public:
  // n_ctx: the context limit; n_batch: most tokens per prefill forward (bounds the activations).
  // Runs on the CPU.
  Generator(const LlamaWeights& w, int64_t n_ctx, const SamplerParams& sp, int64_t n_batch = 512);
  // Runs on the given backend (its context limit is the backend's).
  Generator(std::unique_ptr<Backend> backend, const SamplerParams& sp, int64_t n_batch = 512);

  // Makes the context exactly `tokens`: the longest prefix already cached is kept, the rest is
  // run through the model (prefill), leaving the logits of the last token ready for sample().
  // Throws when the tokens do not fit in the context. dump (optional) sees every intermediate.
  void set_context(const std::vector<int32_t>& tokens, const DumpFn& dump = nullptr);
  // Appends one token (decode) and computes its logits.
  void push(int32_t token);
  // Samples the next token from the logits of the last token of the context. With top-k on (or
  // greedy) only the k best candidates leave the backend (selected on the GPU there).
  int32_t sample();

  const std::vector<int32_t>& context() const { return ctx_; }
  const std::vector<float>& logits() const;  // (V) of the last token, fetched from the backend
  int64_t n_ctx() const { return backend_->n_ctx(); }
  const GenerateStats& stats() const { return stats_; }
  Backend& backend() { return *backend_; }

 private:
  void feed(const int32_t* tokens, int64_t n, const DumpFn& dump);

  std::unique_ptr<Backend> backend_;
  Sampler sampler_;
  int64_t n_batch_;
  std::vector<int32_t> ctx_;            // tokens whose K/V are in the cache
  mutable std::vector<float> logits_;   // (V), copied from the backend on demand
  mutable bool logits_fresh_ = false;
  bool have_logits_ = false;
  GenerateStats stats_;
};

// Splits a byte stream of token pieces into printable text: a UTF-8 sequence cut between two
// tokens is held back until it is complete, so a terminal never shows half a character.
class Utf8Stream {
 public:
  std::string push(const std::string& piece);  // the complete characters available so far
  std::string flush();                         // whatever is left (possibly invalid UTF-8)

 private:
  std::string pending_;
};

}  // namespace primal
