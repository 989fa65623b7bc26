// A Llama-family model's weights in GPU memory: the matrices in their stored formats
// (ops/cuda/matrix.h layouts), the small vectors (norms, biases, RoPE frequencies) in fp32/fp64.
// Shapes as in model/weights.h.
#pragma once
#include <vector>

#include "model/weights.h"
#include "ops/cuda/matrix.h"

namespace primal::cuda {

struct CudaLayer {
  // Q, K and V are stacked into one matrix (one GEMM / one GEMV launch) when they share a type,
  // and so are gate and up; wq ... w_down are views into the owners below either way.
  std::vector<DeviceMatrix> owned;
  MatrixView wqkv;                  // (NH*HS + 2*KVH*HS, C) when stacked, else rows == 0
  MatrixView wq, wk, wv;            // (NH*HS, C), (KVH*HS, C), (KVH*HS, C)
  MatrixView wo;                    // (C, NH*HS)
  MatrixView w_gu;                  // (2F, C) gate rows then up rows when stacked, else rows == 0
  MatrixView w_gate, w_up;          // (F, C)
  MatrixView w_down;                // (C, F)
  const float* attn_norm = nullptr; // (C)
  const float* ffn_norm = nullptr;  // (C)
  const float* bqkv = nullptr;      // (NH*HS + 2*KVH*HS) q | k | v biases, or null
};

struct CudaWeights {
  HParams hp;
  DeviceMatrix tok_embd;             // (V, C)
  DeviceMatrix output_own;           // (V, C) when untied
  MatrixView output;                 // the head: output_own's view, or tok_embd's when tied
  const float* output_norm = nullptr;  // (C)
  const double* inv_freq = nullptr;    // (n_rot/2) RoPE angle per position, scaling applied
  std::vector<CudaLayer> layers;
  DeviceBuffer small;                // the vectors above
  size_t matrix_bytes = 0;           // device bytes of all matrices

  // Uploads `w` (throws naming the tensor for a type without GPU kernels, or when the device
  // memory does not suffice).
  static CudaWeights upload(const LlamaWeights& w);
};

}  // namespace primal::cuda
