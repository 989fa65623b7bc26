// Token sampling from a logit vector, in llama.cpp's default order:
//   repetition penalty -> top-k -> top-p -> min-p -> temperature -> random draw.
// temperature <= 0 is greedy (argmax after the penalty; ties go to the lowest id).
// The random stream is a seeded mt19937_64 turned into uniforms by explicit bit arithmetic, so a
// seed gives the same tokens on every platform and compiler.
#pragma once
#include <cstdint>
#include <deque>
#include <random>
#include <vector>

namespace primal {

// A token and its logit: a sampling candidate.
struct TokenLogit {
  int32_t id;
  float logit;
};

struct SamplerParams {
  float temperature = 0.8f;     // <= 0: greedy
  int32_t top_k = 40;           // keep the k most likely tokens; <= 0: off
  float top_p = 0.95f;          // keep the smallest set with cumulative probability >= p; >= 1: off
  float min_p = 0.05f;          // keep tokens with p >= min_p * p_max; <= 0: off
  float repeat_penalty = 1.0f;  // CTRL-style penalty on the last repeat_last_n tokens; 1: off
  int32_t repeat_last_n = 64;   // window of the penalty (tokens)
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);

  // Picks the next token from logits: (V). Does not record it: call accept() with the token that
  // is actually fed back (the prompt's tokens too, so that the penalty sees them).
  int32_t sample(const float* logits, int64_t V);
  // The same draw from the candidates that survive the penalty and top-k: `best` holds the
  // min(top_k, V) best tokens after the penalty (1 when greedy), best first, equal logits by
  // ascending id (what a GPU backend selects on the device). Returns what sample() returns.
  int32_t sample_top(const TokenLogit* best, size_t n);
  // How many best candidates sample_top needs for a vocabulary of V: 1 when greedy, min(top_k, V)
  // with top-k on, 0 when sampling needs the whole row (top-k off).
  int64_t candidates_needed(int64_t V) const;
  void accept(int32_t token);
  void reset();  // forget the history and restart the random stream from the seed
  void clear_history() { recent_.clear(); }

  const SamplerParams& params() const { return p_; }
  std::vector<int32_t> recent() const { return {recent_.begin(), recent_.end()}; }  // penalty window

 private:
  using Cand = TokenLogit;
  double uniform();
  int32_t draw(size_t n);  // top-p, min-p, temperature and the draw over cand_[0..n), sorted  // [0, 1) with 53 random bits

  SamplerParams p_;
  std::mt19937_64 rng_;
  std::deque<int32_t> recent_;  // the last repeat_last_n accepted tokens
  std::vector<Cand> cand_;
};

}  // namespace primal
