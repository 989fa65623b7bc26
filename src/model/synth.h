// Random-weight GGUF models of real shapes, for benchmarks: the tensors, metadata and a minimal
// byte-level BPE vocabulary that llama.cpp loads, with weights drawn from normal(0, 0.02)
// (norms 1 + normal(0, 0.02), so no tensor is zero; the normal is sampled through a 65536-entry
// quantile table, so it is truncated at 4.17 standard deviations) and stored in a chosen type.
//
// Tensor types follow llama-quantize's default choices (src/llama-quant.cpp) for a plain ftype:
//   - 1-D tensors (norms, biases) are F32;
//   - F32 / F16 / BF16: every matrix in that type;
//   - a quantized type T: every matrix in T, except the output head (output.weight, or
//     token_embd.weight when the embeddings are tied), which is Q8_0 when T is Q8_0 or when the
//     row length is not a multiple of 256, and Q6_K otherwise;
//   - a K-quant whose row length is not a multiple of 256 falls back as llama-quantize does
//     (Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0).
// llama.cpp's K-quant mixes (_S/_M/_L, which raise attn_v and ffn_down of some layers) are not
// emulated: --type Q4_K means Q4_K everywhere but the head.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "core/dtype.h"
#include "model/hparams.h"

namespace primal {

struct SynthShape {
  std::string name;         // "qwen2.5-1.5b"
  std::string arch;         // "llama" or "qwen2"
  std::string pre;          // tokenizer.ggml.pre: "qwen2", "llama-bpe", "default"
  int64_t n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  int64_t n_ctx = 4096;
  float rope_theta = 10000.0f;
  float rms_eps = 1e-5f;
  bool tied = false;        // output head = token_embd.weight
  bool qkv_bias = false;
};

// qwen2.5-0.5b, qwen2.5-1.5b, llama2-7b, llama3-8b, seed-500m (the seed documents' training
// config); throws listing the known names otherwise.
SynthShape synth_shape(const std::string& name);
std::string synth_shape_names();  // "qwen2.5-0.5b, qwen2.5-1.5b, llama2-7b, llama3-8b, seed-500m"

// The type a tensor gets for the chosen type (see above); `name` is the GGUF tensor name.
DType synth_tensor_type(const SynthShape& s, DType type, const std::string& name, int64_t row_len);

struct SynthOptions {
  DType type = DType::F16;
  uint64_t seed = 1;
  std::function<void(size_t done, size_t total, const std::string& name)> progress;
};

// Writes the model to `path` (atomically, one tensor in memory at a time). Throws for a type that
// cannot be written or an inconsistent shape.
void write_synth_gguf(const SynthShape& s, const SynthOptions& o, const std::string& path);

}  // namespace primal
