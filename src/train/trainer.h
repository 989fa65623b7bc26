// `primal train`: the loop that ties the model, data, votes, AdamW, schedules, metrics, samples
// and checkpoints together (CPU reference; a GPU trainer mirrors it).
//
// Per optimizer step s (0-based): the schedule gives the phase (sequence length, accumulation,
// trainable layers) and the lr multiplier; accum micro-batches of B x T tokens run forward and
// backward (LUT weight gradients become votes tile by tile, float gradients accumulate); then
// the votes move indices (and the governor reacts) and AdamW steps the float parameters.
// DIR/metrics.jsonl gets one row per step and one per evaluation; DIR/checkpoint.gguf is
// replaced atomically every checkpoint_every steps; DIR/model.gguf is the final model.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "train/step_engine.h"
#include "train/train_config.h"

namespace primal::train {

struct TrainRunOptions {
  bool resume = false;            // continue from cfg.out/checkpoint.gguf
  int64_t steps_override = 0;     // with resume: a new total step count (0: keep)
  int64_t stop_after = 0;         // stop (with a checkpoint) after this many steps of this
                                  // invocation, keeping the schedule of all steps (0: run to the end)
  bool tty = false;               // progress bar redrawn in place (else one line every log_every)
  int64_t log_every = 10;
  std::function<void(const std::string&)> log;  // human lines (stderr)
  // The engine that runs the steps (null: the CPU engine); the CLI passes the CUDA one.
  std::function<std::unique_ptr<StepEngine>(const EngineContext&)> engine;
  // Called once the model is loaded and the schedule is final, before the engine is made: the
  // device's memory plan for them (the CLI's CUDA planner: it sizes the engine, or refuses a run
  // that cannot fit). Null: none.
  std::function<void(const TrainModel&, const TrainConfig&)> plan;
};

struct TrainSummary {
  int64_t steps = 0;
  uint64_t tokens = 0;
  double first_loss = 0, last_loss = 0;
  double first_eval = -1, last_eval = -1;
  double seconds = 0;
};

TrainSummary run_training(const TrainConfig& cfg, const TrainRunOptions& o);

// Paths inside the output folder.
std::string checkpoint_path(const std::string& dir);  // DIR/checkpoint.gguf
std::string metrics_path(const std::string& dir);     // DIR/metrics.jsonl
std::string final_model_path(const std::string& dir); // DIR/model.gguf

}  // namespace primal::train
