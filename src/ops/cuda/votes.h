// Integer votes on the GPU: the CUDA twin of train/votes.cpp (VoteEngine), rule by rule and
// formula by formula, with the same counter-based random streams (rng.cuh), so that the same
// gradient tile and the same state give the same votes, indices and cooldowns bit for bit.
// Read train/votes.h for the rules; what differs is where the state lives and who sequences it:
//  - per-weight state (votes, cooldowns) and the second-moment EMAs (row_sq, col_sq) live on the
//    device, with the scratch that VoteEngine keeps per matrix (col_norm, col_part) also there;
//    col_norm is computed on the device (lut_votes_done) rather than on the host;
//  - the counters `events` (backward calls folded into the EMAs) and `events_this_step` are
//    host integers in VoteState, advanced by the launchers exactly where VoteEngine advances them
//    (the caller resets events_this_step at the start of a step: begin_step());
//  - scalars that the CPU forms once per call (lr * sched * lr_mult, the bias correction
//    1 - beta2^(events + 1), 1 / O, the key prefix of the random streams) are formed by the
//    launchers on the host with the CPU's expressions and passed to the kernels;
//  - the governor stays on the host: lut_votes_apply adds the flip count to a device counter
//    that the caller reads once per step (then VoteEngine::apply's governor rule, on the host).
// Sums that the CPU forms in one order (a row's sum of g^2 or |g|, a group's dscale, a column's
// sum over the rows of a tile, a column's sum over tiles, the mean of col_sq) are formed by one
// thread in that order, with explicitly rounded operations (no FMA contraction), so they are
// bit-identical; the totals of |v| and v^2 of the seed rule are exact integer sums (the CPU's
// double sums are exact too below 2^53). The one transcendental the CPU calls per weight (exp in
// the seed rule's flip probability) may differ by an ulp between glibc and CUDA; a flip decision
// could then differ only if a 24-bit uniform fell between the two doubles (probability ~1e-9).
// The bias correction's pow is evaluated on the host, with the CPU's library.
#pragma once
#include <cstdint>
#include <vector>

#include "ops/cuda/buffer.h"
#include "ops/cuda/cast_workspace.h"
#include "ops/cuda/lut_train.h"

namespace primal::cuda {

enum class VoteRule { Seed, Momentum };

// train::VoteConfig plus the per-step values VoteEngine reads (step, schedule, governor).
struct VoteParams {
  VoteRule rule = VoteRule::Momentum;
  int vote_bits = 8;          // 8: int8 votes, 16: int16 votes
  uint64_t seed = 0;
  int64_t step = 0;           // VoteEngine::begin_step's step
  double sched = 1.0;         // VoteEngine::begin_step's schedule multiplier
  double lr_mult = 1.0;       // Governor::lr_mult
  // Seed rule.
  double sensitivity = 1.0;   // Governor::sensitivity (the current k, not the configured one)
  int consensus = 4;
  double flip_lr = 1.0;
  int noise = 0;              // jitter amplitude (both rules)
  int cooldown = 0;           // steps held after a flip (both rules)
  // Momentum rule.
  double lr = 1e-3;
  bool second_moment = true;
  double beta2 = 0.999;
  double eps = 1e-10;

  int64_t units() const { return vote_bits == 8 ? 64 : 16384; }
  int64_t vmax() const { return vote_bits == 8 ? 127 : 32767; }
  bool moments() const { return rule == VoteRule::Momentum && second_moment; }
};

// The bf16 mode's column statistic, worked out inside the cast (votes_fast.cu): each block of a
// cast launch sums g^2 / O over its rows per column (part), a fold adds the blocks' sums
// (acc, over the launches of one backward call) and, after the call's last rows, forms col_sq's
// EMA and col_norm. One workspace serves every matrix: a backward call uses it from its first
// cast to its last fold, and calls follow one another on one stream.
// Deferred folds: with a queue attached (CastWorkspace::queue), a cast of a whole matrix (one
// launch: rows 0 .. O-1) leaves its block sums in the next free region of part and queues its fold;
// cast_fold_flush runs every queued fold in one launch, the same arithmetic (same bits) as the
// immediate fold. A fold launch per matrix was ~9 us, mostly latency (184 a seed-500m step).
// The cast flushes by itself when part or the queue is full, before a call that is not a whole
// matrix, and before a matrix whose fold is still queued; the caller flushes before anything reads
// col_sq or col_norm (the end of the backward).
struct VoteState;
struct VoteParams;
struct CastFoldItem {
  const float* part = nullptr;  // (nb, I) the cast's block sums
  int64_t nb = 0, I = 0;
  double beta2 = 0;
  float* col_sq = nullptr;      // (I)
  float* col_norm = nullptr;    // (I)
};
struct CastFoldQueue {
  std::vector<CastFoldItem> items;  // at most kFoldBatchMax
  int64_t used = 0;                 // floats of part the queued casts reserved
};

struct CastWorkspace {
  float* part = nullptr;         // (part_floats) the casts' per-block column sums
  int64_t part_floats = 0;       // >= kCastBlocksMax * I_max
  double* acc = nullptr;         // (I_max) the immediate fold's running total over the launches of a call
  double* block_sums = nullptr;  // (I_max / 32 + 1) the immediate final fold's per-block sums of col_sq
  unsigned* counter = nullptr;   // (1) the immediate final fold's finished blocks (0 between folds)
  double* batch_sums = nullptr;  // (kFoldBatchMax, I_max / 32 + 1) the same for each queued fold
  unsigned* batch_counters = nullptr;  // (kFoldBatchMax)
  int64_t I_max = 0;             // the longest row it serves
  CastFoldQueue* queue = nullptr;  // host: where folds wait (null: every fold right after its cast)
};
// The workspace laid out in mem (cast_workspace_bytes(I_max, part_floats, floor) bytes, 16-byte
// aligned; its counters zeroed on s).
CastWorkspace cast_workspace_at(void* mem, int64_t I_max, int64_t part_floats, cudaStream_t s, bool floor = true);
// Every queued fold of ws in one launch on s (nothing without a queue or with none queued).
void cast_fold_flush(const CastWorkspace& ws, cudaStream_t s);

// The bf16 cast's scalars that change from one backward call to the next (CastArgs: the
// learning rate with the step's schedule, the bias correction of the matrix's event count, the
// rounding key of step and call), in the form the cast kernel reads.
struct CastDyn {
  float c0 = 0;        // -lr U
  float inv_bc = 0;    // 1 / (1 - beta2^(events + 1))
  uint64_t prefix = 0; // rounding key prefix
};
// What a CUDA graph of backward calls needs to replay them with new scalars: while a recorder is
// installed (set_cast_recorder), every vote cast of the bf16 cast takes its scalars from its own
// slot of `device` (filled from `host` by the graph's first copy) instead of its launch arguments,
// and notes the counters it was cast with; a cast that can only take them as launch arguments
// (another kernel path) sets `unsafe`. cast_dyn forms a slot's values for given counters.
struct CastRecorder {
  CastDyn* host = nullptr;    // (capacity) page-locked
  CastDyn* device = nullptr;  // (capacity)
  int64_t capacity = 0;
  struct Slot {
    VoteState* st;
    int64_t events, events_this_step;  // the counters the cast ran with
  };
  std::vector<Slot> slots;
  bool unsafe = false;
};
void set_cast_recorder(CastRecorder* r);  // null: none (the default)
CastRecorder* cast_recorder();
CastDyn cast_dyn(const VoteParams& p, const VoteState& st, int64_t events, int64_t events_this_step);

// PRIMAL_VOTES_V1=1 (read once): the bf16 mode keeps votes.cu's first kernels (the cast from an fp32
// weight gradient with per-tile column sums, the apply matrix by matrix), for comparisons.
bool votes_v1();

// The votes of one LUT matrix (device pointers, host counters): train::LutVotes.
struct VoteState {
  int64_t id = 0;                  // tensor number, keys the random streams
  int8_t* v8 = nullptr;            // (O, I) int8 votes, or
  int16_t* v16 = nullptr;          // (O, I) int16 votes
  uint8_t* cool = nullptr;         // (O, I) cooldown steps left; null when cooldown == 0
  float* row_sq = nullptr;         // (O) momentum + second moments: EMA of the row mean of g^2
  float* col_sq = nullptr;         // (I) EMA of the column mean of g^2
  float* col_norm = nullptr;       // (I) chat / mean(chat) for the next backward call
  float* col_part = nullptr;       // (ceil(O / R), I) this call's column sums of g^2 / O, per tile
  const CastWorkspace* ws = nullptr;  // the bf16 mode's column workspace (instead of col_part)
  bool folded = false;             // this call's column statistic is formed (the bf16 cast's fold)
  unsigned long long* sums = nullptr;  // (2) seed rule's apply: sums of |v| and v^2 (scratch)
  int64_t events = 0;              // backward calls folded into the EMAs (bias correction)
  int64_t events_this_step = 0;    // backward calls of this step (keys the rounding stream)

  void begin_step() { events_this_step = 0; }
};

// VoteState with its memory, initialized as VoteEngine's constructor does (votes, cooldowns and
// EMAs 0, col_norm 1), asynchronously on s.
struct DeviceVotes {
  DeviceBuffer votes, cool, row_sq, col_sq, col_norm, col_part, sums;
  VoteState state;
};
// column_workspace: the caller attaches a CastWorkspace (state.ws) and runs the bf16 mode, so a
// matrix that the bf16 cast serves (cast_fast_serves) gets no col_part of its own.
DeviceVotes make_device_votes(const LutTrainView& w, const VoteParams& p, int64_t id, cudaStream_t s,
                              bool column_workspace = false);

// Stage 2 of the weight gradient (lut_train.h), VoteEngine::tile for the tiles of rows
// o0 .. o0+rows-1 (o0 a multiple of R; rows a multiple of R or reaching O):
//   dW: (rows, I) the weight gradient of those rows (device);
//   dscale: (O, I / G) or null, accumulated as linear.cpp does;
//   votes: null, or the state into which the votes are cast (with params).
void lut_grad_tiles(const LutTrainView& w, const float* dW, int64_t o0, int64_t rows, float* dscale, VoteState* votes,
                    const VoteParams* params, cudaStream_t s);

// The bf16 mode's stage 2 from a bf16 weight gradient (the GEMM writing bf16: half the bytes
// written and read): as lut_grad_tiles in the bf16 mode, for the matrices that
// lut_grad_tiles_bf16_ok accepts (votes_fast.cu's cast: momentum with int8 votes or dscale alone,
// up to 8 bits, I and G multiples of 8, G <= 256, rows up to 10240).
bool lut_grad_tiles_bf16_ok(const LutTrainView& w, VoteState* votes, const VoteParams* params);
void lut_grad_tiles_bf16(const LutTrainView& w, const uint16_t* dW, int64_t o0, int64_t rows, float* dscale,
                         VoteState* votes, const VoteParams* params, cudaStream_t s);

// VoteEngine::done after the last tile of one backward call: the column EMA, events and
// col_norm (momentum with second moments), and events_this_step.
void lut_votes_done(const LutTrainView& w, VoteState& st, const VoteParams& p, cudaStream_t s);

// The optimizer step on the indices (VoteEngine::apply_seed / apply_momentum): w.idx and the
// state are updated in place; the number of changed indices is added to *flips (device).
void lut_votes_apply(const LutTrainView& w, VoteState& st, const VoteParams& p, unsigned long long* flips,
                     cudaStream_t s);

// lut_votes_apply for many matrices: those that the fast momentum apply serves (int8 votes, no
// noise or cooldown, I % 8 == 0, up to 8 bits) in one launch per index width, the others one by
// one. desc: apply_batch_desc_bytes(items) bytes of device memory. Same indices, votes and flip
// count as lut_votes_apply on each.
struct ApplyItem {
  LutTrainView w;
  VoteState* st;
};
size_t apply_batch_desc_bytes(size_t items);
void lut_votes_apply_batch(const std::vector<ApplyItem>& items, const VoteParams& p, unsigned long long* flips,
                           void* desc, cudaStream_t s);

}  // namespace primal::cuda
