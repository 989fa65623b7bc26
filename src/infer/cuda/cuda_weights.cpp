#include "infer/cuda/cuda_weights.h"

#include <cstring>

#include "core/error.h"

namespace primal::cuda {

CudaWeights CudaWeights::upload(const LlamaWeights& w) {
  CudaWeights d;
  d.hp = w.hp;
  const HParams& hp = w.hp;
  const int64_t C = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_embd_kv(), L = hp.n_layer;
  auto up = [&](const TensorRef* t) {
    DeviceMatrix m = upload_matrix(*t);
    d.matrix_bytes += m.bytes();
    return m;
  };
  d.tok_embd = up(w.tok_embd);
  if (hp.tied_embeddings || w.output == w.tok_embd) {
    d.output = d.tok_embd.view;
  } else {
    d.output_own = up(w.output);
    d.output = d.output_own.view;
  }

  // Small vectors: per layer attn_norm, ffn_norm (C each) and the q|k|v bias; output_norm; then
  // the RoPE frequencies in fp64 (kept 8-byte aligned at the end).
  const bool bias = hp.qkv_bias;
  const size_t per_layer = size_t(2 * C + (bias ? Q + 2 * KV : 0));
  const size_t n_float = size_t(L) * per_layer + size_t(C);
  const size_t float_bytes = (n_float * sizeof(float) + 255) / 256 * 256;
  std::vector<uint8_t> host(float_bytes + w.rope.inv_freq.size() * sizeof(double));
  float* f = reinterpret_cast<float*>(host.data());
  d.layers.resize(size_t(L));
  for (CudaLayer& cl : d.layers) cl.owned.reserve(7);  // views point into them: no reallocation
  std::vector<size_t> off_attn(static_cast<size_t>(L)), off_ffn(static_cast<size_t>(L)), off_b(static_cast<size_t>(L));
  size_t k = 0;
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& lw = w.layers[size_t(l)];
    off_attn[size_t(l)] = k;
    std::memcpy(f + k, lw.attn_norm.data(), sizeof(float) * size_t(C)), k += size_t(C);
    off_ffn[size_t(l)] = k;
    std::memcpy(f + k, lw.ffn_norm.data(), sizeof(float) * size_t(C)), k += size_t(C);
    if (bias) {
      off_b[size_t(l)] = k;
      std::memcpy(f + k, lw.bq.data(), sizeof(float) * size_t(Q)), k += size_t(Q);
      std::memcpy(f + k, lw.bk.data(), sizeof(float) * size_t(KV)), k += size_t(KV);
      std::memcpy(f + k, lw.bv.data(), sizeof(float) * size_t(KV)), k += size_t(KV);
    }
  }
  const size_t off_out = k;
  std::memcpy(f + k, w.output_norm.data(), sizeof(float) * size_t(C));
  std::memcpy(host.data() + float_bytes, w.rope.inv_freq.data(), w.rope.inv_freq.size() * sizeof(double));
  d.small = DeviceBuffer(host.size());
  copy_to_device(d.small.data(), host.data(), host.size());
  const float* base = d.small.as<float>();
  for (int64_t l = 0; l < L; ++l) {
    CudaLayer& cl = d.layers[size_t(l)];
    const LayerWeights& lw = w.layers[size_t(l)];
    cl.attn_norm = base + off_attn[size_t(l)];
    cl.ffn_norm = base + off_ffn[size_t(l)];
    cl.bqkv = bias ? base + off_b[size_t(l)] : nullptr;
    auto own = [&](DeviceMatrix m) {
      d.matrix_bytes += m.bytes();
      cl.owned.push_back(std::move(m));
      return cl.owned.back().view;
    };
    if (can_stack({lw.wq, lw.wk, lw.wv})) {
      cl.wqkv = own(upload_stacked({lw.wq, lw.wk, lw.wv}));
      cl.wq = row_slice(cl.wqkv, 0, Q), cl.wk = row_slice(cl.wqkv, Q, KV), cl.wv = row_slice(cl.wqkv, Q + KV, KV);
    } else {
      cl.wq = own(upload_matrix(*lw.wq)), cl.wk = own(upload_matrix(*lw.wk)), cl.wv = own(upload_matrix(*lw.wv));
    }
    cl.wo = own(upload_matrix(*lw.wo));
    const int64_t F = hp.n_ff;
    if (can_stack({lw.w_gate, lw.w_up})) {
      cl.w_gu = own(upload_stacked({lw.w_gate, lw.w_up}));
      cl.w_gate = row_slice(cl.w_gu, 0, F), cl.w_up = row_slice(cl.w_gu, F, F);
    } else {
      cl.w_gate = own(upload_matrix(*lw.w_gate)), cl.w_up = own(upload_matrix(*lw.w_up));
    }
    cl.w_down = own(upload_matrix(*lw.w_down));
  }
  d.output_norm = base + off_out;
  d.inv_freq = reinterpret_cast<const double*>(d.small.as<uint8_t>() + float_bytes);
  return d;
}

}  // namespace primal::cuda
