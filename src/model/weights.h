// The weights of a Llama-family model (llama, mistral, qwen2) as the forward pass reads them.
// Matrices stay where the model source mapped them (GGUF or safetensors, any stored type) and are
// dequantized on the fly by the matmul; only the small vectors (norms, biases) are held in fp32.
//
// Shape letters: V vocabulary, C = n_embd, L layers, NH query heads, KVH K/V heads, HS head size,
// F = n_ff. A matrix "(O, I)" has O rows of I elements: out = inp W^T maps I features to O.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor_ref.h"
#include "io/model_source.h"
#include "model/hparams.h"
#include "ops/cpu/rope.h"

namespace primal {

struct LayerWeights {
  std::vector<float> attn_norm;  // (C)
  const TensorRef* wq = nullptr;  // (NH*HS, C)
  const TensorRef* wk = nullptr;  // (KVH*HS, C)
  const TensorRef* wv = nullptr;  // (KVH*HS, C)
  std::vector<float> bq;         // (NH*HS)  qwen2 only, else empty
  std::vector<float> bk;         // (KVH*HS) qwen2 only, else empty
  std::vector<float> bv;         // (KVH*HS) qwen2 only, else empty
  const TensorRef* wo = nullptr;  // (C, NH*HS)
  std::vector<float> ffn_norm;   // (C)
  const TensorRef* w_gate = nullptr;  // (F, C)
  const TensorRef* w_up = nullptr;    // (F, C)
  const TensorRef* w_down = nullptr;  // (C, F)
};

struct LlamaWeights {
  HParams hp;
  const TensorRef* tok_embd = nullptr;  // (V, C)
  std::vector<LayerWeights> layers;     // (L)
  std::vector<float> output_norm;       // (C)
  const TensorRef* output = nullptr;    // (V, C); the same tensor as tok_embd when tied
  cpu::RopeParams rope;                 // layout and per-pair frequencies, scaling applied
};

// Views into `src` (which must outlive the result). Throws naming the source when a tensor is
// missing, has a type without a CPU dequantizer, or the rope scaling is not supported.
LlamaWeights load_weights(const ModelSource& src);

// A model ready to run: its source (the mappings) and the weights that point into it.
struct Model {
  std::unique_ptr<ModelSource> source;
  LlamaWeights w;

  static std::unique_ptr<Model> open(const std::string& path);  // GGUF file or HF folder
  const HParams& hparams() const { return w.hp; }
};

}  // namespace primal
