#include "io/model_source.h"

#include <filesystem>

#include "core/error.h"
#include "io/gguf.h"
#include "quant/lut_format.h"

namespace primal {

namespace {
class GgufModelSource : public ModelSource {
 public:
  explicit GgufModelSource(const std::string& path) {
    path_ = path;
    gguf_ = std::make_shared<GgufFile>(path);
    hp_ = hparams_from_gguf(*gguf_);
    for (const auto& t : gguf_->tensors()) add_tensor(TensorRef{t.name, t.type, t.ne, t.data, t.nbytes, {}});
    attach_lut_params(tensors_, path_);  // LUT weights: their scales and grids
    finish();
  }
};
}  // namespace

std::unique_ptr<ModelSource> ModelSource::open(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) return open_hf_model(path);
  if (!fs::exists(path)) fail("{}: no such file or folder", path);
  return std::make_unique<GgufModelSource>(path);
}

const TensorRef* ModelSource::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorRef& ModelSource::tensor(const std::string& name) const {
  const TensorRef* t = find(name);
  if (!t) fail("{}: missing tensor '{}'", path_, name);
  return *t;
}

void ModelSource::add_tensor(TensorRef t) {
  if (index_.count(t.name)) fail("{}: duplicate tensor '{}'", path_, t.name);
  index_[t.name] = tensors_.size();
  tensors_.push_back(std::move(t));
}

void ModelSource::finish() {
  hp_.tied_embeddings = find("output.weight") == nullptr;
  hp_.qkv_bias = find("blk.0.attn_q.bias") != nullptr;
  if (const TensorRef* e = find("token_embd.weight"); e && e->ne.size() == 2 && hp_.n_vocab == 0)
    hp_.n_vocab = e->ne[1];
  hp_.validate(path_);

  // Every tensor the forward pass reads must exist with the shape the hyper-parameters imply.
  auto expect = [&](const std::string& name, std::vector<int64_t> ne) {
    const TensorRef& t = tensor(name);
    if (t.ne != ne) {
      std::string got, want;
      for (auto d : t.ne) got += std::to_string(d) + " ";
      for (auto d : ne) want += std::to_string(d) + " ";
      fail("{}: tensor '{}' has shape [{}] but the hyper-parameters imply [{}]", path_, name, got, want);
    }
  };
  const int64_t C = hp_.n_embd, Q = hp_.n_head * hp_.head_dim, KV = hp_.n_embd_kv(), F = hp_.n_ff;
  expect("token_embd.weight", {C, hp_.n_vocab});
  expect("output_norm.weight", {C});
  if (!hp_.tied_embeddings) expect("output.weight", {C, hp_.n_vocab});
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    expect(b + "attn_norm.weight", {C});
    expect(b + "attn_q.weight", {C, Q});
    expect(b + "attn_k.weight", {C, KV});
    expect(b + "attn_v.weight", {C, KV});
    expect(b + "attn_output.weight", {Q, C});
    expect(b + "ffn_norm.weight", {C});
    expect(b + "ffn_gate.weight", {C, F});
    expect(b + "ffn_up.weight", {C, F});
    expect(b + "ffn_down.weight", {F, C});
    if (hp_.qkv_bias) {
      expect(b + "attn_q.bias", {Q});
      expect(b + "attn_k.bias", {KV});
      expect(b + "attn_v.bias", {KV});
    }
  }
}

}  // namespace primal
