// The vote cast's kernel arguments that host code outside a .cu file also builds (the fused
// weight gradient + cast's launch, lut_dw_cast.h): the matrix as the kernels read it and the bf16
// cast's per-launch scalars.
#pragma once
#include <cstdint>

#include "ops/cuda/votes.h"

namespace primal::cuda::vk {

// The matrix, as the kernels read it.
struct Mat {
  uint8_t* idx;        // (O, row_bytes)
  const float* scale;  // (O, groups)
  const float* grid;   // (K)
  int64_t O, I, G, groups, row_bytes, K;
};

// The bf16 cast's per-launch scalars, in fp32 (the bf16 mode's arithmetic), formed on the host
// (votes_fast.cu fast_args).
struct FastArgs {
  const CastDyn* dyn;  // non-null (a CUDA graph's cast): c0, inv_bc and a.prefix read from there
  float c0;        // -lr U
  float eps;       // eps
  int ilim;        // the clamp of x's rounding, 2 vmax
  float b2, c1;    // beta2; (1 - beta2) / I: row_sq = b2 row_sq + c1 sum g^2
  float inv_bc;    // 1 / (1 - beta2^(events + 1))
  float inv_o;     // 1 / O: the column sums' terms g^2 / O
  int vmax;
};

}  // namespace primal::cuda::vk
