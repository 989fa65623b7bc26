// The small kernels of the GPU trainer's step that are not layer ops: the residual add, the
// token-embedding gather from a LUT table, and AdamW on the float parameters with its
// gradient norm. Each is the twin of host code of src/train/ (the specification):
//   add_inplace         forward_backward.cpp's residual loops            y[i] += x[i]
//   lut_embedding_rows  LutWeight::dequantize_rows<float> of one row per token
//   sum_squares         AdamW::grad_norm's per-parameter sum of g^2 (fp64)
//   adamw_update        AdamW::step's per-element update (fp64, same expression)
// All pointers are device memory; every call is asynchronous on `s` unless it says otherwise.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/cuda/buffer.h"
#include "ops/cuda/lut_train.h"

namespace primal::cuda {

// y: (n) += x: (n), fp32 (one rounding per element, as the CPU's +=).
void add_inplace(float* y, const float* x, int64_t n, cudaStream_t s);

// out: (N, I) written, row t = W[tokens[t], :] of the LUT matrix w (bit-identical to
// LutWeight::dequantize_rows<float>: one fp32 product scale * grid). tokens: (N) int32, each in
// [0, w.O) (the caller validates; an id outside is skipped, its row left unwritten).
void lut_embedding_rows(float* out, const int32_t* tokens, int64_t N, const LutTrainView& w, cudaStream_t s);

// *out (one double, device) = sum_i g[i]^2 in fp64 over n values, in a fixed order that depends
// on n only (bitwise reproducible run to run; may differ from the CPU's sequential sum in the last
// fp64 bits). scratch: (sum_squares_scratch(n)) doubles.
int64_t sum_squares_scratch(int64_t n);
void sum_squares(const float* g, int64_t n, double* out, double* scratch, cudaStream_t s);

// One AdamW step of one parameter tensor, AdamW::step's loop body for every i < n:
//   g = grad[i] * clip_scale; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2   (fp64, stored fp32)
//   u = (m / bc1) / (sqrt(v / bc2) + eps)
//   relative (LUT scales): p <- p - lr |p| u - lr wd p;   else p <- p - lr (u + wd p)
// with the same fp64 operations in the same order and no fused multiply-adds, so the result is
// bit-identical with the CPU's for the same inputs.
struct AdamArgs {
  double clip_scale = 1.0;     // min(1, clip / ||g||)
  double b1 = 0.9, b2 = 0.95;
  double bc1 = 1.0, bc2 = 1.0; // 1 - b1^t, 1 - b2^t (host pow, the CPU's values)
  double lr = 0.0, wd = 0.0, eps = 1e-8;
  bool relative = false;       // the LUT-scale form
};
void adamw_update(float* p, const float* grad, float* m, float* v, int64_t n, const AdamArgs& a, cudaStream_t s);

// The same two steps for many tensors at once, bit for bit what the calls above give tensor by
// tensor (each tensor keeps its own blocks and reduction tree), in two launches for the sums and
// one for the updates instead of three per tensor (a model has hundreds of small scale and norm
// tensors: the launches, not the bytes, were the cost). desc: device memory of
// batch_desc_bytes(count) bytes for the descriptors, which these calls upload on s.
struct SumSquaresItem {
  const float* g = nullptr;  // (n)
  int64_t n = 0;
  double* out = nullptr;     // one double (device)
};
struct AdamItem {
  float *p = nullptr, *m = nullptr, *v = nullptr;  // (n) each
  const float* g = nullptr;                        // (n)
  int64_t n = 0;
  AdamArgs a;
};
size_t batch_desc_bytes(size_t count);
// scratch: (sum_squares_batch_scratch(items)) doubles.
int64_t sum_squares_batch_scratch(const std::vector<SumSquaresItem>& items);
void sum_squares_batch(const std::vector<SumSquaresItem>& items, double* scratch, void* desc, cudaStream_t s);
void adamw_update_batch(const std::vector<AdamItem>& items, void* desc, cudaStream_t s);

}  // namespace primal::cuda
