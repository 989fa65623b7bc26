#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace primal::train {

void ScheduleConfig::validate() const {
  PRIMAL_CHECK(steps > 0, "--steps must be positive (got {})", steps);
  PRIMAL_CHECK(warmup >= 0 && warmup <= steps, "--warmup {} outside 0..{}", warmup, steps);
  PRIMAL_CHECK(min_frac >= 0 && min_frac <= 1, "--min-lr-frac {} outside [0, 1]", min_frac);
  PRIMAL_CHECK(seq >= 2, "--seq must be at least 2 (got {})", seq);
  PRIMAL_CHECK(batch >= 1, "--batch must be positive (got {})", batch);
  PRIMAL_CHECK(accum >= 1, "--accum must be positive (got {})", accum);
  PRIMAL_CHECK(peel_every >= 0 && peel_layers >= 1, "invalid peel schedule (every {}, layers {})", peel_every,
               peel_layers);
  PRIMAL_CHECK(seal_steps >= 0 && seal_steps <= steps, "--seal-steps {} outside 0..{}", seal_steps, steps);
  PRIMAL_CHECK(seal_seq >= 0 && seal_accum >= 0, "invalid sealing pass (seq {}, accum {})", seal_seq, seal_accum);
  PRIMAL_CHECK(seal_steps == 0 || std::max<int64_t>(seal_seq ? seal_seq : seq / 2, 2) >= 2,
               "--seal-seq must be at least 2");
}

void ScheduleConfig::apply_preset(const std::string& name, int64_t P) {
  if (name == "none") return;
  const bool peel = name == "peel" || name == "peel+seal", seal = name == "seal" || name == "peel+seal";
  PRIMAL_CHECK(peel || seal, "--schedule: unknown preset '{}' (none, peel, seal, peel+seal)", name);
  if (seal && seal_steps == 0) seal_steps = std::max<int64_t>(1, steps / 10);
  if (peel && peel_every == 0) {
    const int64_t phases = 1 + (P + peel_layers - 1) / peel_layers;  // embd/head, then the groups
    peel_every = std::max<int64_t>(1, (steps - seal_steps) / (phases + 1));
  }
}

double lr_multiplier(const ScheduleConfig& s, int64_t step) {
  if (s.warmup > 0 && step < s.warmup) return double(step + 1) / double(s.warmup);
  const double span = double(std::max<int64_t>(1, s.steps - s.warmup));
  const double x = std::clamp(double(step - s.warmup) / span, 0.0, 1.0);
  return s.min_frac + (1 - s.min_frac) * 0.5 * (1 + std::cos(std::numbers::pi * x));
}

Phase phase_at(const ScheduleConfig& s, int64_t step) {
  Phase p;
  p.seq = s.seq;
  p.batch = s.batch;
  p.accum = s.accum;
  if (s.seal_steps > 0 && step >= s.steps - s.seal_steps) {
    p.sealing = true;
    p.seq = std::max<int64_t>(2, s.seal_seq ? s.seal_seq : s.seq / 2);
    p.accum = s.seal_accum ? s.seal_accum : 2 * s.accum;
    return p;
  }
  if (s.peel_every > 0) {
    const int64_t k = step / s.peel_every;
    p.only_embd_head = k == 0;
    p.top_layers = k * s.peel_layers;
  }
  return p;
}

}  // namespace primal::train
