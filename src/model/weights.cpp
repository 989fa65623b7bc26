#include "model/weights.h"

#include "core/error.h"
#include "quant/dequant.h"

namespace primal {
namespace {

// A small tensor (norm, bias) in fp32; it must hold exactly n elements.
std::vector<float> load_vector(const ModelSource& src, const std::string& name, int64_t n) {
  const TensorRef& t = src.tensor(name);
  PRIMAL_CHECK(t.nelements() == n, "{}: tensor '{}' has {} elements, expected {}", src.path(), name,
               t.nelements(), n);
  PRIMAL_CHECK(can_dequantize(t.type), "{}: tensor '{}' has unsupported type {} (no CPU dequantizer)", src.path(),
               name, dtype_name(t.type));
  PRIMAL_CHECK(t.nbytes == row_bytes(t.type, n), "{}: tensor '{}' holds {} bytes, expected {}", src.path(), name,
               t.nbytes, row_bytes(t.type, n));
  std::vector<float> v(static_cast<size_t>(n));
  dequantize_row(t.type, t.data, v.data(), n);
  return v;
}

// A matrix the matmul will read: its type must be dequantizable (LUT types with their scales and
// grid attached) and its size consistent.
const TensorRef* matrix(const ModelSource& src, const std::string& name) {
  const TensorRef& t = src.tensor(name);
  PRIMAL_CHECK(t.ne.size() == 2, "{}: tensor '{}' is not a matrix", src.path(), name);
  PRIMAL_CHECK(can_dequantize(t), "{}: tensor '{}' has unsupported type {} (no CPU dequantizer)", src.path(),
               name, dtype_name(t.type));
  PRIMAL_CHECK(t.nbytes == row_bytes(t.type, t.ne[0]) * size_t(t.ne[1]),
               "{}: tensor '{}' holds {} bytes, expected {} for its shape", src.path(), name, t.nbytes,
               row_bytes(t.type, t.ne[0]) * size_t(t.ne[1]));
  return &t;
}

cpu::RopeParams rope_params(const ModelSource& src, const HParams& hp) {
  cpu::RopeParams r;
  r.head_dim = hp.head_dim;
  r.n_rot = hp.rope_dim;
  r.neox = hp.rope_neox;
  std::vector<float> factors;
  double linear = 1;
  // llama.cpp's llama3 GGUFs carry the per-pair frequency divisors as a tensor.
  if (src.find("rope_freqs.weight")) factors = load_vector(src, "rope_freqs.weight", hp.rope_dim / 2);
  switch (hp.rope_scaling) {
    case RopeScaling::None: break;
    case RopeScaling::Linear: linear = hp.rope_factor; break;
    case RopeScaling::Llama3:
      if (factors.empty())
        factors = cpu::llama3_freq_factors(hp.rope_dim, hp.rope_theta, hp.rope_factor, hp.rope_low_freq_factor,
                                           hp.rope_high_freq_factor, double(hp.rope_orig_ctx));
      break;
    case RopeScaling::Yarn: fail("{}: rope scaling 'yarn' is not supported by the forward pass", src.path());
  }
  r.inv_freq = cpu::rope_inv_freq(hp.rope_dim, hp.rope_theta, linear, factors.empty() ? nullptr : factors.data());
  return r;
}

}  // namespace

LlamaWeights load_weights(const ModelSource& src) {
  LlamaWeights w;
  w.hp = src.hparams();
  const HParams& hp = w.hp;
  hp.validate(src.path());
  const int64_t C = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_embd_kv();
  w.tok_embd = matrix(src, "token_embd.weight");
  w.output_norm = load_vector(src, "output_norm.weight", C);
  w.output = hp.tied_embeddings ? w.tok_embd : matrix(src, "output.weight");
  w.layers.resize(size_t(hp.n_layer));
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    LayerWeights& lw = w.layers[size_t(l)];
    lw.attn_norm = load_vector(src, b + "attn_norm.weight", C);
    lw.wq = matrix(src, b + "attn_q.weight");
    lw.wk = matrix(src, b + "attn_k.weight");
    lw.wv = matrix(src, b + "attn_v.weight");
    if (hp.qkv_bias) {
      lw.bq = load_vector(src, b + "attn_q.bias", Q);
      lw.bk = load_vector(src, b + "attn_k.bias", KV);
      lw.bv = load_vector(src, b + "attn_v.bias", KV);
    }
    lw.wo = matrix(src, b + "attn_output.weight");
    lw.ffn_norm = load_vector(src, b + "ffn_norm.weight", C);
    lw.w_gate = matrix(src, b + "ffn_gate.weight");
    lw.w_up = matrix(src, b + "ffn_up.weight");
    lw.w_down = matrix(src, b + "ffn_down.weight");
  }
  w.rope = rope_params(src, hp);
  return w;
}

std::unique_ptr<Model> Model::open(const std::string& path) {
  auto m = std::make_unique<Model>();
  m->source = ModelSource::open(path);
  m->w = load_weights(*m->source);
  return m;
}

}  // namespace primal
