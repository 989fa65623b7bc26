// An HF checkpoint folder (config.json + safetensors, sharded or not) as a ModelSource: tensors
// renamed to llama.cpp's names and viewed in place in the mappings, in ggml dimension order
// (ne[0] = the last safetensors dimension). Q/K rows stay in HF order, hence rope_neox = true.
#include "core/error.h"
#include "io/hf_config.h"
#include "io/hf_names.h"
#include "io/model_source.h"
#include "io/safetensors.h"

namespace primal {

std::unique_ptr<ModelSource> open_hf_model(const std::string& dir) {
  const HfConfig cfg = read_hf_config(dir);
  std::unique_ptr<ModelSource> m(new ModelSource());
  m->path_ = dir;
  m->hp_ = cfg.hp;
  auto st = std::make_shared<SafetensorsModel>(dir);
  m->keep_alive_.push_back(st);

  for (const SafetensorsTensor* t : st->tensors()) {
    if (hf_tensor_is_ignored(t->name)) continue;
    // A tied head is the embedding: a saved copy of it is not a separate weight.
    if (t->name == "lm_head.weight" && cfg.hp.tied_embeddings) continue;
    const auto g = gguf_name_for_hf(t->name);
    if (!g) fail("{}: tensor '{}' is not a weight of the {} layout", t->file, t->name, cfg.model_type);
    if (g->layer >= cfg.hp.n_layer)
      fail("{}: tensor '{}' belongs to layer {} but config.json has {} layers", t->file, t->name, g->layer,
           cfg.hp.n_layer);
    m->add_tensor(TensorRef{g->name, t->weight_type(), t->ne(), t->data, t->nbytes, {}});
  }
  if (!cfg.hp.tied_embeddings && !m->find("output.weight"))
    fail("{}: config.json says tie_word_embeddings = false but the checkpoint has no lm_head.weight", dir);
  if (cfg.hp.qkv_bias && !m->find("blk.0.attn_q.bias"))
    fail("{}: model_type '{}' has q/k/v biases but the checkpoint has no self_attn.q_proj.bias", dir,
         cfg.model_type);
  m->finish();
  m->hp_.rope_neox = true;
  return m;
}

}  // namespace primal
