#include "model/forward.h"

#include <vector>

#include "core/error.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

namespace primal {

KVCache make_kv_cache(const LlamaWeights& w, int64_t n_ctx) {
  return KVCache(w.hp.n_layer, n_ctx, w.hp.n_embd_kv());
}

void llama_forward(const LlamaWeights& w, KVCache& cache, const int32_t* tokens, int64_t T, int64_t n_logits,
                   float* logits, const DumpFn& dump) {
  const HParams& hp = w.hp;
  const int64_t C = hp.n_embd, NH = hp.n_head, KVH = hp.n_head_kv, HS = hp.head_dim, F = hp.n_ff;
  const int64_t Q = NH * HS, KV = KVH * HS, V = hp.n_vocab;
  PRIMAL_CHECK(T > 0, "forward: no tokens");
  PRIMAL_CHECK(n_logits >= 1 && n_logits <= T, "forward: {} logit rows requested for {} tokens", n_logits, T);
  PRIMAL_CHECK(cache.n_layer() == hp.n_layer && cache.kv_dim() == KV, "forward: KV cache shaped for another model");
  cache.check_room(T);
  const int64_t pos0 = cache.n_past();
  auto named = [&](const std::string& name, int64_t l, const float* data, std::vector<int64_t> shape) {
    if (dump) dump(l < 0 ? name : name + "-" + std::to_string(l), data, shape);
  };

  // Activations of this batch.
  std::vector<float> x(size_t(T * C));     // (T, C) the residual stream
  std::vector<float> xn(size_t(T * C));    // (T, C) normalized input of a sub-block
  std::vector<float> q(size_t(T * Q));     // (T, NH, HS)
  std::vector<float> att(size_t(T * Q));   // (T, NH, HS) attention output per head
  std::vector<float> proj(size_t(T * C));  // (T, C) output of a sub-block before the residual add
  std::vector<float> gate(size_t(T * F));  // (T, F)
  std::vector<float> up(size_t(T * F));    // (T, F)

  cpu::embedding_forward(x.data(), tokens, T, *w.tok_embd);
  named("inp_embd", -1, x.data(), {T, C});
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const LayerWeights& lw = w.layers[size_t(l)];
    float* kc = cache.k(l) + pos0 * KV;  // (T, KVH, HS): this batch's rows of the cache
    float* vc = cache.v(l) + pos0 * KV;
    auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };

    cpu::rmsnorm_forward(xn.data(), x.data(), lw.attn_norm.data(), T, C, hp.rms_eps);
    named("attn_norm", l, xn.data(), {T, C});
    cpu::matmul_forward(q.data(), xn.data(), *lw.wq, bias(lw.bq), T);
    cpu::matmul_forward(kc, xn.data(), *lw.wk, bias(lw.bk), T);
    cpu::matmul_forward(vc, xn.data(), *lw.wv, bias(lw.bv), T);
    cpu::rope_forward(q.data(), T, NH, pos0, w.rope);
    cpu::rope_forward(kc, T, KVH, pos0, w.rope);
    named("Qcur", l, q.data(), {T, NH, HS});
    named("Kcur", l, kc, {T, KVH, HS});
    named("Vcur", l, vc, {T, KVH, HS});
    cpu::attention_forward(att.data(), q.data(), cache.k(l), cache.v(l), T, pos0, NH, KVH, HS);
    named("kqv", l, att.data(), {T, NH, HS});
    cpu::matmul_forward(proj.data(), att.data(), *lw.wo, nullptr, T);
    named("attn_out", l, proj.data(), {T, C});
    cpu::residual_forward(x.data(), x.data(), proj.data(), T * C);
    named("ffn_inp", l, x.data(), {T, C});

    cpu::rmsnorm_forward(xn.data(), x.data(), lw.ffn_norm.data(), T, C, hp.rms_eps);
    named("ffn_norm", l, xn.data(), {T, C});
    cpu::matmul_forward(gate.data(), xn.data(), *lw.w_gate, nullptr, T);
    cpu::matmul_forward(up.data(), xn.data(), *lw.w_up, nullptr, T);
    named("ffn_gate", l, gate.data(), {T, F});
    named("ffn_up", l, up.data(), {T, F});
    cpu::swiglu_forward(gate.data(), gate.data(), up.data(), T * F);
    named("ffn_swiglu", l, gate.data(), {T, F});
    cpu::matmul_forward(proj.data(), gate.data(), *lw.w_down, nullptr, T);
    named("ffn_out", l, proj.data(), {T, C});
    cpu::residual_forward(x.data(), x.data(), proj.data(), T * C);
    named("l_out", l, x.data(), {T, C});
  }
  cache.advance(T);

  // Only the rows whose logits are wanted go through the final norm and the head.
  const float* last = x.data() + (T - n_logits) * C;
  cpu::rmsnorm_forward(xn.data(), last, w.output_norm.data(), n_logits, C, hp.rms_eps);
  named("result_norm", -1, xn.data(), {n_logits, C});
  if (!logits) return;  // the caller wants the head's input only (quantizer calibration)
  cpu::matmul_forward(logits, xn.data(), *w.output, nullptr, n_logits);
  named("result_output", -1, logits, {n_logits, V});
}

}  // namespace primal
