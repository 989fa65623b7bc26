#include "infer/perplexity.h"

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "model/forward.h"
#include "ops/cpu/softmax.h"

namespace primal {

double NllStats::ppl() const { return std::exp(mean()); }

double NllStats::err() const {
  const double var = sum2 / double(count) - mean() * mean();
  return var > 0 && count > 1 ? std::sqrt(var / double(count - 1)) * ppl() : 0.0;
}

PerplexityResult perplexity(const LlamaWeights& w, const std::vector<int32_t>& tokens, const PerplexityOptions& o,
                            const PerplexityProgress& progress) {
  PRIMAL_CHECK(o.n_ctx >= 4 && o.n_ctx % 2 == 0, "perplexity: the context must be an even number >= 4 (got {})",
               o.n_ctx);
  auto b = make_cpu_backend(w, o.n_ctx);
  return perplexity(*b, tokens, o, progress);
}

PerplexityResult perplexity(Backend& be, const std::vector<int32_t>& tokens, const PerplexityOptions& o,
                            const PerplexityProgress& progress) {
  const int64_t n_ctx = o.n_ctx, V = be.hparams().n_vocab;
  PRIMAL_CHECK(n_ctx >= 4 && n_ctx % 2 == 0, "perplexity: the context must be an even number >= 4 (got {})", n_ctx);
  PRIMAL_CHECK(o.n_batch > 0, "perplexity: invalid batch size {}", o.n_batch);
  // llama.cpp refuses fewer than two windows' worth of tokens.
  if (int64_t(tokens.size()) < 2 * n_ctx)
    fail("perplexity: the text has {} tokens, at least {} (2 x the context of {}) are needed", tokens.size(),
         2 * n_ctx, n_ctx);
  const int64_t n_chunk_max = int64_t(tokens.size()) / n_ctx;
  const int64_t n_chunk = o.n_chunks < 0 ? n_chunk_max : std::min(o.n_chunks, n_chunk_max);
  PRIMAL_CHECK(n_chunk > 0, "perplexity: no window to score (--chunks {})", o.n_chunks);
  const int64_t first = n_ctx / 2, n_score = n_ctx - 1 - first;
  const int64_t n_out = n_ctx - first;  // logit rows: positions first .. n_ctx-1 (the last is unused)

  PRIMAL_CHECK(be.n_ctx() >= n_ctx, "perplexity: the backend's context ({}) is smaller than the window ({})",
               be.n_ctx(), n_ctx);
  std::vector<float> logits(size_t(n_out * V));
  std::vector<int32_t> window(static_cast<size_t>(n_ctx));
  std::vector<double> nll(static_cast<size_t>(n_score));
  NllStats stats;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t c = 0; c < n_chunk; ++c) {
    const int32_t* src = tokens.data() + c * n_ctx;
    window.assign(src, src + n_ctx);
    if (o.bos_id >= 0) window[0] = o.bos_id;
    be.truncate(0);
    // Batches before the scored half need no logits; the last batch's rows are all scored rows
    // when n_batch divides first (the usual case), otherwise the window goes in one call.
    const int64_t batch = (first % o.n_batch == 0) ? o.n_batch : n_ctx;
    for (int64_t b = 0; b < n_ctx; b += batch) {
      const int64_t T = std::min(batch, n_ctx - b);
      if (b + T <= first) {
        be.forward(window.data() + b, T, 1, nullptr);
      } else {
        // rows for positions max(b, first) .. b+T-1 land at their offset from `first`
        const int64_t from = std::max(b, first);
        be.forward(window.data() + b, T, b + T - from, logits.data() + (from - first) * V);
      }
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n_score; ++i)
      nll[size_t(i)] = cpu::cross_entropy_forward(logits.data() + i * V, V, src[first + 1 + i]);
    for (double v : nll) stats.add(v);
    if (progress)
      progress(c + 1, n_chunk, stats.ppl(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }

  PerplexityResult r;
  r.n_chunks = n_chunk;
  r.n_scored = stats.count;
  r.nll_mean = stats.mean();
  r.ppl = stats.ppl();
  r.ppl_err = stats.err();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace primal
