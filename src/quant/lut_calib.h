// Calibration for the quantizer: the float model is run on a calibration text and, for every
// matrix, the mean square of each of its inputs is recorded,
//   importance[i] = mean over calibration tokens of a[t, i]^2       (i < ne0)
// where a is the activation the matrix multiplies (attn_norm output for Q/K/V, the attention
// output for attn_output, ffn_norm output for gate/up, the SwiGLU product for ffn_down, the final
// norm's output for the head). With these as the weights of the scale search, the quantizer
// minimizes E[|(W - Q) a|^2] under the assumption that inputs are uncorrelated (the diagonal of
// the activations' second moment, as llama.cpp's imatrix). The token embedding has no input
// activation; its rows are weighted by how often the calibration text uses each token.
// With `full`, the whole second moment H = mean a a^T (ne0 x ne0) of each input is kept too, for
// error-compensating quantization (quant/lut_gptq.h); importance is its diagonal.
// The stats also keep the calibration windows and the float model's log-probabilities on them,
// from which mixed precision measures each matrix's sensitivity (quant/lut_mixed.h).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace primal {

class ModelSource;

struct CalibStats {
  std::map<std::string, std::vector<float>> importance;  // matrix name -> (ne0) mean squared input
  // matrix name -> (ne0, ne0) mean of a a^T over the calibration tokens (shared by the matrices
  // that read the same input); only with `full`.
  std::map<std::string, std::shared_ptr<const std::vector<double>>> hessian;
  std::vector<float> token_counts;                       // (V) uses of each token in the windows
  std::vector<std::vector<int32_t>> windows;             // calibration windows of tokens
  int64_t n_tokens = 0;                                  // tokens run through the model

  // The importance vector of a matrix, or null when it has none (token embedding, no calib).
  const std::vector<float>* importance_of(const std::string& name) const;
  const std::vector<double>* hessian_of(const std::string& name) const;  // null when none
};

// Tokenize `text_path` with the model's vocabulary, take its first n_tokens tokens in windows of
// n_ctx, run them through the float model and gather the statistics. Throws naming the file
// when it cannot be read or holds fewer than 2 tokens.
CalibStats collect_calib_stats(const ModelSource& src, const std::string& text_path, int64_t n_tokens, int64_t n_ctx,
                               bool full = false);

}  // namespace primal
