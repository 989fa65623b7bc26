// Perplexity as llama.cpp's llama-perplexity computes it (tools/perplexity/perplexity.cpp):
//   - the text is tokenized once; the token list is cut into n_chunk = floor(n_tokens / n_ctx)
//     windows of n_ctx tokens (windows do not overlap, leftovers are dropped);
//   - with a BOS token, position 0 of each window is replaced by BOS (the list itself begins with
//     BOS when the vocabulary adds one, as llama.cpp's tokenization with add_special does);
//   - each window is run from an empty cache; only the second half is scored: the logits at
//     positions first = n_ctx/2 .. n_ctx-2 predict the tokens at first+1 .. n_ctx-1
//     (n_ctx - 1 - first tokens per window);
//   - PPL = exp(mean NLL); the +/- is PPL * sqrt((mean(NLL^2) - mean(NLL)^2) / (count - 1)).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "infer/backend.h"
#include "model/weights.h"

namespace primal {

struct PerplexityOptions {
  int64_t n_ctx = 512;     // window size (tokens)
  int64_t n_chunks = -1;   // windows to score; < 0: all
  int32_t bos_id = -1;     // put at position 0 of every window; -1: windows start with the text
  int64_t n_batch = 512;   // most tokens per forward call
};

struct PerplexityResult {
  double ppl = 0;
  double ppl_err = 0;      // llama.cpp's +/- (one standard error, propagated through exp)
  double nll_mean = 0;
  int64_t n_chunks = 0;    // windows scored
  int64_t n_scored = 0;    // tokens scored
  double seconds = 0;
};

// Running sums of the scored NLLs and llama.cpp's estimate from them.
struct NllStats {
  double sum = 0, sum2 = 0;
  int64_t count = 0;
  void add(double nll) {
    sum += nll;
    sum2 += nll * nll;
    ++count;
  }
  double mean() const { return count ? sum / double(count) : 0.0; }
  double ppl() const;  // exp(mean)
  double err() const;  // ppl * sqrt((sum2/count - mean^2) / (count - 1)); 0 when undefined
};

// progress(chunk_done, n_chunks, running ppl, seconds so far) after every window.
using PerplexityProgress = std::function<void(int64_t, int64_t, double, double)>;

// On the CPU.
PerplexityResult perplexity(const LlamaWeights& w, const std::vector<int32_t>& tokens, const PerplexityOptions& o,
                            const PerplexityProgress& progress = nullptr);
// On any backend whose context holds at least o.n_ctx tokens (its cache is cleared per window).
PerplexityResult perplexity(Backend& b, const std::vector<int32_t>& tokens, const PerplexityOptions& o,
                            const PerplexityProgress& progress = nullptr);

}  // namespace primal
