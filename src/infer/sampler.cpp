#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "core/error.h"

namespace primal {

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {
  PRIMAL_CHECK(std::isfinite(p.temperature), "sampler: invalid temperature {}", p.temperature);
  PRIMAL_CHECK(p.top_p > 0, "sampler: top-p must be > 0 (got {})", p.top_p);
  PRIMAL_CHECK(p.min_p < 1, "sampler: min-p must be < 1 (got {})", p.min_p);
  PRIMAL_CHECK(p.repeat_penalty > 0, "sampler: repeat penalty must be > 0 (got {})", p.repeat_penalty);
  PRIMAL_CHECK(p.repeat_last_n >= 0, "sampler: repeat window must be >= 0 (got {})", p.repeat_last_n);
}

void Sampler::reset() {
  recent_.clear();
  rng_.seed(p_.seed);
}

void Sampler::accept(int32_t token) {
  if (p_.repeat_last_n == 0) return;
  recent_.push_back(token);
  while (int64_t(recent_.size()) > p_.repeat_last_n) recent_.pop_front();
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

int32_t Sampler::sample(const float* logits, int64_t V) {
  PRIMAL_CHECK(V > 0, "sampler: empty vocabulary");
  cand_.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) cand_[size_t(i)] = {int32_t(i), logits[i]};

  // Repetition penalty (CTRL, as llama.cpp): a recent token's logit is divided by the penalty
  // when positive and multiplied by it when negative, once per distinct token.
  if (p_.repeat_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(recent_.begin(), recent_.end());
    for (int32_t id : seen) {
      if (id < 0 || id >= V) continue;
      float& l = cand_[size_t(id)].logit;
      l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
    }
  }

  // Higher logit first; equal logits by id, so that the order (and the draw) is deterministic.
  auto better = [](const Cand& a, const Cand& b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
  if (p_.temperature <= 0) return std::min_element(cand_.begin(), cand_.end(), better)->id;

  size_t n = cand_.size();
  if (p_.top_k > 0 && size_t(p_.top_k) < n) {
    n = size_t(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + std::ptrdiff_t(n), cand_.end(), better);
  } else {
    std::sort(cand_.begin(), cand_.end(), better);
  }
  return draw(n);
}

int64_t Sampler::candidates_needed(int64_t V) const {
  if (p_.temperature <= 0) return 1;
  return p_.top_k > 0 ? std::min<int64_t>(p_.top_k, V) : 0;
}

int32_t Sampler::sample_top(const TokenLogit* best, size_t n) {
  PRIMAL_CHECK(n > 0, "sampler: no candidates");
  if (p_.temperature <= 0) return best[0].id;
  cand_.assign(best, best + n);
  return draw(n);
}

int32_t Sampler::draw(size_t n) {
  // Probabilities at temperature 1 for the top-p and min-p cuts (llama.cpp applies them before
  // the temperature).
  std::vector<double> prob(n);
  const double mx = cand_[0].logit;
  double z = 0;
  for (size_t i = 0; i < n; ++i) z += (prob[i] = std::exp(double(cand_[i].logit) - mx));
  for (double& q : prob) q /= z;
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t keep = n;
    for (size_t i = 0; i < n; ++i) {
      cum += prob[i];
      if (cum >= double(p_.top_p)) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
  }
  if (p_.min_p > 0.0f) {
    size_t keep = 1;  // prob is sorted descending; prob[0] is the maximum
    while (keep < n && prob[keep] >= double(p_.min_p) * prob[0]) ++keep;
    n = keep;
  }

  // Temperature, then a draw from the renormalized distribution of the survivors.
  std::vector<double> w(n);
  double tot = 0;
  for (size_t i = 0; i < n; ++i) tot += (w[i] = std::exp((double(cand_[i].logit) - mx) / double(p_.temperature)));
  const double r = uniform() * tot;
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += w[i];
    if (r < cum) return cand_[i].id;
  }
  return cand_[n - 1].id;  // r rounded up to the total
}

}  // namespace primal
