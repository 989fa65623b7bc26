// Causal GQA attention for training on the tensor cores: the same semantics and layouts as
// ops/cuda/attention_train.h (and its CPU twin ops/cpu/attention_backward):
//   s_j = q . k_j / sqrt(HS) for keys j <= t,  p = softmax(s),  out = sum_j p_j v_j,
//   lse = log sum_j exp(s_j);
//   backward: p_j = exp(s_j - lse) (the given lse, no new max), D = dout . out, dp_j = dout . v_j,
//   ds_j = p_j (dp_j - D),  dq = sum_j ds_j k_j / sqrt(HS),  dk_j = sum ds_j q / sqrt(HS),
//   dv_j = sum p_j dout  (dk, dv summed over the queries t >= j of every query head of the group).
// Query head h reads K/V head h / G, G = NH / KVH.
//
// Why: attention_train.cu is a flash kernel on the CUDA cores in fp32 (the deterministic fp32
// mode's attention); this was the bf16 fast mode's first tensor-core attention, built from cuBLAS
// bf16 GEMMs with fp32 accumulation and a few small fp32 kernels, at the price of the (T, T) score
// matrices of a chunk of heads in a workspace and of the causally masked half computed for nothing.
// The trainer now uses the flash kernels of attention_mma.h (same rounding, scores never leave the
// registers: 2-4x faster); this one stays as an independent tensor-core reference that the tests
// hold to the same bounds.
//
// Method, per chunk = one sequence b and a run of consecutive query heads, in "segments" of gh
// heads that share a KV head (gh = G, several groups per chunk, when the workspace holds a whole
// group; otherwise gh is a divisor of G and a chunk is one segment):
//   gather q, k, v (and dout) of the chunk into bf16 (head, token, dim) copies, so that the gh
//   heads of a segment stack into one (gh T, HS) matrix and every product is one strided-batched
//   GEMM over the segments (cublasGemmStridedBatchedEx, bf16 operands, CUBLAS_COMPUTE_32F);
//   forward:  S = Q K^T (fp32); one warp per row: lse = max + log sum exp (fp32), then
//             P = exp(s / sqrt(HS) - lse) rounded to bf16, 0 for keys j > t, written over the
//             first half of S's row; O = P V (fp32), scattered into out;
//   backward: S = Q K^T, dP = dO V^T (fp32); one warp per row: D = dout . out (fp32, from the
//             fp32 out and dout), P as in the forward, dS = P (dP - D) rounded to bf16 over dP's
//             row (0 where masked, so masked keys add exactly zero);
//             dV = P^T dO and dK = dS^T Q / sqrt(HS), the gh heads of a segment summed inside the
//             GEMM (reduction length gh T), written straight into dv, dk (ldc = KVH HS); a group
//             split over chunks (gh < G) adds the later chunks with beta = 1, in head order;
//             dQ = dS K / sqrt(HS) (fp32, over the consumed Q, dO copies), scattered into dq.
// No atomics anywhere: every result is bitwise identical from run to run for a given workspace
// size on a given GPU and cuBLAS (cuBLAS may pick another kernel, so other fp32 rounding, for
// another batch count: workspaces that chunk differently agree to fp32 rounding, not bitwise).
//
// Workspace of a chunk of n heads in s segments (s KV heads), Tp = T rounded up to 8, every
// region rounded up to 256 bytes, the workspace pointer 16-byte aligned:
//   forward:  Q bf16 (n, T, HS) | K, V bf16 (s, T, HS) | S fp32 (n, T, Tp), P bf16 inside it |
//             O fp32 (n, T, HS)
//   backward: Q, dO bf16 (n, T, HS) (dQ fp32 (n, T, HS) over both once they are consumed) |
//             K, V bf16 (s, T, HS) | S fp32 (n, T, Tp), P inside | dP fp32 (n, T, Tp), dS inside
// Each call takes the largest chunk its workspace holds.
//
// Precision: q, k, v, dout, P and dS are rounded to bf16 (unit roundoff 2^-8) and every sum runs
// in fp32, so out, dq, dk, dv carry norm-relative errors of a few 2^-8 and lse an absolute error of
// about 2^-8 |q| |k| / sqrt(HS) (see tests/gpu/test_attention_gemm_cuda.cpp), against ~2^-20 for
// the fp32 flash kernels.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/cuda/buffer.h"
#include "ops/cuda/gemm.h"

namespace primal::cuda {

// Workspace bytes for one (sequence, head) at a time: the least either function accepts.
size_t attention_gemm_min_workspace(int64_t T, int64_t NH, int64_t KVH, int64_t HS);
// Workspace bytes for one whole sequence (all NH heads) per chunk: what to give when memory allows.
size_t attention_gemm_good_workspace(int64_t T, int64_t NH, int64_t KVH, int64_t HS);

// out, q: (B, T, NH, HS); k, v: (B, T, KVH, HS); lse: (B, NH, T). out and lse are written.
// HS a multiple of 8; ws: ws_bytes >= attention_gemm_min_workspace(...) of device memory that
// overlaps no argument. Runs on stream s (the Blas handle is bound to it).
void attention_forward_gemm(Blas& blas, float* out, float* lse, const float* q, const float* k, const float* v,
                            int64_t B, int64_t T, int64_t NH, int64_t KVH, int64_t HS, void* ws, size_t ws_bytes,
                            cudaStream_t s);

// dq: (B, T, NH, HS), dk, dv: (B, T, KVH, HS) overwritten with the gradients; dout, out, q:
// (B, T, NH, HS); k, v: (B, T, KVH, HS); lse: (B, NH, T) from a forward (either kind). The
// outputs overlap no input and not the workspace.
void attention_backward_gemm(Blas& blas, float* dq, float* dk, float* dv, const float* dout, const float* out,
                             const float* q, const float* k, const float* v, const float* lse, int64_t B, int64_t T,
                             int64_t NH, int64_t KVH, int64_t HS, void* ws, size_t ws_bytes, cudaStream_t s);

}  // namespace primal::cuda
