// Rotary position embedding (RoPE). A pair (a, b) of one head's vector at position p is rotated
// by the angle p * inv_freq[i]:  a' = a cos - b sin,  b' = a sin + b cos.
// Layouts of the pair i (0 <= i < n_rot/2):
//   pairs ("normal", llama.cpp's llama GGUFs whose Q/K rows the converter permuted): (2i, 2i+1)
//   halves ("NeoX", HF checkpoints and qwen2):                                       (i, i + n_rot/2)
// Dimensions n_rot..HS-1 pass through unchanged.
#pragma once
#include <cstdint>
#include <vector>

namespace primal::cpu {

struct RopeParams {
  int64_t head_dim = 0;          // HS
  int64_t n_rot = 0;             // rotated dimensions (even, <= HS)
  bool neox = false;             // halves layout when true, pairs layout when false
  std::vector<double> inv_freq;  // (n_rot/2): angle per position of pair i, all scaling applied
};

// inv_freq[i] = theta^(-2i/n_rot) / (freq_factors ? freq_factors[i] : 1) / linear_factor.
// freq_factors (n_rot/2) are llama.cpp's rope_freqs (llama3 scaling); linear_factor is the
// "linear" rope scaling factor (positions divided by it), 1 for none.
std::vector<double> rope_inv_freq(int64_t n_rot, double theta, double linear_factor,
                                  const float* freq_factors);

// llama3 rope scaling expressed as per-pair frequency divisors (what llama.cpp's converter writes
// as rope_freqs.weight and what HF's _compute_llama3_parameters applies): high frequencies (short
// wavelengths) are kept, low frequencies are divided by `factor`, and the band between is blended.
std::vector<float> llama3_freq_factors(int64_t n_rot, double theta, double factor, double low_freq_factor,
                                       double high_freq_factor, double orig_ctx);

// x: (T, n_heads, HS), rotated in place; token t sits at position pos0 + t.
void rope_forward(float* x, int64_t T, int64_t n_heads, int64_t pos0, const RopeParams& p);

}  // namespace primal::cpu
