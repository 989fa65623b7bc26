// GGUF v3 writer: metadata of every type (nested arrays included) and tensors of any DType with
// alignment padding, laid out exactly as ggml's gguf writer does (so a file read by GgufFile and
// written back is byte-identical).
//
// Tensors are streamed: each is given by a producer that fills the bytes of that one tensor, so a
// large model is converted holding at most one tensor in memory. The file is written under a
// temporary name beside the target and renamed at the end: an interrupted or failed write never
// leaves a truncated file under the final name.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "io/gguf.h"

namespace primal {

class GgufWriter {
 public:
  // Fill dst[0..nbytes) with the tensor's data (nbytes as the writer computed from type and shape).
  using Producer = std::function<void(uint8_t* dst, size_t nbytes)>;
  // Called after each tensor is written: (index, count, name).
  using Progress = std::function<void(size_t, size_t, const std::string&)>;

  // alignment: used unless the metadata holds general.alignment (a u32 power of two).
  explicit GgufWriter(uint32_t alignment = 32) : alignment_(alignment) {}

  // Metadata in insertion order; a duplicate key throws.
  void add_kv(const std::string& key, GgufValue v);
  void set_kv(const std::string& key, GgufValue v);  // replace in place, or append
  const std::vector<std::pair<std::string, GgufValue>>& kv() const { return kv_; }

  // ne in ggml order (ne[0] contiguous); ne[0] must be a multiple of the type's block size.
  void add_tensor(const std::string& name, DType type, std::vector<int64_t> ne, Producer produce);
  // Convenience: bytes the caller keeps alive until write() returns.
  void add_tensor(const std::string& name, DType type, std::vector<int64_t> ne, const void* data, size_t nbytes);
  size_t tensor_count() const { return tensors_.size(); }

  // Write the file (temporary name, then rename). Throws Error naming the path on any failure.
  void write(const std::string& path, const Progress& progress = {}) const;

 private:
  struct Tensor {
    std::string name;
    DType type;
    std::vector<int64_t> ne;
    size_t nbytes;
    Producer produce;
  };
  uint32_t effective_alignment() const;

  uint32_t alignment_;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Tensor> tensors_;
};

// Copy every metadata key and tensor of `f` into a writer (tensor bytes viewed in f's mapping,
// which must outlive the writer's write()).
void copy_gguf(const GgufFile& f, GgufWriter& w);

}  // namespace primal
