// Tensor-core fragments for the hand-written bf16 kernels (flash attention): mma.sync m16n8k16
// (bf16 operands, fp32 accumulators) and ldmatrix loads of its operands from shared memory.
//
// Fragments of mma.sync.m16n8k16, lane = 4 g + t (the lower half of a 32-bit register holds
// the lower index):
//   A (16 x 16, row major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16 x 8, k x n):      b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C (16 x 8):             c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// ldmatrix.x4 loads four 8 x 8 bf16 matrices, lane i naming the address of row i % 8 of matrix
// i / 8; register j of a lane then holds row g, columns 2t, 2t+1 of matrix j (.trans: of its
// transpose). Tiles are row major with rows padded by 16 bytes (pitch D + 8): the 8 rows an
// ldmatrix phase reads start 4 banks apart, so no bank conflicts.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

namespace primal::cuda::mma {

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// c += A B (A: 4 registers, B: b0, b1).
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const __nv_bfloat16* p) {
  const unsigned a = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], const __nv_bfloat16* p) {
  const unsigned a = unsigned(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// The A fragment of rows m0 .. m0+15, columns k0 .. k0+15 of a row-major tile [m][k] (pitch P).
__device__ __forceinline__ void load_a(uint32_t a[4], const __nv_bfloat16* tile, int P, int m0, int k0, int lane) {
  ldsm_x4(a, tile + (m0 + (lane & 15)) * P + k0 + 8 * (lane >> 4));
}
// The B fragments of two n-tiles (n0 .. n0+7: b[0], b[1]; n0+8 .. n0+15: b[2], b[3]), k0 .. k0+15,
// from a tile stored [n][k] (k contiguous: K of S = Q K^T).
__device__ __forceinline__ void load_b_nk(uint32_t b[4], const __nv_bfloat16* tile, int P, int n0, int k0, int lane) {
  ldsm_x4(b, tile + (n0 + (lane & 7) + 8 * (lane >> 4)) * P + k0 + 8 * ((lane >> 3) & 1));
}
// The same from a tile stored [k][n] (n contiguous: V of O = P V), by the transposing load.
__device__ __forceinline__ void load_b_kn(uint32_t b[4], const __nv_bfloat16* tile, int P, int k0, int n0, int lane) {
  ldsm_x4_trans(b, tile + (k0 + (lane & 15)) * P + n0 + 8 * (lane >> 4));
}

}  // namespace primal::cuda::mma
