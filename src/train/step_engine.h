// Where the steps of `primal train` run. run_training (trainer.h) owns the model, the votes, AdamW,
// the data and every file; an engine runs the micro-batches' forward and backward, the vote step
// and the AdamW step on its device, and brings its state back to the host objects when the loop
// needs them there (checkpoints, samples, the final model).
//
// The CPU engine (make_cpu_engine) computes on those host objects directly; the CUDA engine
// (train/cuda/gpu_engine.h) keeps copies in device memory and mirrors every formula of the CPU
// path with the kernels of src/ops/cuda/ (the CPU is the specification).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "train/adamw.h"
#include "train/forward_backward.h"
#include "train/votes.h"

namespace primal::train {

struct TrainConfig;

class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda"
  // Start of optimizer step `step`: the votes' step and schedule, float gradients zeroed.
  virtual void begin_step(int64_t step, double sched) = 0;
  // One micro-batch (inputs, targets: (B, T) host int32). train: add loss_scale * the gradient of
  // the summed loss into the gradients and votes; else forward and loss only (evaluation).
  virtual LossSum forward_backward(const TrainMask& mask, const int32_t* inputs, const int32_t* targets, int64_t B,
                                   int64_t T, double loss_scale, bool train) = 0;
  // The votes' optimizer step on the matrices `trainable` names, then the governor
  // (VoteEngine::apply).
  virtual StepStats apply_votes(const std::function<bool(const Matrix&)>& trainable) = 0;
  // AdamW::step on the float parameters `trainable` names; returns the gradient norm.
  virtual double adam_step(double sched, const std::function<bool(const FloatParam&)>& trainable) = 0;
  // Device state into the host model, VoteEngine and AdamW (a no-op on the CPU).
  virtual void sync_to_host() = 0;
  // Peak device memory in use so far (bytes), 0 when not tracked.
  virtual int64_t peak_bytes() const { return 0; }
};

// What run_training hands to an engine factory; all objects outlive the engine.
struct EngineContext {
  TrainModel* model = nullptr;
  VoteEngine* votes = nullptr;
  AdamW* adam = nullptr;
  Grads<float>* grads = nullptr;
  const TrainConfig* cfg = nullptr;
  const Teacher<float>* teacher = nullptr;  // distillation, or null
  int64_t max_batch = 0, max_seq = 0;       // the largest micro-batch the run will ask for
};

std::unique_ptr<StepEngine> make_cpu_engine(const EngineContext& ctx);

}  // namespace primal::train
