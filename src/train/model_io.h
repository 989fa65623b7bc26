// TrainModel -> GGUF, in primal's LUT model format (quant/lut_format.h of the quantizer, format
// version 1): a LUT matrix W is the index tensor W (type LUT2..LUT16, packed as in memory),
// W.scale (F16 [I / G, O]) and its grid, shared as lut_grid.LUT4 (...) when every matrix of that
// type uses the same grid, else W.grid (F32 [K]). Norms and biases are F32; dense matrices
// (embeddings, head) F16 or F32. Shared layers are written once per logical layer, so `run`,
// `ppl` and `export` read the file as an ordinary model.
//
// Reading is load_train_model (train/model.h) on a ModelSource, whose loader attaches the LUT
// scales and grids (quant/lut_format.h attach_lut_params); it is also how checkpoints are loaded.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "train/model.h"

namespace primal::train {

using KvList = std::vector<std::pair<std::string, GgufValue>>;

struct SaveOptions {
  DType dense_type = DType::F16;  // embeddings / head / other dense matrices: F16 or F32
  std::string name;               // general.name
};

// Model metadata and tensors into `w`. tokenizer_kv: the tokenizer.* keys to carry. The writer
// reads m's buffers when it writes: m must stay alive and unchanged until then.
void add_model(GgufWriter& w, const TrainModel& m, const KvList& tokenizer_kv, const SaveOptions& o);

// The tokenizer.* metadata to save with a model trained from `source` (a GGUF file, or an HF
// folder whose tokenizer.json is converted as `primal convert` does).
KvList tokenizer_metadata(const std::string& source);

}  // namespace primal::train
