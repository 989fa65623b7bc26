#include "train/model.h"

#include <cmath>
#include <sstream>

#include "core/error.h"
#include "io/convert.h"
#include "io/model_source.h"
#include "io/gguf.h"
#include "model/weights.h"
#include "quant/lut_pack.h"
#include "quant/dequant.h"
#include "train/rng.h"

namespace primal::train {

LutWeight quantize_to_spec(const float* W, int64_t O, int64_t I, const LutSpec& spec, const std::string& what) {
  return quantize_to_lut(W, O, I, spec.type, spec.group > 0 ? spec.group : I, spec.grid, what);
}

namespace {

// A matrix from a stored tensor: LUT stays LUT (indices, scales and grid copied as stored);
// anything else is dequantized, and quantized to the spec when `to_lut`. permute_heads > 0: HF
// Q/K rows reordered to llama.cpp's (pairs) order.
Matrix load_matrix(const TensorRef& t, const LutSpec& spec, bool to_lut, int64_t permute_heads,
                   const std::string& grid_name) {
  Matrix m;
  m.name = t.name;
  m.I = t.row_size();
  m.O = t.nrows();
  if (is_lut(t.type)) {
    PRIMAL_CHECK(permute_heads == 0, "{}: LUT tensors in an HF checkpoint are not expected", t.name);
    m.lut = std::make_shared<LutWeight>(LutWeight::from_tensor(t, grid_name));
    return m;
  }
  std::vector<float> w(static_cast<size_t>(m.O * m.I));
  for (int64_t r = 0; r < m.O; ++r) {
    const int64_t src = permute_heads > 0 ? llama_qk_source_row(r, permute_heads, m.O) : r;
    dequantize_tensor_row(t, src, w.data() + r * m.I);
  }
  if (!to_lut || !spec.enabled()) {
    m.dense = std::move(w);
    return m;
  }
  m.lut = std::make_shared<LutWeight>(quantize_to_spec(w.data(), m.O, m.I, spec, t.name));
  return m;
}

}  // namespace

std::vector<Matrix*> TrainModel::lut_matrices() {
  std::vector<Matrix*> out;
  if (tok_embd.is_lut()) out.push_back(&tok_embd);
  for (auto& l : layers)
    for (Matrix* m : l.matrices())
      if (m->is_lut()) out.push_back(m);
  if (!hp.tied_embeddings && output.is_lut()) out.push_back(&output);
  return out;
}

std::vector<const Matrix*> TrainModel::lut_matrices() const {
  const std::vector<Matrix*> m = const_cast<TrainModel*>(this)->lut_matrices();
  return {m.begin(), m.end()};
}

int64_t TrainModel::n_params() const {
  int64_t n = tok_embd.O * tok_embd.I + int64_t(output_norm.size());
  if (!hp.tied_embeddings) n += output.O * output.I;
  for (const auto& l : layers) {
    n += int64_t(l.attn_norm.size() + l.ffn_norm.size() + l.bq.size() + l.bk.size() + l.bv.size());
    for (const Matrix* m : l.matrices()) n += m->O * m->I;
  }
  return n;
}

TrainModel load_train_model(const ModelSource& src, const LutSpec& spec, int64_t share,
                            const std::function<void(const std::string&)>& log) {
  const LlamaWeights lw = load_weights(src);  // validates names, shapes and types
  TrainModel m;
  m.hp = lw.hp;
  m.rope = lw.rope;
  const HParams& hp = m.hp;
  // HF llama checkpoints rotate halves with Q/K rows in HF order; the trainer (and the GGUF it
  // writes) uses llama.cpp's order with pairs, as convert_hf_to_gguf.py does.
  const bool permute = src.is_hf() && hp.arch == "llama";
  if (permute) {
    m.hp.rope_neox = false;
    m.rope.neox = false;
  }
  if (const TensorRef* f = src.find("rope_freqs.weight")) {
    m.rope_freqs.resize(size_t(f->nelements()));
    dequantize_tensor(*f, m.rope_freqs.data());
  } else if (hp.rope_scaling == RopeScaling::Llama3) {
    // Saved models carry llama3 scaling as the divisors tensor (as llama.cpp's GGUFs do).
    m.rope_freqs = cpu::llama3_freq_factors(hp.rope_dim, hp.rope_theta, hp.rope_factor, hp.rope_low_freq_factor,
                                            hp.rope_high_freq_factor, double(hp.rope_orig_ctx));
  }
  const std::string grid_name = src.gguf() ? src.gguf()->get_str("primal.lut.grid", "") : "";
  PRIMAL_CHECK(share >= 0 && share <= hp.n_layer, "{}: --share {} is outside 0..{}", src.path(), share, hp.n_layer);
  const int64_t P = share > 0 ? share : hp.n_layer;
  m.tok_embd = load_matrix(*lw.tok_embd, spec, spec.quantize_embeddings, 0, grid_name);
  if (!hp.tied_embeddings) m.output = load_matrix(*lw.output, spec, spec.quantize_embeddings, 0, grid_name);
  m.output_norm = lw.output_norm;
  for (int64_t p = 0; p < P; ++p) {
    const LayerWeights& s = lw.layers[size_t(p)];
    if (log) log(fmt::format("layer {}/{}", p + 1, P));
    TrainLayer l;
    l.attn_norm = s.attn_norm;
    l.ffn_norm = s.ffn_norm;
    l.bq = s.bq;
    l.bk = s.bk;
    l.bv = s.bv;
    l.wq = load_matrix(*s.wq, spec, true, permute ? hp.n_head : 0, grid_name);
    l.wk = load_matrix(*s.wk, spec, true, permute ? hp.n_head_kv : 0, grid_name);
    l.wv = load_matrix(*s.wv, spec, true, 0, grid_name);
    l.wo = load_matrix(*s.wo, spec, true, 0, grid_name);
    l.w_gate = load_matrix(*s.w_gate, spec, true, 0, grid_name);
    l.w_up = load_matrix(*s.w_up, spec, true, 0, grid_name);
    l.w_down = load_matrix(*s.w_down, spec, true, 0, grid_name);
    // HF q/k biases follow their rows.
    if (permute && !l.bq.empty()) {
      const auto bq = l.bq, bk = l.bk;
      for (int64_t r = 0; r < int64_t(bq.size()); ++r) l.bq[size_t(r)] = bq[size_t(llama_qk_source_row(r, hp.n_head, int64_t(bq.size())))];
      for (int64_t r = 0; r < int64_t(bk.size()); ++r) l.bk[size_t(r)] = bk[size_t(llama_qk_source_row(r, hp.n_head_kv, int64_t(bk.size())))];
    }
    m.layers.push_back(std::move(l));
  }
  m.layer_of.resize(size_t(hp.n_layer));
  for (int64_t l = 0; l < hp.n_layer; ++l) m.layer_of[size_t(l)] = l % P;
  return m;
}

TrainModel model_skeleton(const HParams& hp_in, int64_t share, const MatrixMaker& matrix) {
  TrainModel m;
  m.hp = hp_in;
  m.hp.validate("--shape");
  const HParams& hp = m.hp;
  m.rope.head_dim = hp.head_dim;
  m.rope.n_rot = hp.rope_dim;
  m.rope.neox = hp.rope_neox;
  m.rope.inv_freq = cpu::rope_inv_freq(hp.rope_dim, hp.rope_theta, 1.0, nullptr);
  PRIMAL_CHECK(share >= 0 && share <= hp.n_layer, "--share {} is outside 0..{}", share, hp.n_layer);
  const int64_t P = share > 0 ? share : hp.n_layer;
  const int64_t C = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_embd_kv(), F = hp.n_ff, V = hp.n_vocab;
  const double proj_std = 0.02 / std::sqrt(2.0 * double(hp.n_layer));
  m.tok_embd = matrix("token_embd.weight", V, C, 0.02, true);
  for (int64_t p = 0; p < P; ++p) {
    const std::string b = "blk." + std::to_string(p) + ".";
    TrainLayer l;
    l.attn_norm.assign(size_t(C), 1.0f);
    l.ffn_norm.assign(size_t(C), 1.0f);
    if (hp.qkv_bias) {
      l.bq.assign(size_t(Q), 0.0f);
      l.bk.assign(size_t(KV), 0.0f);
      l.bv.assign(size_t(KV), 0.0f);
    }
    l.wq = matrix(b + "attn_q.weight", Q, C, 0.02, false);
    l.wk = matrix(b + "attn_k.weight", KV, C, 0.02, false);
    l.wv = matrix(b + "attn_v.weight", KV, C, 0.02, false);
    l.wo = matrix(b + "attn_output.weight", C, Q, proj_std, false);
    l.w_gate = matrix(b + "ffn_gate.weight", F, C, 0.02, false);
    l.w_up = matrix(b + "ffn_up.weight", F, C, 0.02, false);
    l.w_down = matrix(b + "ffn_down.weight", C, F, proj_std, false);
    m.layers.push_back(std::move(l));
  }
  m.output_norm.assign(size_t(C), 1.0f);
  if (!hp.tied_embeddings) m.output = matrix("output.weight", V, C, 0.02, true);
  m.layer_of.resize(size_t(hp.n_layer));
  for (int64_t l = 0; l < hp.n_layer; ++l) m.layer_of[size_t(l)] = l % P;
  return m;
}

TrainModel init_random_model(const HParams& hp, const LutSpec& spec, int64_t share, uint64_t seed) {
  uint64_t tensor = 0;
  return model_skeleton(hp, share, [&](const std::string& name, int64_t O, int64_t I, double std, bool embedding) {
    Matrix mt;
    mt.name = name;
    mt.O = O;
    mt.I = I;
    std::vector<float> w(static_cast<size_t>(O * I));
    Rng rng(seed, 0x1417ull, tensor++);
    for (auto& x : w) x = float(rng.normal() * std);
    if ((embedding && !spec.quantize_embeddings) || !spec.enabled()) {
      mt.dense = std::move(w);
      return mt;
    }
    mt.lut = std::make_shared<LutWeight>(quantize_to_spec(w.data(), O, I, spec, name));
    return mt;
  });
}

HParams parse_shape(const std::string& spec) {
  HParams hp;
  hp.arch = "llama";
  hp.n_ctx_train = 2048;
  std::stringstream ss(spec);
  std::string item;
  bool has_hd = false;
  while (std::getline(ss, item, ',')) {
    const auto eq = item.find('=');
    PRIMAL_CHECK(eq != std::string::npos, "--shape: '{}' is not key=value", item);
    const std::string k = item.substr(0, eq), v = item.substr(eq + 1);
    double x;
    try {
      size_t used = 0;
      x = std::stod(v, &used);
      PRIMAL_CHECK(used == v.size(), "--shape: '{}' is not a number", v);
    } catch (const std::logic_error&) {
      fail("--shape: '{}' is not a number", v);
    }
    auto whole = [&] {
      PRIMAL_CHECK(x >= 1 && x == std::floor(x) && x < 1e9, "--shape: {} must be a positive integer, got {}", k, v);
      return int64_t(x);
    };
    if (k == "layers") hp.n_layer = whole();
    else if (k == "embd") hp.n_embd = whole();
    else if (k == "heads") hp.n_head = whole();
    else if (k == "kv_heads") hp.n_head_kv = whole();
    else if (k == "ff") hp.n_ff = whole();
    else if (k == "ctx") hp.n_ctx_train = whole();
    else if (k == "head_dim") hp.head_dim = whole(), has_hd = true;
    else if (k == "theta") hp.rope_theta = float(x);
    else if (k == "eps") hp.rms_eps = float(x);
    else if (k == "qkv_bias") hp.qkv_bias = x != 0;  // (Qwen2's q, k and v biases)
    else fail("--shape: unknown key '{}' (layers, embd, heads, kv_heads, ff, ctx, head_dim, theta, eps, qkv_bias)", k);
  }
  PRIMAL_CHECK(hp.n_layer > 0 && hp.n_embd > 0 && hp.n_head > 0 && hp.n_ff > 0,
               "--shape needs at least layers, embd, heads and ff (got '{}')", spec);
  if (hp.n_head_kv == 0) hp.n_head_kv = hp.n_head;
  if (!has_hd) {
    PRIMAL_CHECK(hp.n_embd % hp.n_head == 0, "--shape: embd {} is not a multiple of heads {}", hp.n_embd, hp.n_head);
    hp.head_dim = hp.n_embd / hp.n_head;
  }
  hp.rope_dim = hp.head_dim;
  return hp;
}

}  // namespace primal::train
