// The Llama-family forward pass on the CPU, written out as a flat list of layer calls (llm.c
// style). A batch of T tokens (prefill) and a single token (decode) take the same path: the new
// tokens sit at positions cache.n_past() .. +T-1 and attend to everything cached before them.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/kv_cache.h"
#include "model/weights.h"

namespace primal {

// Called with every named intermediate of a forward pass, for layer-by-layer diffs. Names follow
// llama.cpp's graph ("inp_embd", "attn_norm-3", "Qcur-3", ..., "l_out-3", "result_output");
// shape is row-major, outermost first, e.g. {T, C}.
using DumpFn = std::function<void(const std::string& name, const float* data, const std::vector<int64_t>& shape)>;

// Runs tokens (T) through the model, appends their keys and values to the cache, and writes the
// logits of the last n_logits tokens (1 <= n_logits <= T) to logits: (n_logits, V). With logits
// null the head is skipped (the final norm still runs and is dumped as "result_norm").
// Throws when the tokens do not fit in the cache's context or an id is outside the vocabulary.
void llama_forward(const LlamaWeights& w, KVCache& cache, const int32_t* tokens, int64_t T, int64_t n_logits,
                   float* logits, const DumpFn& dump = nullptr);

// A KV cache shaped for the model with the given context limit.
KVCache make_kv_cache(const LlamaWeights& w, int64_t n_ctx);

}  // namespace primal
