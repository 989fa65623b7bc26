// What changes over a run: the learning-rate multiplier (linear warm-up, then cosine down to
// min_frac), and the seeds' schedules:
//   layer peel: steps [0, peel_every) train only the embeddings, head and output norm; every
//               peel_every steps two more (peel_layers) physical layers from the top join;
//   sealing pass: the last seal_steps steps train everything with a shorter sequence
//               (seal_seq, default seq / 2) and more accumulation (seal_accum, default 2 x accum),
//               i.e. the same tokens per step in shorter windows.
#pragma once
#include <cstdint>
#include <string>

namespace primal::train {

struct ScheduleConfig {
  int64_t steps = 0;
  int64_t warmup = 0;
  double min_frac = 0.1;       // final lr / peak lr
  int64_t seq = 0, batch = 0, accum = 1;
  int64_t peel_every = 0;      // 0: no peel cascade
  int64_t peel_layers = 2;
  int64_t seal_steps = 0;      // 0: no sealing pass
  int64_t seal_seq = 0;        // 0: seq / 2
  int64_t seal_accum = 0;      // 0: 2 x accum

  void validate() const;
  // Apply a named preset: "none", "peel", "seal", "peel+seal" (the seeds' full schedule: a peel
  // every steps / (2 + layers / peel_layers) steps and a sealing pass of the last 10%).
  void apply_preset(const std::string& name, int64_t n_physical_layers);
};

struct Phase {
  int64_t seq = 0, batch = 0, accum = 1;
  bool sealing = false;
  int64_t top_layers = -1;     // physical layers trainable from the top; -1: all
  bool only_embd_head = false; // the peel's first phase
};

double lr_multiplier(const ScheduleConfig& s, int64_t step);  // step 0-based, in (0, 1]
Phase phase_at(const ScheduleConfig& s, int64_t step);

}  // namespace primal::train
