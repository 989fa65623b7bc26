// The LUT linear layer of the trainer on the GPU: the CUDA twin of train/linear.cpp for LUT
// matrices, fp32 activations, device pointers, asynchronous on a stream.
//   W[o, i]      = scale[o, i / G] * grid[idx[o, i]]        (train/lut_weight.h)
//   out[n, o]    = sum_i inp[n, i] W[o, i] + bias[o]
//   dinp[n, i]   = sum_o dout[n, o] W[o, i]                 (straight-through estimator)
//   dW[o, i]     = sum_n dout[n, o] inp[n, i]               (tile by tile, never the whole matrix)
//   dscale[o, g] = sum_{i in group g} dW[o, i] grid[idx[o, i]]
//   dbias[o]     = sum_n dout[n, o]
// Shape letters: N tokens, O rows of W, I row length, G weights per scale, K grid entries,
// R = lut_train_tile_rows(I) rows per tile of the weight gradient (train::lut_tile_rows).
//
// Memory and work split (S = the caller's scratch, in floats):
//  - forward, dinp: min(O, S / I) rows of W (a multiple of 16 when chunked: aligned operands) are
//    dequantized into the scratch (bit-identical to LutWeight::dequantize_rows<float>; bf16
//    operands: that value rounded to bf16, 2 S of them) and multiplied by one cuBLAS GEMM, chunk
//    after chunk (S >= I; S >= O * I: one dequantization and one GEMM). SGEMM runs with the pedantic fp32
//    compute type: no TF32 and no BF16x9 emulation, and cuBLAS is deterministic run to run.
//  - weight gradient: NOT one fused kernel; two stages through the scratch, chunk by chunk, a
//    chunk being whole tiles (a multiple of lcm(R, 16) rows where S holds that many, else
//    floor(S / (R I)) tiles), or all remaining rows when they fit (S >= R I,
//    about 64K floats = 256 KB, or O I when O < R; S >= O I: one chunk):
//      1. cuBLAS SGEMM writes dW of the chunk's rows into the scratch;
//      2. votes.h lut_grad_tiles reads it once more: one kernel, a block per row, accumulates
//         dscale, forms the row statistics and casts the votes of that row; a second kernel forms
//         the per-tile column sums of g^2 (momentum rule with second moments).
//    The tile (R I floats) does not fit in one SM's shared memory (256 KB > 227 KB) for the row
//    lengths of LLMs, and the vote rules need statistics of whole rows before the first vote of a
//    row, so the fusion would cost a second GEMM; the scratch round trip stays in L2.
//    After the call the scratch holds dW of the last chunk (with S >= O * I: the whole dW), which
//    the conformance test feeds to the CPU's vote engine.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "ops/cuda/buffer.h"

namespace primal::cuda {

class Blas;
struct VoteState;
struct VoteParams;
struct CastWorkspace;

// The arithmetic of the trainer's GEMMs (process-wide; forward, dinp and dW alike):
//   Fp32  fp32 products and sums (CUBLAS_COMPUTE_32F_PEDANTIC): the deterministic mode whose
//         results the conformance tests hold against the CPU;
//   Bf16  the tensor-core fast path: bf16 operands, fp32 accumulation. Native bf16 GEMMs where
//         the caller passes bf16 copies (Operand), else fp32 operands rounded inside cuBLAS
//         (CUBLAS_COMPUTE_32F_FAST_16BF). Results are not held to the CPU's bits, so the vote
//         cast (votes.cu) and dbias also take cheaper fp32 / reordered arithmetic in this mode.
enum class TrainMath { Fp32, Bf16 };
void set_train_math(TrainMath m);
TrainMath train_math();
// TrainMath::Bf16 on Hopper: the forward and input-gradient GEMMs of LUT matrices with bf16
// operands read the packed indices and dequantize in their loads (lut_gemm.h) where the shape
// allows, instead of dequantizing into the scratch for cuBLAS (process-wide; off by default).
void set_fused_dequant(bool on);

// Profiling: when set, called with a stage name ("dW gemm", "vote cast") after each stage of
// lut_linear_backward_weight has been queued (the engine's PRIMAL_TRAIN_PROFILE timer); null: off.
using StageHook = void (*)(void* ctx, const char* stage);
void set_stage_hook(StageHook hook, void* ctx);

// A GEMM operand of the trainer's linear layers: fp32 (rows, cols) row-major, and in the bf16
// mode optionally its bf16 copy (the engine converts each activation once, to_bf16). With a bf16
// copy and TrainMath::Bf16 the GEMMs take native bf16 operands (W dequantized straight to bf16):
// 2-3x the tensor-core rate of fp32 operands converted inside cuBLAS. Without one, fp32 as
// before. Only the bf16 copy is read when it is used (fp32 may then be null).
struct Operand {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;  // __nv_bfloat16 bits
  int64_t ld = 0;                  // bf16's row stride (elements); 0: the row length (dense rows). The
                                   // fp32 rows are always dense.
  Operand() = default;
  Operand(const float* f) : f32(f) {}  // NOLINT: an fp32 operand is an Operand
  Operand(const float* f, const uint16_t* b, int64_t stride = 0) : f32(f), bf16(b), ld(stride) {}
};

// dst[k] = bf16(src[k]) round-to-nearest-even, k < n.
void to_bf16(uint16_t* dst, const float* src, int64_t n, cudaStream_t s);
// The same for a (rows, cols) matrix into rows ld_dst apart (a column block of a wider matrix),
// with bias (cols, optional) added in fp32 first: bf16(src[r, c] + bias[c]); src's rows ld_src
// apart (0: cols).
void to_bf16_rows(uint16_t* dst, int64_t ld_dst, const float* src, int64_t rows, int64_t cols, cudaStream_t s,
                  const float* bias = nullptr, int64_t ld_src = 0);

// A LUT matrix of the trainer in device memory, in train::LutWeight's layout (by value; views).
struct LutTrainView {
  DType type = DType::LUT4;     // LUT2..LUT6, LUT8 or LUT16
  int64_t O = 0, I = 0, G = 0;  // rows, row length, weights per scale (divides I)
  uint8_t* idx = nullptr;       // (O, row_bytes()) packed indices (quant/lut_pack.h)
  const float* scale = nullptr; // (O, I / G) fp32
  const float* grid = nullptr;  // (K) fp32, strictly ascending

  int bits() const;
  int64_t K() const { return int64_t(1) << bits(); }
  int64_t groups() const { return I / G; }
  int64_t row_bytes() const { return int64_t(bits()) * I / 8; }  // every width packs whole bytes per group
};

// Throws naming `what` for a type that is no LUT type, a shape the packing cannot hold (I not a
// multiple of the packing group, G not dividing I) or a missing pointer.
void check_lut_view(const LutTrainView& w, const char* what);

// train::lut_tile_rows(I): the rows of a tile of the weight gradient (about 64K values).
inline int64_t lut_train_tile_rows(int64_t I) {
  const int64_t r = 65536 / (I > 0 ? I : 1);
  return r < 1 ? 1 : r > 64 ? 64 : r;
}
// A scratch (floats) that lut_linear_backward_weight accepts for any O: one tile (a matrix of
// O < R rows needs only O * I).
inline int64_t lut_grad_scratch_floats(int64_t I) { return lut_train_tile_rows(I) * I; }

// dst: (n, I) = W[o0 .. o0+n-1, :], each value one fp32 product scale * grid, as the CPU.
void lut_dequantize_rows(const LutTrainView& w, int64_t o0, int64_t n, float* dst, cudaStream_t s);

// out: (N, O) = inp (N, I) W^T + bias; bias: (O) or null. scratch: (scratch_floats), >= I.
void lut_linear_forward(Blas& blas, const LutTrainView& w, Operand inp, int64_t N, const float* bias, float* out,
                        float* scratch, int64_t scratch_floats, cudaStream_t s);

// The bf16 mode's head: out (N, O) bf16 = inp (N, I) bf16 W^T, fp32 accumulation (no bias); out's
// rows ldo apart (>= O; 0: O). (A GEMM output whose rows are not 16-byte aligned, an odd vocabulary,
// ran at a third of the speed.)
void lut_linear_forward_bf16_out(Blas& blas, const LutTrainView& w, const uint16_t* inp, int64_t N, uint16_t* out,
                                 float* scratch, int64_t scratch_floats, cudaStream_t s, int64_t ldo = 0);

// dinp: (N, I) = dout (N, O; rows dout.ld apart when set) W, overwritten (accumulate false) or
// added to. scratch as forward.
void lut_linear_backward_input(Blas& blas, const LutTrainView& w, Operand dout, int64_t N, float* dinp,
                               bool accumulate, float* scratch, int64_t scratch_floats, cudaStream_t s);

// The bf16 mode's forward of up to 3 matrices with one input (q, k, v; gate, up): their weights
// dequantized in one launch into consecutive parts of the scratch, then a GEMM each, into out[k]'s
// fp32 (with its bias) or bf16 output. inp: (N, I) bf16. false, with nothing done, where they do not
// fit the scratch together (bf16: 2 scratch_floats values) or differ in index width or row length.
struct LutGroupOut {
  float* f32 = nullptr;        // (N, O_k), or
  uint16_t* bf16 = nullptr;    // (N, O_k) bf16
  const float* bias = nullptr; // (O_k) or null (fp32 output only)
};
// With ldo > 0 the fp32 outputs are the consecutive column blocks of one (N, ldo = sum O_k) matrix
// (out[k].f32 = out[0].f32 + O_0 + ... + O_k-1, no biases): one GEMM over the stacked weights.
bool lut_linear_forward_group(Blas& blas, const LutTrainView* w, const LutGroupOut* out, int n, const uint16_t* inp,
                              int64_t N, float* scratch, int64_t scratch_floats, cudaStream_t s, int64_t ldo = 0);
// dinp (N, I) = (accumulate ? dinp : 0) + sum_k dout[k] (N, O_k; bf16, rows ldd apart; 0: O_k)
// W_k, in matrix order, the weights dequantized as one group; false as above. Where the douts are
// the consecutive column blocks of one (N, ldd = sum O_k) matrix, one GEMM over the stacked
// weights (k = sum O_k: no fp32 round trip of dinp per matrix; the sum's order is the GEMM's).
// dequantized: the scratch still holds the group's weights as lut_linear_forward_group left them (the
// same w, in the same order, nothing written to the scratch since): no dequantization.
bool lut_linear_backward_input_group(Blas& blas, const LutTrainView* w, const uint16_t* const* dout, int n, int64_t N,
                                     float* dinp, bool accumulate, float* scratch, int64_t scratch_floats,
                                     cudaStream_t s, int64_t ldd = 0, bool dequantized = false);

// The bf16 mode's dinp (N, I) as bf16 (the fp32 accumulators rounded once) = dout (N, O) bf16 W,
// overwritten; the matrix must fit the scratch whole (2 scratch_floats >= O I: no chunk sums).
void lut_linear_backward_input_bf16_out(Blas& blas, const LutTrainView& w, const uint16_t* dout, int64_t N,
                                        uint16_t* dinp, float* scratch, int64_t scratch_floats, cudaStream_t s);

// The vote cast beside the GEMMs (bf16 mode): the dW GEMM (bf16) writes one of two buffers instead
// of the scratch, a chunk of rows at a time (the whole matrix where it fits), and each chunk's cast
// (then lut_votes_done) runs on `stream` once its GEMM is done (gemm_done[k], recorded on the
// caller's stream), so that the casts, latency-bound, overlap the backward's next GEMMs. A GEMM
// into buffer k first waits for dw_free[k] (recorded on `stream` after the cast that last read
// it); `turn` says which buffer is next. Before anything reads what casts write (votes, dscale,
// the column statistic), the caller makes its stream wait for `stream`.
struct CastAside {
  uint16_t* dw[2] = {nullptr, nullptr};  // (capacity) bf16 each
  int64_t capacity = 0;                  // values a buffer holds (rows of I weights: capacity / I)
  cudaStream_t stream = nullptr;
  cudaEvent_t gemm_done[2] = {nullptr, nullptr}, dw_free[2] = {nullptr, nullptr};
  int turn = 0;
  // The fused weight gradient + cast (lut_dw_cast.h), which takes the matrices it serves instead,
  // on the caller's stream (no buffer, no second stream): its own column workspace (a queue
  // attached: the folds of a launch's matrices in one launch after it) and the tiles' row sums
  // (cast_workspace.h dw_fused_scratch_floats). Null: not used.
  CastWorkspace* fused_ws = nullptr;
  float* fused_scratch = nullptr;
  int64_t fused_scratch_floats = 0;
  uint16_t* fused_dw_out = nullptr;  // tests: (rows, I) bf16, the gradient as the fused cast read it
};

// Where the weight-side gradients of one backward call go; null members are not computed.
struct LutWeightGrad {
  float* dscale = nullptr;            // (O, I / G), accumulated
  float* dbias = nullptr;             // (O), accumulated
  VoteState* votes = nullptr;         // the index gradient, cast into votes tile by tile (votes.h);
  const VoteParams* params = nullptr; //   then lut_votes_done, as the CPU's LutTileSink::done
  CastAside* aside = nullptr;         // the bf16 mode's cast beside the GEMMs, where it serves
  // The bf16 mode's dbias in row slabs (train_ops.h column_sums_add): rmsnorm_dw_scratch_doubles(N,
  // O) doubles, or null (one block per 32 columns).
  double* dbias_slabs = nullptr;
};

// The bf16 mode's weight gradients of up to 3 matrices of one input whose output gradients are the
// consecutive column blocks of one (N, ldd = sum O_k) bf16 matrix (q, k, v): one GEMM into one of
// the casts' buffers (g[k].aside, the same for all), then each matrix's cast (and lut_votes_done)
// on the casts' stream, as lut_linear_backward_weight's casts beside the GEMMs. (k and v of a GQA
// model are 256-row GEMMs that filled few multiprocessors.) false, with nothing done, where that
// path does not serve every matrix (votes and the bf16 cast, no bias, the stacked weights within a
// buffer): the caller then takes lut_linear_backward_weight per matrix.
bool lut_linear_backward_weight_group(Blas& blas, const LutTrainView* w, const LutWeightGrad* g, int n,
                                      const uint16_t* dout, int64_t ldd, const uint16_t* inp, int64_t N, cudaStream_t s);

// The bf16 mode's weight gradient of a whole matrix as bf16, summed over calls: dW (O, I) =
// (accumulate ? dW : 0) + dout^T inp (dout (N, O) rows ldd apart, 0: O; inp (N, I); both bf16), the
// fp32 accumulators added to dW's values and rounded once per call. For a matrix whose gradient
// comes in chunks of rows (the head's logits chunks): the sum, then one cast (lut_grad_tiles_bf16).
void lut_weight_grad_sum_bf16(Blas& blas, const LutTrainView& w, const uint16_t* dout, int64_t ldd, const uint16_t* inp,
                              int64_t N, uint16_t* dW, bool accumulate, cudaStream_t s);

// dout: (N, O); inp: (N, I) the forward input; scratch: (scratch_floats) >= min(R, O) * I.
// dbias reads dout's fp32; the dW GEMM takes bf16 operands when both have a bf16 copy.
void lut_linear_backward_weight(Blas& blas, const LutTrainView& w, Operand dout, Operand inp, int64_t N,
                                const LutWeightGrad& g, float* scratch, int64_t scratch_floats, cudaStream_t s);

// Dense fp32 matrices (embeddings, head kept float): W (O, I) row-major on the device.
// out: (N, O) = inp (N, I) W^T + bias (bias (O) or null).
void dense_linear_forward(Blas& blas, const float* W, int64_t O, int64_t I, const float* inp, int64_t N,
                          const float* bias, float* out, cudaStream_t s);
// dinp: (N, I) = dout (N, O) W, overwritten or (accumulate) added to.
void dense_linear_backward_input(Blas& blas, const float* W, int64_t O, int64_t I, const float* dout, int64_t N,
                                 float* dinp, bool accumulate, cudaStream_t s);
// dW: (O, I) += dout^T inp; dbias: (O) += column sums of dout (either may be null).
void dense_linear_backward_weight(Blas& blas, int64_t O, int64_t I, const float* dout, const float* inp, int64_t N,
                                  float* dW, float* dbias, cudaStream_t s);

}  // namespace primal::cuda
