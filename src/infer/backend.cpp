#include "infer/backend.h"

#include <algorithm>
#include <unordered_set>

#include "core/error.h"
#include "infer/kv_cache.h"

namespace primal {
namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(const LlamaWeights& w, int64_t n_ctx)
      : w_(w), cache_(make_kv_cache(w, n_ctx)), last_(size_t(w.hp.n_vocab)) {}

  std::string name() const override { return "cpu"; }
  const HParams& hparams() const override { return w_.hp; }
  int64_t n_ctx() const override { return cache_.n_ctx(); }
  int64_t n_past() const override { return cache_.n_past(); }
  void truncate(int64_t n_keep) override { cache_.truncate(n_keep); }

  void forward(const int32_t* tokens, int64_t T, int64_t n_logits, float* logits, const DumpFn& dump) override {
    const int64_t V = w_.hp.n_vocab;
    PRIMAL_CHECK(n_logits >= 1 && n_logits <= T, "forward: {} logit rows requested for {} tokens", n_logits, T);
    float* out = logits;
    if (!out) {
      scratch_.resize(size_t(n_logits * V));
      out = scratch_.data();
    }
    llama_forward(w_, cache_, tokens, T, n_logits, out, dump);
    std::copy(out + (n_logits - 1) * V, out + n_logits * V, last_.begin());
    have_ = true;
  }

  void last_logits(float* out) override {
    PRIMAL_CHECK(have_, "no logits yet: run a forward pass first");
    std::copy(last_.begin(), last_.end(), out);
  }

  std::vector<TokenLogit> top_k(int64_t k, float penalty, const std::vector<int32_t>& recent) override {
    PRIMAL_CHECK(have_, "no logits yet: run a forward pass first");
    return top_k_host(last_.data(), int64_t(last_.size()), k, penalty, recent);
  }

 private:
  const LlamaWeights& w_;
  KVCache cache_;
  std::vector<float> last_;     // (V) logits of the last token
  std::vector<float> scratch_;  // (n_logits, V) when the caller wants none
  bool have_ = false;
};

}  // namespace

std::vector<TokenLogit> Backend::top_k(int64_t k, float penalty, const std::vector<int32_t>& recent) {
  std::vector<float> row(size_t(hparams().n_vocab));
  last_logits(row.data());
  return top_k_host(row.data(), int64_t(row.size()), k, penalty, recent);
}

std::vector<TokenLogit> top_k_host(const float* logits, int64_t V, int64_t k, float penalty,
                                   const std::vector<int32_t>& recent) {
  PRIMAL_CHECK(k >= 1 && k <= V, "top-k: k = {} outside 1..{}", k, V);
  std::vector<TokenLogit> c(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) c[size_t(i)] = {int32_t(i), logits[i]};
  if (penalty != 1.0f) {
    for (int32_t id : std::unordered_set<int32_t>(recent.begin(), recent.end())) {
      if (id < 0 || id >= V) continue;
      float& l = c[size_t(id)].logit;
      l = l > 0 ? l / penalty : l * penalty;
    }
  }
  auto better = [](const TokenLogit& a, const TokenLogit& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  std::partial_sort(c.begin(), c.begin() + k, c.end(), better);
  c.resize(size_t(k));
  return c;
}

size_t decode_weight_bytes(const LlamaWeights& w) {
  size_t n = w.tok_embd->row_stride();
  // A LUT matrix is read with its fp16 scales (the grid is a few KB, read once).
  auto add = [&](const TensorRef* t) {
    n += t->nbytes;
    if (t->lut.scale && t->lut.group > 0) n += size_t(t->nelements() / t->lut.group) * sizeof(uint16_t);
  };
  for (const LayerWeights& l : w.layers) {
    for (const TensorRef* t : {l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down}) add(t);
    n += sizeof(float) * (l.attn_norm.size() + l.ffn_norm.size() + l.bq.size() + l.bk.size() + l.bv.size());
  }
  add(w.output);
  return n + sizeof(float) * w.output_norm.size();
}

std::unique_ptr<Backend> make_cpu_backend(const LlamaWeights& w, int64_t n_ctx) {
  return std::make_unique<CpuBackend>(w, n_ctx);
}

}  // namespace primal
