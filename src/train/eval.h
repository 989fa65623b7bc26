// Perplexity of a TrainModel with the llama.cpp definition (ARCHITECTURE.md): the text is
// tokenized once and cut into windows of n_ctx tokens; position 0 of each window holds BOS when
// there is one; only the second half of each window is scored (the logits at first = n_ctx/2
// .. n_ctx-2 predict the tokens after them); ppl = exp(mean nll). Computed with the trainer's own
// forward, so that what the trainer optimizes is measured the way `primal ppl` measures a file.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "train/model.h"

namespace primal::train {

struct PplResult {
  double ppl = 0, nll = 0;
  int64_t windows = 0, scored = 0;
};

// batch: windows per forward pass; n_windows < 0: all. progress(done, total, running ppl).
PplResult perplexity(const TrainModel& m, const std::vector<int32_t>& tokens, int64_t n_ctx, int32_t bos,
                     int64_t n_windows = -1, int64_t batch = 4,
                     const std::function<void(int64_t, int64_t, double)>& progress = nullptr);

}  // namespace primal::train
