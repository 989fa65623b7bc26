// HF checkpoint folder -> GGUF, following llama.cpp's convert_hf_to_gguf.py so that llama.cpp
// loads the result: llama.cpp tensor names and metadata keys, tokenizer.ggml.* from tokenizer.json,
// 1-D tensors (norms, biases) kept F32, Q/K rows permuted for the llama architecture (its RoPE
// pairs (2i, 2i+1); HF and qwen2 rotate halves), rope_freqs.weight for llama3 rope scaling.
// Tensors are converted one at a time while the file is written (never the whole model in memory).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/hparams.h"

namespace primal {

struct ConvertOptions {
  DType type = DType::F16;  // 2-D weights: F32, F16, BF16 or Q8_0 (1-D tensors are always F32)
  std::string name;         // general.name; empty: from the folder name, as llama.cpp does
  std::string pre;          // tokenizer.ggml.pre; empty: detected from tokenizer.json
  std::function<void(const std::string&)> log;  // progress lines; may be empty
};

// Convert; every check (config, tensors, tokenizer) runs before the output is created, and the
// output appears under its name only when complete. Throws Error naming the file and problem.
void convert_hf_to_gguf(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& o);

// llama.cpp's file_type for a conversion to `t` (general.file_type): F32 0, F16 1, Q8_0 7, BF16 32.
uint32_t llama_file_type(DType t);

// The row permutation llama.cpp's converter applies to Q (n_head heads) and K (n_head_kv heads)
// of the llama architecture: row r of the GGUF tensor is row llama_qk_source_row(r, ...) of the HF
// tensor. Within each head of d rows, GGUF row 2i + j comes from HF row j * d/2 + i.
int64_t llama_qk_source_row(int64_t r, int64_t n_head, int64_t n_rows);

// general.name from a checkpoint folder name ("ref-llama-code" -> "Ref Llama Code").
std::string model_name_from_dir(const std::string& dir);
// general.size_label from a parameter count (31634176 -> "32M"), as gguf-py rounds it.
std::string size_label(int64_t n_params);
// llama3 rope scaling: the per-frequency factors llama.cpp stores as rope_freqs.weight
// (head_dim / 2 floats; frequency k of base^(-2k/d) is divided by factor k).
std::vector<float> llama3_rope_factors(const HParams& hp);

}  // namespace primal
