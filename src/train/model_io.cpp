#include "train/model_io.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include "core/error.h"
#include "core/half.h"
#include "io/convert.h"
#include "io/hf_config.h"
#include "io/hf_vocab.h"
#include "quant/dequant.h"

namespace primal::train {
namespace {

bool is_lut_type(DType t) { return t == DType::LUT4 || t == DType::LUT8 || t == DType::LUT16; }
bool is_any_lut_id(DType t) { return uint32_t(t) >= 1000 && uint32_t(t) <= 1004; }

std::string lut_format_name(DType t) {
  return t == DType::LUT4 ? "lut4" : t == DType::LUT8 ? "lut8" : "lut16";
}

void add_hparams(GgufWriter& w, const HParams& hp, int64_t n_params, const std::string& name) {
  const std::string a = hp.arch + ".";
  w.add_kv("general.architecture", GgufValue::string(hp.arch));
  w.add_kv("general.type", GgufValue::string("model"));
  w.add_kv("general.name", GgufValue::string(name.empty() ? (hp.name.empty() ? "primal-trained" : hp.name) : name));
  w.add_kv("general.size_label", GgufValue::string(size_label(n_params)));
  w.add_kv(a + "block_count", GgufValue::u32(uint32_t(hp.n_layer)));
  w.add_kv(a + "context_length", GgufValue::u32(uint32_t(hp.n_ctx_train)));
  w.add_kv(a + "embedding_length", GgufValue::u32(uint32_t(hp.n_embd)));
  w.add_kv(a + "feed_forward_length", GgufValue::u32(uint32_t(hp.n_ff)));
  w.add_kv(a + "attention.head_count", GgufValue::u32(uint32_t(hp.n_head)));
  w.add_kv(a + "attention.head_count_kv", GgufValue::u32(uint32_t(hp.n_head_kv)));
  w.add_kv(a + "rope.freq_base", GgufValue::f32(hp.rope_theta));
  w.add_kv(a + "attention.layer_norm_rms_epsilon", GgufValue::f32(hp.rms_eps));
  w.add_kv(a + "attention.key_length", GgufValue::u32(uint32_t(hp.head_dim)));
  w.add_kv(a + "attention.value_length", GgufValue::u32(uint32_t(hp.head_dim)));
  w.add_kv(a + "vocab_size", GgufValue::u32(uint32_t(hp.n_vocab)));
  w.add_kv(a + "rope.dimension_count", GgufValue::u32(uint32_t(hp.rope_dim)));
  if (hp.rope_scaling == RopeScaling::Linear) {
    w.add_kv(a + "rope.scaling.type", GgufValue::string("linear"));
    w.add_kv(a + "rope.scaling.factor", GgufValue::f32(hp.rope_factor));
  }
}

// Bytes of a dense fp32 array converted to `t` when the writer asks.
void add_dense(GgufWriter& w, const std::string& name, DType t, std::vector<int64_t> ne, const float* src, size_t n) {
  w.add_tensor(name, t, std::move(ne), [t, src, n](uint8_t* dst, size_t nbytes) {
    if (t == DType::F32) {
      std::memcpy(dst, src, nbytes);
      return;
    }
    uint16_t* d = reinterpret_cast<uint16_t*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
  });
}

}  // namespace

void add_model(GgufWriter& w, const TrainModel& m, const KvList& tokenizer_kv, const SaveOptions& o) {
  PRIMAL_CHECK(o.dense_type == DType::F16 || o.dense_type == DType::F32, "save: dense matrices must be F16 or F32");
  const HParams& hp = m.hp;
  PRIMAL_CHECK(hp.arch == "qwen2" ? hp.rope_neox : !hp.rope_neox,
               "save: {} models are written with {} rope layout", hp.arch, hp.arch == "qwen2" ? "NeoX" : "pairs");
  // LUT bookkeeping: one grid per type when all agree.
  std::vector<const Matrix*> all;
  all.push_back(&m.tok_embd);
  for (int64_t l = 0; l < hp.n_layer; ++l)
    for (const Matrix* mt : m.layers[size_t(m.layer_of[size_t(l)])].matrices()) all.push_back(mt);
  if (!hp.tied_embeddings) all.push_back(&m.output);
  std::map<DType, const std::vector<float>*> shared;
  std::map<DType, bool> uniform;
  std::string grid_name, format;
  int64_t group = -1;
  for (const Matrix* mt : all) {
    if (!mt->is_lut()) continue;
    const LutWeight& L = *mt->lut;
    auto it = shared.find(L.type);
    if (it == shared.end()) shared[L.type] = &L.grid, uniform[L.type] = true;
    else if (*it->second != L.grid) uniform[L.type] = false;
    const std::string f = lut_format_name(L.type);
    format = format.empty() || format == f ? f : "mixed";
    grid_name = grid_name.empty() || grid_name == L.grid_name ? L.grid_name : "mixed";
    const int64_t g = L.G == L.I ? 0 : L.G;
    group = group < 0 || group == g ? g : -2;
  }

  add_hparams(w, hp, m.n_params(), o.name);
  for (const auto& [k, v] : tokenizer_kv) w.add_kv(k, v);
  w.add_kv("general.quantization_version", GgufValue::u32(2));
  if (!shared.empty()) {
    w.add_kv("primal.lut.version", GgufValue::u32(1));
    w.add_kv("primal.lut.format", GgufValue::string(format));
    w.add_kv("primal.lut.grid", GgufValue::string(grid_name.empty() ? "unnamed" : grid_name));
    w.add_kv("primal.lut.group", GgufValue::u32(uint32_t(std::max<int64_t>(group, 0))));
  }

  if (!m.rope_freqs.empty())
    w.add_tensor("rope_freqs.weight", DType::F32, {int64_t(m.rope_freqs.size())}, m.rope_freqs.data(),
                 m.rope_freqs.size() * 4);
  for (const auto& [t, g] : shared)
    if (uniform[t]) w.add_tensor("lut_grid." + dtype_name(t), DType::F32, {int64_t(g->size())}, g->data(), g->size() * 4);

  auto matrix = [&](const Matrix& mt, const std::string& name) {
    if (!mt.is_lut()) {
      add_dense(w, name, o.dense_type, {mt.I, mt.O}, mt.dense.data(), mt.dense.size());
      return;
    }
    const LutWeight& L = *mt.lut;
    w.add_tensor(name, L.type, {L.I, L.O}, L.idx.data(), L.idx.size());
    add_dense(w, name + ".scale", DType::F16, {L.groups(), L.O}, L.scale.data(), L.scale.size());
    if (!uniform[L.type]) w.add_tensor(name + ".grid", DType::F32, {L.K()}, L.grid.data(), L.grid.size() * 4);
  };
  auto vec = [&](const std::string& name, const std::vector<float>& v) {
    w.add_tensor(name, DType::F32, {int64_t(v.size())}, v.data(), v.size() * 4);
  };
  matrix(m.tok_embd, "token_embd.weight");
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const TrainLayer& L = m.layers[size_t(m.layer_of[size_t(l)])];
    const std::string b = "blk." + std::to_string(l) + ".";
    vec(b + "attn_norm.weight", L.attn_norm);
    matrix(L.wq, b + "attn_q.weight");
    if (!L.bq.empty()) vec(b + "attn_q.bias", L.bq);
    matrix(L.wk, b + "attn_k.weight");
    if (!L.bk.empty()) vec(b + "attn_k.bias", L.bk);
    matrix(L.wv, b + "attn_v.weight");
    if (!L.bv.empty()) vec(b + "attn_v.bias", L.bv);
    matrix(L.wo, b + "attn_output.weight");
    vec(b + "ffn_norm.weight", L.ffn_norm);
    matrix(L.w_gate, b + "ffn_gate.weight");
    matrix(L.w_up, b + "ffn_up.weight");
    matrix(L.w_down, b + "ffn_down.weight");
  }
  vec("output_norm.weight", m.output_norm);
  if (!hp.tied_embeddings) matrix(m.output, "output.weight");
}

KvList tokenizer_metadata(const std::string& source) {
  KvList kv;
  if (std::filesystem::is_directory(source)) return hf_tokenizer_metadata(source, read_hf_config(source));
  const GgufFile f(source);
  for (const auto& [k, v] : f.kv())
    if (k.rfind("tokenizer.", 0) == 0) kv.emplace_back(k, v);
  PRIMAL_CHECK(!kv.empty(), "{}: no tokenizer.* metadata to carry into the trained model", source);
  return kv;
}

bool has_lut_tensors(const GgufFile& f) {
  for (const auto& t : f.tensors())
    if (is_any_lut_id(t.type)) return true;
  return false;
}

namespace {

TensorRef ref_of(const GgufTensorInfo& t) { return TensorRef{t.name, t.type, t.ne, t.data, t.nbytes}; }

// A LUT matrix stored as W, W.scale and a grid.
std::shared_ptr<LutWeight> read_lut(const GgufFile& f, const GgufTensorInfo& t) {
  const std::string what = f.path() + ": LUT tensor '" + t.name + "'";
  PRIMAL_CHECK(is_lut_type(t.type), "{}: type {} is not trainable (LUT4, LUT8, LUT16)", what, dtype_name(t.type));
  PRIMAL_CHECK(t.ne.size() == 2, "{}: not a matrix", what);
  const int64_t I = t.ne[0], O = t.ne[1];
  const GgufTensorInfo* s = f.find_tensor(t.name + ".scale");
  PRIMAL_CHECK(s, "{}: its scales '{}.scale' are missing", what, t.name);
  PRIMAL_CHECK(s->type == DType::F16 && s->ne.size() == 2 && s->ne[1] == O && s->ne[0] > 0 && I % s->ne[0] == 0,
               "{}: scales must be F16 [I / G, {}]", what, O);
  const GgufTensorInfo* g = f.find_tensor(t.name + ".grid");
  if (!g) g = f.find_tensor("lut_grid." + dtype_name(t.type));
  PRIMAL_CHECK(g, "{}: no grid ('{}.grid' or 'lut_grid.{}')", what, t.name, dtype_name(t.type));
  PRIMAL_CHECK(g->type == DType::F32 && g->ne.size() == 1, "{}: grid '{}' must be a 1-D F32 tensor", what, g->name);
  std::vector<float> grid(size_t(g->ne[0]));
  std::memcpy(grid.data(), g->data, grid.size() * 4);
  auto w = std::make_shared<LutWeight>(LutWeight::make(t.type, O, I, I / s->ne[0], std::move(grid), what));
  w->grid_name = f.get_str("primal.lut.grid", "");
  PRIMAL_CHECK(t.nbytes == w->idx.size(), "{}: {} bytes of indices, expected {}", what, t.nbytes, w->idx.size());
  std::memcpy(w->idx.data(), t.data, t.nbytes);
  const uint16_t* sc = reinterpret_cast<const uint16_t*>(s->data);
  for (size_t k = 0; k < w->scale.size(); ++k) {
    uint16_t h;
    std::memcpy(&h, sc + k, 2);
    w->scale[k] = f16_to_f32(h);
    PRIMAL_CHECK(std::isfinite(w->scale[k]), "{}: scale {} is not finite", what, k);
  }
  return w;
}

}  // namespace

TrainModel read_train_model(const GgufFile& f, const LutSpec& spec, int64_t share) {
  TrainModel m;
  m.hp = hparams_from_gguf(f);
  HParams& hp = m.hp;
  hp.tied_embeddings = !f.find_tensor("output.weight");
  hp.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  hp.validate(f.path());
  PRIMAL_CHECK(hp.rope_scaling == RopeScaling::None || hp.rope_scaling == RopeScaling::Linear,
               "{}: rope scaling of this model is not supported by the trainer", f.path());
  const int64_t C = hp.n_embd, Q = hp.n_head * hp.head_dim, KV = hp.n_embd_kv(), F = hp.n_ff, V = hp.n_vocab;
  m.rope.head_dim = hp.head_dim;
  m.rope.n_rot = hp.rope_dim;
  m.rope.neox = hp.rope_neox;
  if (const GgufTensorInfo* rf = f.find_tensor("rope_freqs.weight")) {
    m.rope_freqs.resize(size_t(rf->nelements()));
    dequantize_tensor(ref_of(*rf), m.rope_freqs.data());
    PRIMAL_CHECK(int64_t(m.rope_freqs.size()) == hp.rope_dim / 2, "{}: rope_freqs.weight has {} entries, expected {}",
                 f.path(), m.rope_freqs.size(), hp.rope_dim / 2);
  }
  m.rope.inv_freq = cpu::rope_inv_freq(hp.rope_dim, hp.rope_theta,
                                       hp.rope_scaling == RopeScaling::Linear ? hp.rope_factor : 1.0,
                                       m.rope_freqs.empty() ? nullptr : m.rope_freqs.data());

  auto matrix = [&](const std::string& name, int64_t O, int64_t I, bool to_lut) {
    const GgufTensorInfo& t = f.tensor(name);
    PRIMAL_CHECK(t.ne.size() == 2 && t.ne[0] == I && t.ne[1] == O, "{}: tensor '{}' is not [{}, {}]", f.path(), name, I, O);
    Matrix mt;
    mt.name = name;
    mt.O = O;
    mt.I = I;
    if (is_any_lut_id(t.type)) {
      mt.lut = read_lut(f, t);
      return mt;
    }
    const TensorRef r = ref_of(t);
    PRIMAL_CHECK(can_dequantize(t.type), "{}: tensor '{}' has unsupported type {}", f.path(), name, dtype_name(t.type));
    PRIMAL_CHECK(t.nbytes == row_bytes(t.type, I) * size_t(O), "{}: tensor '{}' holds {} bytes, expected {}", f.path(),
                 name, t.nbytes, row_bytes(t.type, I) * size_t(O));
    std::vector<float> w(size_t(O * I));
    dequantize_tensor(r, w.data());
    if (!to_lut || !spec.enabled()) {
      mt.dense = std::move(w);
      return mt;
    }
    const int64_t G = spec.group > 0 ? spec.group : I;
    mt.lut = std::make_shared<LutWeight>(quantize_to_lut(w.data(), O, I, spec.type, G,
                                                         builtin_grid(spec.grid, int64_t(1) << lut_bits_of(spec.type)),
                                                         name));
    mt.lut->grid_name = spec.grid;
    return mt;
  };
  auto vec = [&](const std::string& name, int64_t n) {
    const GgufTensorInfo& t = f.tensor(name);
    PRIMAL_CHECK(t.nelements() == n && can_dequantize(t.type) && t.nbytes == row_bytes(t.type, n),
                 "{}: tensor '{}' is not {} dequantizable values", f.path(), name, n);
    std::vector<float> v(static_cast<size_t>(n));
    dequantize_row(t.type, t.data, v.data(), n);
    return v;
  };
  PRIMAL_CHECK(share >= 0 && share <= hp.n_layer, "{}: --share {} is outside 0..{}", f.path(), share, hp.n_layer);
  const int64_t P = share > 0 ? share : hp.n_layer;
  m.tok_embd = matrix("token_embd.weight", V, C, spec.quantize_embeddings);
  for (int64_t p = 0; p < P; ++p) {
    const std::string b = "blk." + std::to_string(p) + ".";
    TrainLayer l;
    l.attn_norm = vec(b + "attn_norm.weight", C);
    l.ffn_norm = vec(b + "ffn_norm.weight", C);
    if (hp.qkv_bias) {
      l.bq = vec(b + "attn_q.bias", Q);
      l.bk = vec(b + "attn_k.bias", KV);
      l.bv = vec(b + "attn_v.bias", KV);
    }
    l.wq = matrix(b + "attn_q.weight", Q, C, true);
    l.wk = matrix(b + "attn_k.weight", KV, C, true);
    l.wv = matrix(b + "attn_v.weight", KV, C, true);
    l.wo = matrix(b + "attn_output.weight", C, Q, true);
    l.w_gate = matrix(b + "ffn_gate.weight", F, C, true);
    l.w_up = matrix(b + "ffn_up.weight", F, C, true);
    l.w_down = matrix(b + "ffn_down.weight", C, F, true);
    m.layers.push_back(std::move(l));
  }
  m.output_norm = vec("output_norm.weight", C);
  if (!hp.tied_embeddings) m.output = matrix("output.weight", V, C, spec.quantize_embeddings);
  m.layer_of.resize(size_t(hp.n_layer));
  for (int64_t l = 0; l < hp.n_layer; ++l) m.layer_of[size_t(l)] = l % P;
  return m;
}

}  // namespace primal::train
