// Checkpoints: one GGUF file, DIR/checkpoint.gguf, written under a temporary name, synced and
// renamed into place (io/gguf_writer.h), so a process killed at any moment leaves either the
// previous checkpoint or the new one, never a torn file. It is a complete LUT model (run/ppl read
// it) plus the training state:
//   train.scale.<W>    F32 [I/G, O]  fp32 master scales (the model's W.scale is their fp16)
//   train.votes.<W>    I8 or I16 [I, O]
//   train.cool.<W>     I8 [I, O]     cooldown counters (when cooldown > 0)
//   train.row_sq.<W>   F32 [O], train.col_sq.<W> F32 [I]   momentum second moments
//   train.vote_events  I64 [n LUT matrices]                 backward calls folded into them
//   train.adam_m.<P>, train.adam_v.<P>  F32 [n]             AdamW moments
//   train.adam_t       I64 [n float parameters]             AdamW steps per parameter
//   primal.train.*     metadata: step, tokens, data position, governor, seconds, the run's
//                      configuration (JSON) and format version.
// Dense matrices are stored F32 in checkpoints so a resumed run continues bit for bit.
#pragma once
#include <cstdint>
#include <string>

#include "io/gguf.h"
#include "train/adamw.h"
#include "train/data_loader.h"
#include "train/model_io.h"
#include "train/votes.h"

namespace primal::train {

struct TrainState {
  int64_t step = 0;           // optimizer steps completed
  uint64_t tokens = 0;        // training tokens consumed
  DataPosition data;          // of the next training token
  double seconds = 0;         // training time so far
  std::string config_json;    // the run's configuration
};

void write_checkpoint(const std::string& path, const TrainModel& m, const VoteEngine& votes, const AdamW& adam,
                      const TrainState& st, const KvList& tokenizer_kv);

// Reading back, in this order: the model (load_train_model on a ModelSource of the file), then these.
TrainState read_checkpoint_state(const GgufFile& f);
void restore_scales(const GgufFile& f, TrainModel& m);
void restore_votes(const GgufFile& f, VoteEngine& votes);
void restore_adam(const GgufFile& f, AdamW& adam);

// Removes temporary files of interrupted checkpoint writes beside `path`.
void remove_stale_temporaries(const std::string& path);

}  // namespace primal::train
