#include "train/eval.h"

#include <cmath>

#include "core/error.h"
#include "train/forward_backward.h"

namespace primal::train {

PplResult perplexity(const TrainModel& m, const std::vector<int32_t>& tokens, int64_t n_ctx, int32_t bos,
                     int64_t n_windows, int64_t batch, const std::function<void(int64_t, int64_t, double)>& progress) {
  PRIMAL_CHECK(n_ctx >= 4 && n_ctx % 2 == 0, "perplexity: the context must be an even number >= 4 (got {})", n_ctx);
  const int64_t avail = int64_t(tokens.size()) / n_ctx;
  PRIMAL_CHECK(avail >= 1, "perplexity: {} tokens do not fill one window of {}", tokens.size(), n_ctx);
  const int64_t W = n_windows < 0 ? avail : std::min(avail, n_windows);
  const int64_t first = n_ctx / 2;
  Workspace<float> ws;
  TrainMask none;
  none.layer.assign(size_t(m.n_physical()), false);
  std::vector<int32_t> in, tg;
  PplResult r;
  for (int64_t w0 = 0; w0 < W; w0 += batch) {
    const int64_t B = std::min(batch, W - w0);
    in.assign(size_t(B * n_ctx), 0);
    tg.assign(size_t(B * n_ctx), -1);
    for (int64_t b = 0; b < B; ++b) {
      const int32_t* src = tokens.data() + (w0 + b) * n_ctx;
      for (int64_t t = 0; t < n_ctx; ++t) in[size_t(b * n_ctx + t)] = src[t];
      if (bos >= 0) in[size_t(b * n_ctx)] = bos;
      for (int64_t t = first; t < n_ctx - 1; ++t) tg[size_t(b * n_ctx + t)] = src[t + 1];
    }
    const LossSum ls = forward_backward<float>(m, none, ws, in.data(), tg.data(), B, n_ctx, 1.0, nullptr, nullptr);
    r.nll += ls.nll;
    r.scored += ls.count;
    r.windows += B;
    if (progress) progress(r.windows, W, std::exp(r.nll / double(r.scored)));
  }
  r.nll /= double(r.scored);
  r.ppl = std::exp(r.nll);
  return r;
}

}  // namespace primal::train
