// Everything a training run is configured by. It is saved (as JSON) in every checkpoint, and a
// resumed run takes it from there, so the continuation is the same computation.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/adamw.h"
#include "train/model.h"
#include "train/schedule.h"
#include "train/votes.h"

namespace primal::train {

struct TrainConfig {
  // Model.
  std::string model;              // GGUF file or HF folder; empty with init_random
  bool init_random = false;
  std::string shape;              // --shape for init_random
  std::string tokenizer;          // tokenizer source (default: the model)
  LutSpec lut;                    // how float matrices become LUT (sources that are not LUT)
  int64_t share = 0;              // physical layers when sharing (0: none)
  int train_embd = -1, train_head = -1;  // -1: auto (on for init_random, off for a model)
  bool freeze_scales = false;     // LUT scales fixed: only indices train
  std::string teacher;            // distillation: KL to this model's outputs (empty: cross-entropy)

  // Data.
  std::vector<std::string> data;
  std::vector<std::string> extensions;
  std::vector<std::string> eval_data;
  double eval_frac = 0.02;
  int64_t eval_seqs = 16;         // evaluation sequences of seq tokens
  bool shuffle = true;

  // Schedule and optimizers.
  ScheduleConfig sched;
  std::string preset = "none";
  AdamConfig adam;
  VoteConfig votes;
  uint64_t seed = 1234;

  // Output.
  std::string out;
  int64_t checkpoint_every = 100;  // 0: only at the end
  int64_t eval_every = 100;        // 0: only at the end
  int64_t sample_every = 0;        // 0: never
  int64_t sample_tokens = 32;
  std::string sample_prompt;
  bool save_f32 = false;           // dense matrices of the final model in F32 (else F16)

  bool embd_trainable() const { return train_embd < 0 ? init_random : train_embd != 0; }
  bool head_trainable() const { return train_head < 0 ? init_random : train_head != 0; }
  std::string to_json() const;
  static TrainConfig from_json(const std::string& json, const std::string& what);
};

}  // namespace primal::train
