// Where the forward pass runs. A backend owns the weights' working copy (the CPU one reads the
// mappings in place, the CUDA one holds them in device memory) and its KV cache; positions
// 0 .. n_past()-1 of the cache are filled. The generation loop and perplexity run on any backend.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "model/forward.h"
#include "model/weights.h"

namespace primal {

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;  // "cpu", "cuda (NVIDIA H100 80GB HBM3)"
  virtual const HParams& hparams() const = 0;
  virtual int64_t n_ctx() const = 0;
  virtual int64_t n_past() const = 0;
  virtual void truncate(int64_t n_keep) = 0;  // keep the first n_keep positions (0: a new sequence)

  // Runs T tokens at positions n_past() .. n_past()+T-1 and keeps the logits of the last n_logits
  // tokens ((n_logits, V), 1 <= n_logits <= T); they are copied to `logits` when it is not null.
  // Throws when the tokens do not fit in the context or an id is outside the vocabulary.
  virtual void forward(const int32_t* tokens, int64_t T, int64_t n_logits, float* logits,
                       const DumpFn& dump = nullptr) = 0;

  // The logits of the last token of the last forward: (V).
  virtual void last_logits(float* out) = 0;

  // The k best tokens of the last token's logits after the repetition penalty (llama.cpp's:
  // a positive logit divided by `penalty`, a negative one multiplied, once per distinct id of
  // `recent`), best first, equal logits by ascending id. k <= V. The CPU version sorts on the
  // host; a GPU backend selects on the device and copies only the k candidates.
  virtual std::vector<TokenLogit> top_k(int64_t k, float penalty, const std::vector<int32_t>& recent);
};

// The CPU reference: llama_forward over a fp32 KV cache (`w` must outlive the backend).
std::unique_ptr<Backend> make_cpu_backend(const LlamaWeights& w, int64_t n_ctx);

// Bytes of weights one decode step reads: every matrix once (the head included), one row of the
// token embedding. Divided by the memory bandwidth, the fastest decode physics allows.
size_t decode_weight_bytes(const LlamaWeights& w);

// Host implementation of Backend::top_k on a logit row (V): the specification of the GPU one.
std::vector<TokenLogit> top_k_host(const float* logits, int64_t V, int64_t k, float penalty,
                                   const std::vector<int32_t>& recent);

}  // namespace primal
