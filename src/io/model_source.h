// A model opened from a GGUF file or an HF checkpoint folder: hyper-parameters and tensors under
// llama.cpp's names ("token_embd.weight", "blk.N.attn_q.weight", "output.weight", ...), viewed in
// place in the memory mappings (never copied whole).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor_ref.h"
#include "model/hparams.h"

namespace primal {

class GgufFile;

class ModelSource {
 public:
  // A GGUF file, or a folder with config.json + *.safetensors (sharded or not).
  static std::unique_ptr<ModelSource> open(const std::string& path);
  virtual ~ModelSource() = default;

  const std::string& path() const { return path_; }
  const HParams& hparams() const { return hp_; }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  const TensorRef* find(const std::string& name) const;
  const TensorRef& tensor(const std::string& name) const;  // throws naming the source

  const GgufFile* gguf() const { return gguf_.get(); }  // null for HF folders
  bool is_hf() const { return !gguf_; }

 protected:
  ModelSource() = default;
  void add_tensor(TensorRef t);   // throws on duplicates
  void finish();                  // derives tied_embeddings / qkv_bias, validates shapes

  std::string path_;
  HParams hp_;
  std::vector<TensorRef> tensors_;
  std::map<std::string, size_t> index_;
  std::shared_ptr<GgufFile> gguf_;
  std::vector<std::shared_ptr<void>> keep_alive_;  // mappings the TensorRefs point into

  friend std::unique_ptr<ModelSource> open_hf_model(const std::string& dir);
};

// Implemented in io/hf_model.cpp.
std::unique_ptr<ModelSource> open_hf_model(const std::string& dir);

}  // namespace primal
