// GGUF v2/v3 reader on mmap (the container of llama.cpp and of primal's own models).
//
// Layout: "GGUF" u32 version, u64 n_tensors, u64 n_kv, n_kv × (string key, u32 type, value),
// n_tensors × (string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset), padding to
// general.alignment (default 32), then the data section. Strings are u64 length + bytes.
// Every count, length, offset and dimension is validated against the file before use, so a
// truncated or malicious file gives an Error that names the file and the problem.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace primal {

enum class GgufType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars keep their GGUF type so that a file re-written by GgufWriter is
// byte-identical in its metadata.
struct GgufValue {
  GgufType type = GgufType::UINT8;
  uint64_t u = 0;        // UINT8/16/32/64, BOOL
  int64_t i = 0;         // INT8/16/32/64
  double f = 0;          // FLOAT32/64
  std::string str;       // STRING
  GgufType elem = GgufType::UINT8;  // ARRAY: element type
  std::vector<GgufValue> arr;       // ARRAY: elements (arrays may nest)

  bool is_integer() const;
  bool is_float() const { return type == GgufType::FLOAT32 || type == GgufType::FLOAT64; }
  int64_t as_int() const;    // any integer or bool; throws otherwise
  double as_float() const;   // any number; throws otherwise
  const std::string& as_str() const;
  std::string to_string(size_t max_items = 8) const;  // human view for `primal inspect`

  static GgufValue u8(uint8_t v), i8(int8_t v), u16(uint16_t v), i16(int16_t v), u32(uint32_t v),
      i32(int32_t v), u64(uint64_t v), i64(int64_t v), f32(float v), f64(double v), boolean(bool v),
      string(std::string v);
  static GgufValue array(GgufType elem, std::vector<GgufValue> items);
  static GgufValue strings(const std::vector<std::string>& v);
  static GgufValue f32s(const std::vector<float>& v);
  static GgufValue i32s(const std::vector<int32_t>& v);
};

struct GgufTensorInfo {
  std::string name;
  DType type = DType::F32;
  std::vector<int64_t> ne;     // ggml order: ne[0] is the contiguous (row) dimension
  uint64_t offset = 0;         // relative to the data section
  size_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping (or the parsed buffer)

  int64_t nelements() const;
  int64_t row_size() const { return ne.empty() ? 1 : ne[0]; }
  int64_t nrows() const { return ne.empty() ? 1 : nelements() / ne[0]; }
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);  // mmap + parse
  // Parse a buffer the caller keeps alive (fuzzing, tests); `name` is used in error messages.
  static std::unique_ptr<GgufFile> from_buffer(const uint8_t* data, size_t size, std::string name);

  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t header_end() const { return header_end_; }  // end of the tensor table, before padding
  size_t file_size() const { return size_; }

  // Metadata, in file order.
  const std::vector<std::pair<std::string, GgufValue>>& kv() const { return kv_; }
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  const GgufValue& get(const std::string& key) const;  // throws naming the file and key
  std::string get_str(const std::string& key) const;
  std::string get_str(const std::string& key, const std::string& def) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_float(const std::string& key) const;
  double get_float(const std::string& key, double def) const;
  bool get_bool(const std::string& key, bool def) const;
  std::vector<std::string> get_strings(const std::string& key) const;
  std::vector<float> get_floats(const std::string& key) const;
  std::vector<int64_t> get_ints(const std::string& key) const;

  // Tensors, in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  const GgufTensorInfo& tensor(const std::string& name) const;  // throws

 private:
  GgufFile() = default;
  void parse(const uint8_t* data, size_t size);

  std::unique_ptr<MappedFile> map_;
  std::string name_;
  size_t size_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  uint64_t header_end_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace primal
