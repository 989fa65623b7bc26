// Row-wise and element-wise ops of the trainer on the GPU, each the twin of a CPU op of
// src/ops/cpu/ (the specification) with the same formula, the same fp32/fp64 split and, where the
// order of operations allows it, the same rounding:
//   rmsnorm     y = x r w,  r = 1 / sqrt(mean_c(x^2) + eps)           (ops/cpu/rmsnorm_backward)
//   rope        pair rotation by pos * inv_freq[i] (or its inverse)    (ops/cpu/rope_backward)
//   swiglu      y = silu(gate) * up                                    (ops/cpu/swiglu_backward)
//   embedding   y[t] = table[id[t]],  dtable[id[t]] += dy[t]           (ops/cpu/embedding_backward)
//   loss        cross-entropy / KL-to-teacher of rows of logits        (ops/cpu/cross_entropy_backward)
// Activations are (N, C) row-major fp32, N = B*T tokens. All pointers are device memory unless
// said otherwise; every call is asynchronous on `s` except embedding_forward_train (which reads
// back its error flag).
//
// Reductions are deterministic: no floating-point atomics, fixed summation orders that depend on
// the shapes only, so two runs (on any GPU) give the same bits.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/cuda/buffer.h"
#include "ops/cuda/elementwise.h"

namespace primal::cuda {

// ---- RMSNorm -----------------------------------------------------------------------------------
// out: (N, C) written; rstd: (N) written, r of each row for the backward; inp: (N, C); weight: (C).
// out may alias inp. The sum of squares in fp64, r rounded once to fp32 (as the CPU).
void rmsnorm_forward_train(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C,
                           float eps, cudaStream_t s);
// The same with out written as bf16 (the bf16 mode's GEMM operand; out must not alias inp).
void rmsnorm_forward_train_bf16(uint16_t* out, float* rstd, const float* inp, const float* weight, int64_t N,
                                int64_t C, float eps, cudaStream_t s);
// The residual add before a norm, fused: x (N, C) += y (N, C) (add_inplace's fp32 add), then the
// norm of the new x into out (fp32, or bf16 with out_bf16; one of the two non-null, aliasing
// neither x nor y): the bits of add_inplace followed by rmsnorm_forward_train(_bf16), one pass.
void add_rmsnorm_forward_train(float* out, uint16_t* out_bf16, float* rstd, float* x, const float* y,
                               const float* weight, int64_t N, int64_t C, float eps, cudaStream_t s);
// The same with a bf16 addend and the sum written elsewhere: sum (N, C) = x + y (y widened; sum may
// be x), then its norm into out or out_bf16: the bits of the overload above given y's values as fp32
// (the bf16 mode's o and down projections leave their GEMM as bf16, as PyTorch's autocast).
void add_rmsnorm_forward_train(float* out, uint16_t* out_bf16, float* rstd, float* sum, const float* x,
                               const uint16_t* y, const float* weight, int64_t N, int64_t C, float eps,
                               cudaStream_t s);

// dinp: (N, C) += the input gradient  r (dy w) - r^3/C x sum_j(dy_j w_j x_j)  (the dot in fp64);
// dweight: (C) += sum_t dy[t, c] x[t, c] r[t] unless null; dout, inp: (N, C); weight: (C);
// rstd: (N) from the forward. dinp must alias neither dout nor inp.
// dweight is summed without atomics: a block owns 32 columns, its 32 warps take the rows
// t = g, g + 32, g + 64, ... (g the warp) in increasing order in fp64, and warp 0 adds the 32
// partial sums in the order g = 0..31 before rounding to fp32 once: a fixed order, so the result
// is bitwise reproducible (it may differ from the CPU's row-by-row fp64 sum in the last fp64
// bits, which the fp32 rounding hides but for rare ties).
// dinp_bf16 (N, C), when non-null: the updated dinp rounded to bf16 as to_bf16 rounds it (the bf16
// mode's GEMM operand, written in the same pass). dw_scratch (rmsnorm_dw_scratch_doubles(N, C)),
// when non-null: dweight's rows are summed in slabs, then the slabs in order, a fixed order still
// (its fp64 association differs from the one-slab sum's, so the last bits may): where C <= 2048 in
// the input gradient's pass (slabs of 16 rows, each summed in row order), else in slabs of 256 (each
// as above). The input gradient is the same either way.
void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C, cudaStream_t s, uint16_t* dinp_bf16 = nullptr,
                      double* dw_scratch = nullptr);
int64_t rmsnorm_dw_scratch_doubles(int64_t N, int64_t C);
// dst[c] += float(sum_t x[t, c]) for x (N, C): rmsnorm_backward's weight-gradient sum with the term x
// alone, in its slabs (slabs: rmsnorm_dw_scratch_doubles(N, C)) in its fixed order (a bias gradient
// of the bf16 mode: its k and v, 256 columns, got 8 blocks as one slab).
void column_sums_add(float* dst, const float* x, int64_t N, int64_t C, double* slabs, cudaStream_t s);
// The same for consecutive column blocks of a bf16 matrix x (N rows ld apart), each block's sums
// added to its own dst (none: skipped): the bf16 mode's q, k, v bias gradients from the stacked
// (N, Q + 2 KV) bf16 input gradient, as PyTorch's autocast sums a bias gradient from the bf16 output
// gradient (one read of 2 bytes a value, no fp32 copy). The same slabs and order as column_sums_add;
// slabs: slab_doubles of them, at least ceil(N / 256) times the columns.
struct ColumnSumOut {
  float* dst;    // (cols) or null
  int64_t cols;
};
void column_sums_bf16_add(const std::vector<ColumnSumOut>& outs, const uint16_t* x, int64_t ld, int64_t N,
                          double* slabs, int64_t slab_doubles, cudaStream_t s);

// ---- RoPE --------------------------------------------------------------------------------------
// The rotation of cpu::RopeParams with the frequencies on the device.
struct RopeTrainParams {
  int64_t head_dim = 0;              // HS
  int64_t n_rot = 0;                 // rotated dimensions: even, 0 < n_rot <= HS; the rest pass through
  bool neox = false;                 // pairs (i, i + n_rot/2) when true, (2i, 2i + 1) when false
  const double* inv_freq = nullptr;  // (n_rot/2) fp64: cpu::RopeParams::inv_freq uploaded as is, so
                                     // that theta, linear scaling and per-pair divisors (llama3
                                     // rope_freqs) enter exactly as on the CPU (cpu::rope_inv_freq)
  // Optional (rope_table): (table_len, n_rot/2) pairs float(cos), float(sin) of pos * inv_freq[i]
  // for positions 0 .. table_len-1, the values the kernel would compute (same fp64 expressions), so
  // that a rotation reads them instead of evaluating fp64 cos and sin per pair (most of its time).
  const float* cos_sin = nullptr;
  int64_t table_len = 0;
};

// cos_sin: (T, n_rot/2, 2) filled for positions 0..T-1 (p.cos_sin is not read).
void rope_table(float* cos_sin, int64_t T, const RopeTrainParams& p, cudaStream_t s);

// x: (B, T, n_heads, HS), B sequences rotated in place; token t of every sequence at position
// pos0 + t. The angle pos * inv_freq[i] in fp64, its cos and sin rounded to fp32, the rotation in
// fp32 without fused multiply-adds: the CPU's values. inverse rotates by -angle (the backward).
// out_bf16 (optional, n_rot == HS): the rotated values also written as bf16 (B, T, n_heads, HS),
// the bf16 mode's copy without a pass of its own; with write_f32 false only there (x is left as it
// was: for callers that read only the bf16 copy). ld_bf16: the bf16 copy's row stride per token
// (elements; 0: n_heads * HS), for a copy that is a column block of a wider matrix. bias (n_heads *
// HS, optional): added to each value (fp32, rounded once) before its rotation, as a bias added to
// x first (the forward of q and k with biases: no pass of its own). ld_f32: x's row stride per
// token (0: n_heads * HS), for an x that is a column block of a wider matrix.
void rope_rotate(float* x, int64_t B, int64_t T, int64_t n_heads, int64_t pos0, const RopeTrainParams& p,
                 bool inverse, cudaStream_t s, uint16_t* out_bf16 = nullptr, bool write_f32 = true,
                 int64_t ld_bf16 = 0, const float* bias = nullptr, int64_t ld_f32 = 0);

// The bf16 mode's forward RoPE of bf16 values in place, xb: (B, T, n_heads, HS) bf16, positions
// 0..T-1: each pair widened to fp32, rotated as rope_rotate rotates it (the table's cos and sin),
// rounded to bf16. Only where rope_bf16_inplace_ok (every dimension rotated, the table covers T,
// HS % 4 == 0); otherwise refused.
bool rope_bf16_inplace_ok(const RopeTrainParams& p, int64_t T);
void rope_forward_train_bf16(uint16_t* xb, int64_t B, int64_t T, int64_t n_heads, const RopeTrainParams& p,
                             cudaStream_t s);
// Its inverse on a gradient in place (rotation by -angle, rope_backward's), rows ld apart a token
// (0: n_heads HS): the bf16 gradients of q and k as one column block [dq | dk] of a wider matrix.
void rope_backward_train_bf16(uint16_t* xb, int64_t B, int64_t T, int64_t n_heads, const RopeTrainParams& p,
                              int64_t ld, cudaStream_t s);

// x: (B, T, n_heads, HS) rotated in place (the trainer passes pos0 = 0: positions 0..T-1).
inline void rope_forward_train(float* x, int64_t B, int64_t T, int64_t n_heads, int64_t pos0,
                               const RopeTrainParams& p, cudaStream_t s) {
  rope_rotate(x, B, T, n_heads, pos0, p, false, s);
}
// dx: (B, T, n_heads, HS), the gradient of the rotated values in, of the inputs out (in place).
inline void rope_backward(float* dx, int64_t B, int64_t T, int64_t n_heads, int64_t pos0, const RopeTrainParams& p,
                          cudaStream_t s) {
  rope_rotate(dx, B, T, n_heads, pos0, p, true, s);
}

// ---- SwiGLU ------------------------------------------------------------------------------------
// out, gate, up: (N) elements, out = silu(gate) * up. The inference kernel computes exactly the
// CPU twin's expression already; the trainer's name for it.
inline void swiglu_forward_train(float* out, const float* gate, const float* up, int64_t N, cudaStream_t s) {
  swiglu_f32(gate, up, N, out, s);
}
// The bf16 mode's: gate, up and out bf16 (the down-projection operand), fp32 arithmetic.
void swiglu_forward_train_bf16(uint16_t* out, const uint16_t* gate, const uint16_t* up, int64_t N, cudaStream_t s);

// dgate, dup: (N) overwritten; dout, gate, up: (N). With sg = sigmoid(gate):
//   dgate = dout * up * sg * (1 + gate (1 - sg)),  dup = dout * gate * sg.
// dgate or dup may alias dout (each element is read before it is written).
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t N,
                     cudaStream_t s);
// The bf16 mode's: gate and up read as bf16, dgate and dup written as bf16 (GEMM operands).
void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const float* dout, const uint16_t* gate,
                          const uint16_t* up, int64_t N, cudaStream_t s);
// The same with dout as bf16 (the down projection's input gradient straight out of its GEMM); with
// h (optional, not aliasing the others) also the forward's output, swiglu_forward_train_bf16's
// bits (a recomputed layer's, for the down projection's weight gradient: no forward pass of its
// own over gate and up).
void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const uint16_t* dout, const uint16_t* gate,
                          const uint16_t* up, int64_t N, cudaStream_t s, uint16_t* h = nullptr);

// ---- Token embedding ---------------------------------------------------------------------------
// out: (N, C) written, row t = table[tokens[t]]; tokens: (N); table: (V, C) fp32.
// flag: (1) int32 device scratch. An id outside [0, V) throws Error naming the first such
// position, as the CPU does (the kernel records the lowest bad position in *flag; the call then
// synchronizes `s` to read it). Rows of bad ids are left unwritten.
void embedding_forward_train(float* out, const int32_t* tokens, int64_t N, const float* table, int64_t V, int64_t C,
                             int32_t* flag, cudaStream_t s);

// dtable: (V, C) += dout rows: dtable[tokens[t], :] += dout[t, :]; dout: (N, C); tokens: (N).
// Deterministic and equal to the CPU bit for bit: every element of dtable is updated by one
// thread only, which adds the positions of its id in increasing t, in fp32, onto the old value
// (the CPU's order). Scheme: the vocabulary is split into 64 buckets (id mod 64); warp k of a
// column tile (32 columns, one per lane) sweeps the tokens 32 at a time, picks those of bucket k
// with a ballot and applies them in order. Each dout row is read once per tile; a warp's chain
// of dependent read-modify-writes is as long as its bucket's share of the N positions (~N/64 for
// spread ids, N for a single repeated id). Ids outside [0, V) (which the forward refuses) are
// skipped.
void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t V, int64_t C,
                        cudaStream_t s);

// ---- Loss over a chunk of rows of logits -------------------------------------------------------
// One block per row. logits: (n, V); targets: (n), < 0 for an unscored row; loss: (n) fp64
// written, the nll  log sum_j exp(x_j) - x_y  (max subtracted, exp in fp32, sum and log in fp64
// as the CPU), 0 for an unscored row. A target >= V gives a NaN loss (and a NaN gradient row)
// rather than an out-of-bounds read: the CPU throws there, the caller validates targets.
void cross_entropy_rows(const float* logits, const int32_t* targets, int64_t n, int64_t V, double* loss,
                        cudaStream_t s);
// The same, and logits replaced in place by scale * (softmax - onehot(target)); unscored rows 0.
void cross_entropy_backward_rows(float* logits, const int32_t* targets, int64_t n, int64_t V, double scale,
                                 double* loss, cudaStream_t s);
// The same with the gradient written as bf16 to grad (n, V) (logits left as they are): the fast
// mode's GEMM operand without a conversion pass over the chunk.
void cross_entropy_backward_rows_bf16(const float* logits, uint16_t* grad, const int32_t* targets, int64_t n,
                                      int64_t V, double scale, double* loss, cudaStream_t s);
// bf16 logits (n, V) (the fast mode's head writes them so; the loss is then that of the bf16-rounded
// logits, as PyTorch's autocast): the loss, and the loss with the bf16 gradient in place. ld: the
// rows' stride (>= V; 0: V), so that rows can start 32-byte aligned when V is odd.
void cross_entropy_rows_bf16(const uint16_t* logits, const int32_t* targets, int64_t n, int64_t V, double* loss,
                             cudaStream_t s, int64_t ld = 0);
void cross_entropy_backward_rows_bf16_inplace(uint16_t* logits, const int32_t* targets, int64_t n, int64_t V,
                                              double scale, double* loss, cudaStream_t s, int64_t ld = 0);
// With rows 16-byte aligned (ld % 8 == 0), of more than 65,536 logits and an eighth of a row within
// 160 KiB of shared memory, the two functions above read each row once (a cluster of eight blocks a
// row); true here selects the single-block kernel, which reads it two or three times (tests,
// comparisons; process-wide).
void set_cross_entropy_single_block(bool on);

// Distillation. logits, teacher: (n, V); loss: (n) fp64 written,
//   kl = sum_j p_j (log p_j - log q_j),  p = softmax(teacher), q = softmax(logits),
// in fp64 throughout, clamped at 0 (as cpu::kl_row).
void kl_rows(const float* logits, const float* teacher, int64_t n, int64_t V, double* loss, cudaStream_t s);
// The same, and logits replaced in place by scale * (q - p) (teacher untouched).
void kl_backward_rows(float* logits, const float* teacher, int64_t n, int64_t V, double scale, double* loss,
                      cudaStream_t s);

}  // namespace primal::cuda
