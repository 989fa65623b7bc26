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
#include "quant/lut_format.h"
#include "quant/lut_pack.h"

namespace primal::train {
namespace {

// primal.lut.format of a model whose LUT matrices are all of type t.
std::string lut_format_name(DType t) { return "lut" + std::to_string(lut_bits(t)); }

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
    w.add_kv("primal.lut.version", GgufValue::u32(kLutFormatVersion));
    w.add_kv("primal.lut.format", GgufValue::string(format));
    w.add_kv("primal.lut.grid", GgufValue::string(grid_name.empty() ? "unnamed" : grid_name));
    w.add_kv("primal.lut.group", GgufValue::u32(uint32_t(std::max<int64_t>(group, 0))));
  }

  if (!m.rope_freqs.empty())
    w.add_tensor("rope_freqs.weight", DType::F32, {int64_t(m.rope_freqs.size())}, m.rope_freqs.data(),
                 m.rope_freqs.size() * 4);
  for (const auto& [t, g] : shared)
    if (uniform[t]) w.add_tensor(lut_shared_grid_name(t), DType::F32, {int64_t(g->size())}, g->data(), g->size() * 4);

  auto matrix = [&](const Matrix& mt, const std::string& name) {
    if (!mt.is_lut()) {
      add_dense(w, name, o.dense_type, {mt.I, mt.O}, mt.dense.data(), mt.dense.size());
      return;
    }
    const LutWeight& L = *mt.lut;
    w.add_tensor(name, L.type, {L.I, L.O}, L.idx.data(), L.idx.size());
    add_dense(w, lut_scale_name(name), DType::F16, {L.groups(), L.O}, L.scale.data(), L.scale.size());
    if (!uniform[L.type]) w.add_tensor(lut_grid_name(name), DType::F32, {L.K()}, L.grid.data(), L.grid.size() * 4);
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

}  // namespace primal::train
