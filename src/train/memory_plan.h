// The memory planner of the trainer (ARCHITECTURE.md §6, the seeds' "VRAM contingency"): before
// the first step it chooses the micro-batch, the gradient accumulation, per-layer activation
// recomputation and the set of trainable layers so that the whole run fits a device-memory
// budget, and states what every byte is for. Nothing is allocated on a guess: each buffer of the
// GPU trainer is counted here by the same formula its allocation uses, so a plan that fits never
// runs out of memory; a budget no plan fits is refused with the smallest budget that would work.
//
// What the trainer keeps (letters of train/model.h; N = micro-batch tokens b*T):
//   persistent   per LUT weight: its packed index (bits/8 bytes) and, when trainable, its vote
//                (1 byte int8 or 2 bytes int16) and cooldown counter (1 byte, when used);
//                per LUT scale: fp32 value, and when trainable fp32 gradient + AdamW m and v;
//                momentum rule: per matrix fp32 row (O) and column (2 I) second-moment state
//                and the per-tile column sums of a backward call;
//                dense float parameters (norms, biases, dense embeddings/head): fp32 value, and
//                when trainable gradient + m + v.
//   activations  the CUDA engine's buffers (train/cuda/gpu_engine.cpp), by its formulas. The
//                activation type is the engine's mode: 2 = its bf16 mode (--fast: fp32 mid, rstd,
//                lse per token of a layer; q, k, v, att, xn1, xn2, gate, up, h in bf16), 4 = its
//                fp32 mode (all fp32). The top kept layers keep their sets; the layers below share
//                one (the frozen ones' forward, the recomputed ones' rebuilt set): without
//                recomputation every trainable layer is kept, with it the planner weighs kept layers
//                against kept attention outputs and q, k, v of the recomputed ones (cost model).
//                The shared set leaves out what every layer using it keeps of its own. The fp32
//                residual stream (L + 1) x C per token is kept always.
//   workspace    backward scratch (dx, dxn, dxnf, dq, datt, dk, dv, dh fp32; dgate, dup fp32 or
//                bf16 copies of the output gradients), one chunk of logits (head_chunk, V) fp32
//                (bf16, the gradient in place, for the bf16 mode's LUT head; in the shared set's
//                memory where layers share one: only what it needs beyond the set is counted for
//                it), the GEMM scratch (the largest layer
//                matrix dequantized, a weight-gradient tile of the head, the tensor-core
//                attention's workspace), token buffers and losses, the cuBLAS workspace, and what
//                the CUDA context, cuBLAS and the loaded kernels take (a measured constant).
// Layers below the lowest trainable one run forward only: they keep no activations. (The engine
// allocates the residual stream of every layer.)
// A smaller micro-batch (more accumulation) keeps the tokens of a step but not the vote rule's step:
// votes are cast once per micro-batch backward, normalized by that backward's second moments. So
// `primal train` fixes the micro-batch to its --batch and lets the planner choose the rest;
// `bench-train` (throughput only) lets it choose the micro-batch too.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/hparams.h"

namespace primal::train {

struct PlanRequest {
  HParams hp;
  int lut_bits = 4;              // index bits of every LUT matrix (2..8, 16)
  int64_t group = 32;            // weights per scale (0: one per row)
  bool lut_embeddings = true;    // token_embd / output are LUT too (else dense fp32)
  bool train_embeddings = true;  // embeddings/head trainable (votes for LUT, AdamW for dense)
  int vote_bits = 8;             // 8 or 16
  bool cooldown = false;         // a cooldown counter per weight
  bool momentum = true;          // the momentum rule's per-row/column state
  int64_t batch = 8;             // sequences per optimizer step (B)
  int64_t seq = 1024;            // T
  int64_t act_bytes = 2;         // activation type: 2 (bf16, the fast path) or 4 (fp32, deterministic)
  int64_t head_chunk = 512;      // rows of logits alive at once
  int64_t budget = 0;            // bytes; <= 0: no limit (the fastest plan is taken)
  // Choices the user fixed (0 / -1: the planner chooses).
  int64_t micro_batch = 0;       // sequences per micro-batch; must divide batch
  int recompute = -1;            // 0 off, 1 on (every trainable layer; -1: as many as needed)
  int64_t trainable_layers = 0;  // the top k layers trainable
};

struct MemoryItem {
  std::string name;              // e.g. "votes"
  std::string group;             // "persistent", "activations", "workspace"
  int64_t bytes = 0;
};

struct MemoryPlan {
  int64_t micro_batch = 0;       // sequences per micro-batch
  int64_t accum = 0;             // micro-batches per optimizer step
  bool recompute = false;        // the trainable layers below the kept ones are recomputed
  int64_t trainable_layers = 0;  // the top ones
  int64_t kept_layers = 0;       // the top ones keeping their activations (= trainable_layers
                                 // without recomputation, fewer with it)
  bool keep_attention = false;   // bf16 recomputation: the layers below the kept ones keep their
                                 // attention output and log-sum-exp (not recomputed)
  int64_t qkv_layers = 0;        // bf16 recomputation: the lowest ones keep their q, k, v (after
                                 // RoPE) too (their GEMMs not recomputed)
  int64_t lut_weights = 0;       // LUT weights of the model
  int64_t params = 0;            // all parameters
  std::vector<MemoryItem> items;
  double relative_time = 0;      // the planner's cost model (1 = no recomputation, full micro-batch)

  int64_t total() const;
  int64_t group_bytes(const std::string& group) const;
  // Bytes per LUT weight of the indices and votes (and cooldown), the persistent state the
  // discrete trainer adds to a model; and of all persistent state (scales, AdamW, norms too).
  double index_vote_bytes_per_weight() const;
  double persistent_bytes_per_weight() const;
  std::string describe(const PlanRequest& r) const;  // human table
  std::string to_json(const PlanRequest& r) const;
};

struct TrainModel;
struct TrainConfig;
// The request of `primal train --device cuda` for a loaded model and its run: the model's shape,
// its widest index and smallest scale group (a bound for mixed-precision models), what trains,
// the vote state, the micro-batch (cfg.sched.batch, at most) and the longest sequence of the
// schedule. act_bytes and head_chunk are the engine's mode and head chunk; budget is left at 0.
PlanRequest plan_request(const TrainModel& m, const TrainConfig& cfg, int64_t act_bytes, int64_t head_chunk);

// The memory of one configuration (no choice made); with recomputation, kept_layers (0 ..
// trainable_layers - 1) of the top layers keep their activations, and with keep_attention (bf16
// activations only) the layers below them keep their attention output and log-sum-exp.
// qkv_layers (0 .. the layers below the kept ones; bf16 recomputation) of the lowest layers keep
// their q, k, v.
MemoryPlan measure_plan(const PlanRequest& r, int64_t micro_batch, bool recompute, int64_t trainable_layers,
                        int64_t kept_layers = 0, bool keep_attention = false, int64_t qkv_layers = 0);

// The fastest plan within r.budget (all layers trainable when any plan allows it, then the
// largest trainable set). Throws primal::Error naming the smallest budget that would work when
// none fits, or when a fixed choice is invalid (micro_batch not dividing batch, ...).
MemoryPlan choose_plan(const PlanRequest& r);

// "8GiB", "512MiB", "1.5G", "2000000000" -> bytes. Throws on anything else.
int64_t parse_bytes(const std::string& s);

// The CUDA engine's bf16 logits rows are this many values apart: V rounded up to 16, so that every
// row of the head's bf16 GEMM output is 32-byte aligned (an odd vocabulary otherwise ran those
// GEMMs at a third of the speed). The engine allocates and the planner counts by it.
inline int64_t bf16_logits_stride(int64_t V) { return (V + 15) / 16 * 16; }

// The bf16 engine's FFN-gradient buffer (dh_, floats) for micro-batches of N tokens: one at a time,
// the FFN's bf16 input gradient (N F values; SwiGLU's backward writes dgate over it), the attention
// backward's workspace with per-head shares (attention_mma.h: N NH HS 5/2 + 2 B NH padded(T) floats
// for B T = N, at most N NH HS 5/2 + 8 N NH) and the forward's stacked fp32 q, k, v (N (Q + 2 KV)).
inline int64_t bf16_dh_floats(int64_t N, int64_t F, int64_t NH, int64_t HS, int64_t qkv) {
  const int64_t a = (N * F + 1) / 2, b = (N * NH * HS * 5 + 1) / 2 + 8 * N * NH, c = N * qkv;
  return a > b ? (a > c ? a : c) : (b > c ? b : c);
}
std::string format_bytes(int64_t bytes);  // "7.43 GiB"

// A named shape of `primal synth` (model/synth.h: qwen2.5-0.5b, qwen2.5-1.5b, llama2-7b,
// llama3-8b, seed-500m), or a parse_shape spec with an extra key vocab=V.
HParams training_shape(const std::string& name_or_spec);

}  // namespace primal::train
