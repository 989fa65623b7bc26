// Integer votes: how LUT indices learn without an fp32 weight or gradient per weight
// (ARCHITECTURE.md §5). Each LUT weight owns a small integer v (int8 or int16) in index space:
// v > 0 pushes idx toward idx + 1, the bucket whose value is larger when the scale s > 0.
// The weight gradient g = dL/dW of a tile of rows is turned into votes at once (tile(), called
// from the linear layer's backward); at the optimizer step (apply()) votes become index moves.
//
// Seed rule (--rule seed), the seed documents' knobs:
//   cast:  per row, thr = mean|g| + k std|g| (k = sensitivity);  |g| > thr  =>  v += -sign(g s)
//   step:  v += uniform integer jitter in [-noise, noise];  a weight in cooldown only counts down;
//          |v| >= consensus  =>  flips one bucket toward sign(v) with probability
//          p = min(1, flip_lr * lr_mult * sigmoid(z)),  z = (|v| - mean|v|) / std|v| over the
//          tensor; a flip (or a vote against the end of the grid) resets v to 0; a flip starts
//          a cooldown of `cooldown` steps.
// Momentum rule (--rule momentum), a fixed-point master weight of index + fraction:
//   cast:  u = -lr * g / (sqrt(Vhat) + eps), in weight units (Vhat = 1 without second moments),
//          converted to index units by the local bucket width s * (grid[idx +- 1] - grid[idx])
//          on the side u moves toward, times U votes per bucket (U = 64 for int8, 16384 for
//          int16), stochastically rounded:  v += floor(x) + [rand < x - floor(x)]
//   second moments (Adafactor-style, factored): per row r = EMA of mean_i g^2 (this tile's rows,
//          current gradient included), per column c = EMA of mean_o g^2 (from the previous
//          backward calls), Vhat[o, i] = rhat[o] * chat[i] / mean(chat), with bias correction.
//   step:  a carry q = trunc(v / U) moves idx by q buckets (clamped to the grid) and leaves
//          v - moved * U; at the ends of the grid |v| is held below U.
// Both rules: votes saturate at the integer type's range; the governor (flip_cap > 0) reacts to
// a step whose fraction of flipped weights exceeds the cap: lr_mult *= 0.8, sensitivity += 0.02.
// Random numbers come from counter-based streams keyed by (seed, step, tensor, purpose, row).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "train/linear.h"

namespace primal::train {

enum class Rule { Seed, Momentum };
const char* rule_name(Rule r);

struct VoteConfig {
  Rule rule = Rule::Momentum;
  int vote_bits = 8;          // 8: int8 votes, 16: int16 votes
  uint64_t seed = 0;
  // Seed rule.
  double sensitivity = 1.0;   // k
  int consensus = 4;          // |v| needed before a flip is considered
  double flip_lr = 1.0;       // flip probability scale
  int noise = 0;              // jitter amplitude (votes)
  int cooldown = 0;           // steps held after a flip (both rules)
  double flip_cap = 0;        // governor cap on flipped weights / LUT weights per step; 0: off
  // Momentum rule.
  double lr = 1e-3;           // weight-space step (scaled by the schedule and the governor)
  bool second_moment = true;
  double beta2 = 0.999;
  double eps = 1e-10;

  int64_t units() const { return vote_bits == 8 ? 64 : 16384; }     // votes per bucket (momentum)
  int64_t vmax() const { return vote_bits == 8 ? 127 : 32767; }      // saturation
  void validate() const;
};

// The governor's state (saved in checkpoints).
struct Governor {
  double lr_mult = 1.0;     // multiplies the flip probability (seed) or the lr (momentum)
  double sensitivity = 0;   // current k of the seed rule
  int64_t reactions = 0;    // times the cap was exceeded
};

// Votes and rule state of one LUT matrix.
struct LutVotes {
  Matrix* m = nullptr;
  int64_t id = 0;                 // stable tensor number (model order), keys the random streams
  std::vector<int8_t> v8;         // (O, I) int8 votes, or
  std::vector<int16_t> v16;       // (O, I) int16 votes
  std::vector<uint8_t> cool;      // (O, I) cooldown steps left; empty when cooldown == 0
  std::vector<float> row_sq;      // (O) momentum: EMA of the row mean of g^2
  std::vector<float> col_sq;      // (I) momentum: EMA of the column mean of g^2
  int64_t events = 0;             // backward calls folded into the EMAs (bias correction)
  // Scratch, not state.
  std::vector<float> col_norm;    // (I) chat / mean(chat) for the next backward call
  std::vector<float> col_part;    // (tiles, I) this call's column sums of g^2 / O, per tile
  int64_t events_this_step = 0;

  int32_t vote(int64_t k) const { return v8.empty() ? v16[size_t(k)] : v8[size_t(k)]; }
  void set_vote(int64_t k, int32_t v) {
    if (v8.empty()) v16[size_t(k)] = int16_t(v);
    else v8[size_t(k)] = int8_t(v);
  }
};

struct StepStats {
  int64_t flips = 0;      // weights whose index changed
  int64_t weights = 0;    // LUT weights that were trainable this step
  double rate() const { return weights ? double(flips) / double(weights) : 0.0; }
};

class VoteEngine : public LutTileSink<float> {
 public:
  // One LutVotes per LUT matrix in `mats` (model order defines the ids).
  VoteEngine(const VoteConfig& cfg, const std::vector<Matrix*>& mats);

  const VoteConfig& config() const { return cfg_; }
  Governor& governor() { return gov_; }
  const Governor& governor() const { return gov_; }
  std::vector<LutVotes>& states() { return st_; }
  const std::vector<LutVotes>& states() const { return st_; }
  LutVotes* find(const Matrix* m);

  // Before the backward passes of a step: step number and the schedule's multiplier (0..1].
  void begin_step(int64_t step, double sched);

  void tile(const Matrix& m, int64_t o0, int64_t rows, const float* dW) override;
  void done(const Matrix& m) override;

  // The optimizer step on the indices of the matrices for which `trainable` is true; then the
  // governor. Returns the flips.
  StepStats apply(const std::function<bool(const Matrix&)>& trainable);

  // Rebuild scratch (col_norm) after the state was loaded.
  void refresh();

 private:
  void cast_seed(LutVotes& s, int64_t o, const float* g);
  void cast_momentum(LutVotes& s, int64_t o, const float* g, float* col_part);
  int64_t apply_seed(LutVotes& s);
  int64_t apply_momentum(LutVotes& s);
  void update_col_norm(LutVotes& s);

  VoteConfig cfg_;
  Governor gov_;
  std::vector<LutVotes> st_;
  std::unordered_map<const Matrix*, size_t> index_;
  int64_t step_ = 0;
  double sched_ = 1.0;
};

}  // namespace primal::train
