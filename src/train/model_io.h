// TrainModel <-> GGUF, in primal's LUT model format (quant/lut_format.h of the quantizer, format
// version 1): a LUT matrix W is the index tensor W (type LUT4/LUT8/LUT16, packed as in memory),
// W.scale (F16 [I / G, O]) and its grid, shared as lut_grid.LUT4 (...) when every matrix of that
// type uses the same grid, else W.grid (F32 [K]). Norms and biases are F32; dense matrices
// (embeddings, head) F16 or F32. Shared layers are written once per logical layer, so `run`,
// `ppl` and `export` read the file as an ordinary model.
//
// The reader takes any GGUF primal can dequantize (F32/F16/BF16/Q*/K-quants/IQ4_NL and the LUT
// types) and reads LUT tensors as they are; it is also how checkpoints are loaded.
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

// A TrainModel from a GGUF file. Non-LUT layer matrices are quantized to `spec` (as
// load_train_model does); share as there. Throws naming the file for missing or misshapen tensors.
TrainModel read_train_model(const GgufFile& f, const LutSpec& spec, int64_t share);

// True when the file holds LUT tensors (then it is read by read_train_model).
bool has_lut_tensors(const GgufFile& f);

}  // namespace primal::train
