// Softmax and cross-entropy over a vocabulary-sized logit vector (one row).
//   softmax(x)_i = exp(x_i - max) / sum_j exp(x_j - max)
//   nll(x, y)    = log(sum_j exp(x_j - max)) + max - x_y   (= -log softmax(x)_y)
#pragma once
#include <cstdint>

namespace primal::cpu {

// probs, logits: (V); probs may alias logits. The normalizer is summed in fp64.
void softmax_forward(float* probs, const float* logits, int64_t V);

// Negative log-likelihood of `target` under softmax(logits); logits: (V). Terms in fp32 as
// llama.cpp's perplexity forms them, the normalizer and the result in fp64 (the perplexity is the
// exp of a mean of ~10^5..10^6 of these).
double cross_entropy_forward(const float* logits, int64_t V, int32_t target);

}  // namespace primal::cpu
