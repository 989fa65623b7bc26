// The bf16 mode's LUT linear GEMMs with the dequantization in the loads, on Hopper (sm_90a): the
// packed indices of a weight tile come into shared memory by TMA beside the activations, and each
// consumer thread turns its share into bf16 values in registers (scale * grid[idx] in fp32, then
// rounded: lut_train.cu's dequantization, value for value) that feed the tensor cores directly as
// wgmma's A operand. No bf16 copy of the weights is written or read (lut_train.h's path
// dequantizes into its scratch, then calls cuBLAS).
//   forward: out_k[t, o] = sum_i inp[t, i] W_k[o, i] (+ bias_k[o])   the W_k stacked by rows
//   dinp:    out[t, i] (+)= sum_k sum_o dout_k[t, o] W_k[o, i]      the W_k stacked along the sum
// Both are computed transposed (D^T = W inp^T, D^T = W^T dout^T): only wgmma's A operand, the
// tile's rows, may come from registers, so the weights are the rows of a tile.
// Tile: 128 weight rows (forward) or columns (dinp) by 256 tokens, k steps of 64; a persistent
// kernel, a producer warpgroup (TMA; a warp copies the step's scales into shared memory) and two
// consumer warpgroups of 64 tile rows each. Sums in fp32; the order is the kernel's, not cuBLAS's.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace primal::cuda {

constexpr int kLgMax = 3;  // matrices a launch takes (q, k, v; gate, up)

struct LutGemmOut {
  void* p = nullptr;            // (N, ld) fp32 or bf16
  int64_t ld = 0;
  bool bf16 = false;            // bf16: the accumulators rounded once; no bias, no accumulation
  bool accumulate = false;      // fp32: out += the product (cuBLAS's beta = 1)
  const float* bias = nullptr;  // fp32 forward: (O_k), added after the sum
};

struct LutGemmMat {
  const uint8_t* idx = nullptr;    // (O, row_bytes) packed indices
  int64_t row_bytes = 0;
  const float* scale = nullptr;    // (O, groups) fp32
  int64_t groups = 0;
  int64_t G = 0;                   // weights per scale
  const float* grid = nullptr;     // (K) fp32
  int64_t O = 0;                   // rows
  const uint16_t* dout = nullptr;  // dinp: (N, ldd) bf16, this matrix's output gradient
  int64_t ldd = 0;                 //   rows ldd values apart (>= O)
  LutGemmOut out;                  // forward: this matrix's output
};

struct LutGemmLaunch {
  bool dinp = false;               // false: the forward product; true: the input gradient
  int n = 0, bits = 4;             // matrices (1 .. kLgMax) and their index width (2, 4 or 8)
  int64_t N = 0, I = 0;            // tokens; the weights' row length (every matrix's)
  const uint16_t* inp = nullptr;   // forward: (N, ldi) bf16
  int64_t ldi = 0;
  LutGemmMat m[kLgMax];
  LutGemmOut out;                  // dinp's output, (N, >= I)
};

// Whether this process can run the kernel: a compute capability 9.0 device, the sm_90a image
// loaded, the driver's tensor-map encoder found.
bool lut_gemm_available();
// The shape conditions: forward O_k % 128 == 0 and I % 64 == 0; dinp O_k % 64 == 0 and
// I % 128 == 0; G a power of two >= 16 with I / G a multiple of 4 (scale rows of whole 16 bytes),
// grids of at most 256 values, index rows multiples of 16 bytes,
// 16-byte aligned operands, strides multiples of 8 values.
bool lut_gemm_shape_ok(const LutGemmLaunch& L);
void lut_gemm_launch(const LutGemmLaunch& L, cudaStream_t s);

}  // namespace primal::cuda
