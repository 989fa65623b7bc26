// The CUDA engine of `primal train` (train/step_engine.h): the model's indices, scales, norms,
// votes, float gradients and AdamW moments live in device memory; a micro-batch runs the layers of
// train/forward_backward.cpp with the kernels of src/ops/cuda/ (rmsnorm, RoPE, flash attention,
// SwiGLU, LUT linear with votes cast from each gradient tile, chunked fused head + cross-entropy).
//
// Modes:
//  - deterministic (default): pedantic fp32 GEMMs and the CPU's head chunk (kHeadChunk rows), so
//    losses match the CPU trainer to GEMM summation order and votes/flips follow the same rules on
//    nearly the same gradients (test_gpu_trainer_cuda states how close);
//  - fast: GEMMs on bf16 tensor cores (operands rounded inside cuBLAS, fp32 accumulation and
//    storage) and a larger head chunk. A training micro-batch runs as a CUDA graph, captured on
//    the first call of a batch shape and mask and replayed after, the vote casts' per-call scalars
//    from a device table (votes.h CastRecorder): the same bits as eager calls, without the launch
//    gaps (seed-500m: 1.11x). PRIMAL_GRAPH=0 runs every call eagerly.
// Recomputation keeps only a layer's input (the residual stream) and rebuilds its activations right
// before its backward (one extra forward of the layer), per layer: the top kept_layers keep theirs,
// the ones below share one set (the memory planner chooses how many fit), optionally with their
// attention outputs kept (keep_attention: a recomputation without its attention forward) and, for
// the lowest of them, their q, k, v (qkv_layers: without the q/k/v GEMMs either).
// Not on the GPU yet (refused with a message): distillation (--teacher), dense layer matrices
// (--lut none).
#pragma once
#include <memory>

#include "ops/cuda/votes.h"
#include "train/step_engine.h"

namespace primal::train {

struct GpuEngineOptions {
  bool fast = false;          // bf16 tensor-core GEMMs
  bool recompute = false;     // the layers below the kept ones are recomputed for their backward
  int64_t head_chunk = 0;     // rows of logits at once; 0: kHeadChunk (deterministic) or 2048 (fast)
  bool verbose = false;       // print the device-memory breakdown
  // The top kept_layers layers keep their activations for the backward, the ones below share one
  // set: their forward's, and with recompute the one each is rebuilt into for its backward (without
  // it, a backward that must reach them is refused). 0: every layer without recompute, none with it.
  int64_t kept_layers = 0;
  // bf16 mode with recompute: the layers below the kept ones keep their attention output and
  // log-sum-exp from the forward (N (2 Q + 4 NH) bytes each), and their recomputation skips the
  // attention forward.
  bool keep_attention = false;
  // bf16 mode with recompute: the lowest qkv_layers layers (of those below the kept ones) keep their
  // q, k, v after RoPE (N (Q + 2 KV) bf16 each), and their recomputation skips those GEMMs.
  int64_t qkv_layers = 0;
  // bf16 mode: cuDNN's fused attention where libcudnn.so.9 loads (cudnn_attention.h; its backward
  // sums dq with atomics: not bitwise reproducible from run to run). Auto: at head size 128 and up,
  // where it measured 5% faster a qwen2.5-1.5b step (at seed-500m's 64, 2% slower than ours);
  // On: at every head size it has an engine for; Off: ours throughout.
  enum class Cudnn { Off, Auto, On };
  Cudnn cudnn_attention = Cudnn::Auto;
  // bf16 mode, Hopper: the layer matrices' weight gradients and vote casts in one fused kernel
  // (ops/cuda/lut_dw_cast.h; the tile never reaches device memory) instead of cuBLAS's GEMM and the
  // cast beside it. Off by default: measured 11% slower a qwen2.5-1.5b step (bench/RESULTS.md).
  // PRIMAL_DW_FUSED=1 also turns it on.
  bool fused_dw = false;
  // bf16 mode, Hopper: the LUT matrices' forward and input-gradient GEMMs read the packed indices
  // and dequantize in their loads (ops/cuda/lut_gemm.h) instead of dequantizing into the scratch
  // for cuBLAS. Off by default (bench/RESULTS.md). PRIMAL_LUT_GEMM=1 also turns it on.
  bool fused_dequant = false;
};

std::unique_ptr<StepEngine> make_cuda_engine(const EngineContext& ctx, const GpuEngineOptions& o);

// The head chunk an engine of these options runs (GpuEngineOptions::head_chunk's default).
int64_t cuda_head_chunk(const GpuEngineOptions& o);

// The kernels' vote parameters for optimizer step `step` (VoteEngine::begin_step's step and
// schedule) from the configuration and the governor's current values.
cuda::VoteParams gpu_vote_params(const VoteConfig& vc, const Governor& gov, int64_t step, double sched);

}  // namespace primal::train
