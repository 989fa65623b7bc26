// The CPU engine: the host objects are the state, forward_backward.cpp computes.
#include "train/step_engine.h"

namespace primal::train {
namespace {

class CpuEngine final : public StepEngine {
 public:
  explicit CpuEngine(const EngineContext& c) : c_(c) {}
  std::string name() const override { return "cpu"; }
  void begin_step(int64_t step, double sched) override {
    c_.votes->begin_step(step, sched);
    c_.grads->zero();
  }
  LossSum forward_backward(const TrainMask& mask, const int32_t* inputs, const int32_t* targets, int64_t B, int64_t T,
                           double loss_scale, bool train) override {
    return train::forward_backward<float>(*c_.model, mask, ws_, inputs, targets, B, T, loss_scale,
                                          train ? c_.grads : nullptr, train ? c_.votes : nullptr,
                                          train ? c_.teacher : nullptr);  // evaluation: cross-entropy
  }
  StepStats apply_votes(const std::function<bool(const Matrix&)>& trainable) override {
    return c_.votes->apply(trainable);
  }
  double adam_step(double sched, const std::function<bool(const FloatParam&)>& trainable) override {
    return c_.adam->step(sched, trainable);
  }
  void sync_to_host() override {}

 private:
  EngineContext c_;
  Workspace<float> ws_;
};

}  // namespace

std::unique_ptr<StepEngine> make_cpu_engine(const EngineContext& ctx) { return std::make_unique<CpuEngine>(ctx); }

}  // namespace primal::train
