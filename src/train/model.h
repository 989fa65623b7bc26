// The model the trainer holds: Llama-family layers whose matrices are LUT weights (or dense fp32),
// fp32 norms/biases, embeddings and head (dense fp32 float parameters, or LUT when the source
// model stores them so). Layers may be shared: logical layer l computes with physical layer
// layer_of[l] (the seeds' recursive core), so a model of L layers may own fewer.
//
// Shape letters: V vocabulary, C = n_embd, NH, KVH heads, HS head size, Q = NH*HS,
// KV = KVH*HS, F = n_ff, L logical layers, P physical layers.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/hparams.h"
#include "ops/cpu/rope.h"
#include "train/matrix.h"

namespace primal {
class ModelSource;
}

namespace primal::train {

struct TrainLayer {
  std::vector<float> attn_norm;  // (C)
  std::vector<float> bq;         // (Q)  qwen2 only, else empty
  std::vector<float> bk;         // (KV) qwen2 only
  std::vector<float> bv;         // (KV) qwen2 only
  std::vector<float> ffn_norm;   // (C)
  Matrix wq;                     // (Q, C)
  Matrix wk;                     // (KV, C)
  Matrix wv;                     // (KV, C)
  Matrix wo;                     // (C, Q)
  Matrix w_gate;                 // (F, C)
  Matrix w_up;                   // (F, C)
  Matrix w_down;                 // (C, F)

  std::vector<Matrix*> matrices() { return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down}; }
  std::vector<const Matrix*> matrices() const { return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down}; }
};

struct TrainModel {
  HParams hp;                      // rope_neox false for llama (Q/K rows in llama.cpp's order)
  cpu::RopeParams rope;
  Matrix tok_embd;                 // (V, C)
  std::vector<TrainLayer> layers;  // (P) physical layers
  std::vector<int64_t> layer_of;   // (L) logical layer -> physical layer
  std::vector<float> output_norm;  // (C)
  Matrix output;                   // (V, C); unused (empty) when hp.tied_embeddings
  std::vector<float> rope_freqs;   // llama3 per-pair divisors when the source had them, else empty

  const Matrix& head() const { return hp.tied_embeddings ? tok_embd : output; }
  int64_t n_physical() const { return int64_t(layers.size()); }
  // Every LUT matrix in model order (the order that numbers vote buffers and random streams).
  std::vector<Matrix*> lut_matrices();
  std::vector<const Matrix*> lut_matrices() const;
  int64_t n_params() const;        // parameters of the logical model (shared layers counted once)
};

// How float matrices become LUT ones.
struct LutSpec {
  DType type = DType::LUT4;
  int64_t group = 32;              // 0: one scale per row
  std::string grid = "iq4nl";      // quant/lut_grid.h name: prime, iq4nl, nf4, uniform, learned
  bool quantize_embeddings = false;  // token_embd / output too (else they stay dense fp32)
  // F32 (`--lut none`): layer matrices stay dense fp32 and train by AdamW (a float baseline).
  bool enabled() const { return type != DType::F32; }
};

// Float rows W (O, I) quantized as `spec` says (quant/lut_quantize.h, the quantizer of
// `primal quantize`).
LutWeight quantize_to_spec(const float* W, int64_t O, int64_t I, const LutSpec& spec, const std::string& what);

// Load from a ModelSource (GGUF or HF folder). LUT tensors are taken as they are; float or
// block-quantized layer matrices are dequantized and quantized to `spec`; embeddings and head are
// dense fp32 unless stored as LUT (or spec.quantize_embeddings). HF llama Q/K rows are permuted to
// llama.cpp's order. share > 0: the model keeps `share` physical layers (the first ones of the
// source) used cyclically: layer_of[l] = l % share.
TrainModel load_train_model(const ModelSource& src, const LutSpec& spec, int64_t share,
                            const std::function<void(const std::string&)>& log = nullptr);

// The Llama-family model of hp (norms 1, biases 0, rope from hp) with its matrices made by `matrix`
// in model order: (name, rows O, row length I, the init std, whether it is token_embd / output);
// the output projections wo and w_down get std 0.02 / sqrt(2 L). share as load_train_model.
using MatrixMaker = std::function<Matrix(const std::string& name, int64_t O, int64_t I, double std, bool embedding)>;
TrainModel model_skeleton(const HParams& hp, int64_t share, const MatrixMaker& matrix);

// A freshly initialized model: matrices N(0, 0.02) (the output projections wo and w_down scaled by
// 1/sqrt(2 L)), quantized to `spec`; norms 1; embeddings N(0, 0.02). Counter-based RNG per tensor,
// so the result depends on the seed only.
TrainModel init_random_model(const HParams& hp, const LutSpec& spec, int64_t share, uint64_t seed);

// "layers=4,embd=64,heads=4,kv_heads=2,ff=172,ctx=256" (keys: layers, embd, heads, kv_heads, ff,
// ctx, head_dim, theta, eps); vocab and special ids are set by the caller from the tokenizer.
HParams parse_shape(const std::string& spec);

}  // namespace primal::train
