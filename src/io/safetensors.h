// safetensors reader on mmap (the format of Hugging Face checkpoints), single files and sharded
// checkpoints (model.safetensors.index.json).
//
// Layout: u64 N (little-endian), N bytes of JSON header, then the data section. The header maps
// each tensor name to {"dtype": "BF16", "shape": [rows, cols], "data_offsets": [begin, end]}
// (offsets relative to the data section) and may hold "__metadata__": {string: string}.
// Everything is validated against the file before use (header length, JSON, dtype, dimensions,
// offsets, overlaps, size = shape x dtype), so a truncated or hostile file gives an Error that names
// the file and the problem.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace primal {

struct SafetensorsTensor {
  std::string name;            // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::string dtype;           // as written in the header: "BF16", "F32", "I64", ...
  std::optional<DType> type;   // F32 / F16 / BF16 (and F64, I8..I64); nullopt for the others
  std::vector<int64_t> shape;  // safetensors order: shape.back() is the contiguous dimension
  uint64_t begin = 0;          // data_offsets, relative to the data section
  uint64_t end = 0;
  const uint8_t* data = nullptr;  // into the mapping
  size_t nbytes = 0;              // end - begin
  std::string file;               // path of the file that holds it

  int64_t nelements() const;
  // ggml order (ne[0] = shape.back()), as TensorRef and GGUF want it.
  std::vector<int64_t> ne() const { return {shape.rbegin(), shape.rend()}; }
  // The DType of a tensor used as model weights: F32, F16 or BF16; throws naming the tensor
  // and file for any other dtype ("I64 cannot be used as a weight").
  DType weight_type() const;
};

// Bytes per element of a safetensors dtype string, or 0 when unknown.
size_t safetensors_dtype_size(const std::string& dtype);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // mmap + parse
  // Parse a buffer the caller keeps alive (tests, fuzzing); `name` is used in error messages.
  static std::unique_ptr<SafetensorsFile> from_buffer(const uint8_t* data, size_t size, std::string name);

  const std::string& path() const { return name_; }
  size_t file_size() const { return size_; }
  uint64_t header_size() const { return header_size_; }   // N
  uint64_t data_offset() const { return 8 + header_size_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }  // __metadata__

  // Tensors sorted by name (as the safetensors library lists them).
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  void parse(const uint8_t* data, size_t size);

  std::unique_ptr<MappedFile> map_;
  std::string name_;
  size_t size_ = 0;
  uint64_t header_size_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
};

// All tensors of a checkpoint: a folder (model.safetensors.index.json, or model.safetensors, or
// every *.safetensors file in it) or one .safetensors file.
class SafetensorsModel {
 public:
  explicit SafetensorsModel(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // Tensors of all shards, sorted by name.
  const std::vector<const SafetensorsTensor*>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;
  const SafetensorsTensor& tensor(const std::string& name) const;  // throws naming the checkpoint

 private:
  void add_file(const std::string& file);
  void index_tensors(const std::string& index_path, const std::map<std::string, std::string>* weight_map);

  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::vector<const SafetensorsTensor*> tensors_;
  std::map<std::string, const SafetensorsTensor*> by_name_;
};

}  // namespace primal
