#include "io/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace primal {
namespace {

constexpr int kMaxArrayDepth = 8;      // nested arrays deeper than this are refused
constexpr uint32_t kMaxDims = 4;       // GGML_MAX_DIMS
constexpr uint64_t kMaxStringLen = 1u << 30;

// Bounds-checked little-endian cursor over the file; every read names the file on failure.
class Cursor {
 public:
  Cursor(const uint8_t* p, size_t n, const std::string& name) : p_(p), n_(n), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }

  void need(uint64_t bytes, const char* what) const {
    if (bytes > remaining())
      fail("{}: truncated file: {} needs {} bytes at offset {} but only {} remain", name_, what, bytes,
           pos_, remaining());
  }
  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const uint64_t len = read<uint64_t>(what);
    if (len > kMaxStringLen) fail("{}: {} has an absurd length {} at offset {}", name_, what, len, pos_ - 8);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  const std::string& name_;
};

// Smallest encoded size of one value of type t (used to reject counts larger than the file).
uint64_t min_encoded_size(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

bool valid_type(uint32_t t) { return t <= uint32_t(GgufType::FLOAT64); }

GgufValue read_value(Cursor& c, GgufType type, int depth, const std::string& name, const std::string& key) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::UINT8: v.u = c.read<uint8_t>("value"); break;
    case GgufType::INT8: v.i = c.read<int8_t>("value"); break;
    case GgufType::UINT16: v.u = c.read<uint16_t>("value"); break;
    case GgufType::INT16: v.i = c.read<int16_t>("value"); break;
    case GgufType::UINT32: v.u = c.read<uint32_t>("value"); break;
    case GgufType::INT32: v.i = c.read<int32_t>("value"); break;
    case GgufType::UINT64: v.u = c.read<uint64_t>("value"); break;
    case GgufType::INT64: v.i = c.read<int64_t>("value"); break;
    case GgufType::FLOAT32: v.f = c.read<float>("value"); break;
    case GgufType::FLOAT64: v.f = c.read<double>("value"); break;
    case GgufType::BOOL: {
      const uint8_t b = c.read<uint8_t>("value");
      if (b > 1) fail("{}: key '{}': bool value {} is neither 0 nor 1", name, key, b);
      v.u = b;
      break;
    }
    case GgufType::STRING: v.str = c.str("string value"); break;
    case GgufType::ARRAY: {
      if (depth >= kMaxArrayDepth) fail("{}: key '{}': arrays nested deeper than {}", name, key, kMaxArrayDepth);
      const uint32_t et = c.read<uint32_t>("array type");
      if (!valid_type(et)) fail("{}: key '{}': unknown array element type {}", name, key, et);
      const uint64_t n = c.read<uint64_t>("array length");
      v.elem = GgufType(et);
      if (n > c.remaining() / min_encoded_size(v.elem))
        fail("{}: key '{}': array of {} elements cannot fit in the {} bytes left", name, key, n, c.remaining());
      v.arr.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) v.arr.push_back(read_value(c, v.elem, depth + 1, name, key));
      break;
    }
  }
  return v;
}

}  // namespace

// ---- GgufValue ---------------------------------------------------------------------------

const char* gguf_type_name(GgufType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                "bool", "str", "arr", "u64", "i64", "f64"};
  return uint32_t(t) <= 12 ? names[uint32_t(t)] : "?";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::UINT16: case GgufType::INT16:
    case GgufType::UINT32: case GgufType::INT32: case GgufType::UINT64: case GgufType::INT64:
    case GgufType::BOOL: return true;
    default: return false;
  }
}

int64_t GgufValue::as_int() const {
  switch (type) {
    case GgufType::UINT8: case GgufType::UINT16: case GgufType::UINT32: case GgufType::BOOL:
      return int64_t(u);
    case GgufType::UINT64:
      if (u > uint64_t(std::numeric_limits<int64_t>::max())) fail("value {} does not fit in int64", u);
      return int64_t(u);
    case GgufType::INT8: case GgufType::INT16: case GgufType::INT32: case GgufType::INT64: return i;
    default: fail("expected an integer, found {}", gguf_type_name(type));
  }
}

double GgufValue::as_float() const {
  if (is_float()) return f;
  if (type == GgufType::UINT64 || type == GgufType::UINT32 || type == GgufType::UINT16 ||
      type == GgufType::UINT8)
    return double(u);
  if (is_integer()) return double(as_int());
  fail("expected a number, found {}", gguf_type_name(type));
}

const std::string& GgufValue::as_str() const {
  if (type != GgufType::STRING) fail("expected a string, found {}", gguf_type_name(type));
  return str;
}

std::string GgufValue::to_string(size_t max_items) const {
  switch (type) {
    case GgufType::STRING: {
      std::string s = str.size() > 60 ? str.substr(0, 60) + "..." : str;
      std::string out = "\"";
      for (unsigned char ch : s) {
        if (ch == '\n') out += "\\n";
        else if (ch == '"') out += "\\\"";
        else if (ch < 0x20) out += fmt::format("\\x{:02x}", ch);
        else out += char(ch);
      }
      return out + "\"";
    }
    case GgufType::ARRAY: {
      std::string out = fmt::format("[{}; {}] [", gguf_type_name(elem), arr.size());
      for (size_t k = 0; k < arr.size() && k < max_items; ++k) out += (k ? ", " : "") + arr[k].to_string(max_items);
      if (arr.size() > max_items) out += ", ...";
      return out + "]";
    }
    case GgufType::BOOL: return u ? "true" : "false";
    case GgufType::FLOAT32: case GgufType::FLOAT64: return fmt::format("{}", f);
    default: return fmt::format("{}", as_int());
  }
}

#define PRIMAL_GGUF_SCALAR(fn, T, gt, field)    \
  GgufValue GgufValue::fn(T v) {                \
    GgufValue r;                                \
    r.type = GgufType::gt;                      \
    r.field = v;                                \
    return r;                                   \
  }
PRIMAL_GGUF_SCALAR(u8, uint8_t, UINT8, u)
PRIMAL_GGUF_SCALAR(i8, int8_t, INT8, i)
PRIMAL_GGUF_SCALAR(u16, uint16_t, UINT16, u)
PRIMAL_GGUF_SCALAR(i16, int16_t, INT16, i)
PRIMAL_GGUF_SCALAR(u32, uint32_t, UINT32, u)
PRIMAL_GGUF_SCALAR(i32, int32_t, INT32, i)
PRIMAL_GGUF_SCALAR(u64, uint64_t, UINT64, u)
PRIMAL_GGUF_SCALAR(i64, int64_t, INT64, i)
PRIMAL_GGUF_SCALAR(f32, float, FLOAT32, f)
PRIMAL_GGUF_SCALAR(f64, double, FLOAT64, f)
PRIMAL_GGUF_SCALAR(boolean, bool, BOOL, u)
#undef PRIMAL_GGUF_SCALAR

GgufValue GgufValue::string(std::string v) {
  GgufValue r;
  r.type = GgufType::STRING;
  r.str = std::move(v);
  return r;
}

GgufValue GgufValue::array(GgufType elem, std::vector<GgufValue> items) {
  GgufValue r;
  r.type = GgufType::ARRAY;
  r.elem = elem;
  r.arr = std::move(items);
  return r;
}

GgufValue GgufValue::strings(const std::vector<std::string>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (const auto& s : v) items.push_back(string(s));
  return array(GgufType::STRING, std::move(items));
}

GgufValue GgufValue::f32s(const std::vector<float>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (float x : v) items.push_back(f32(x));
  return array(GgufType::FLOAT32, std::move(items));
}

GgufValue GgufValue::i32s(const std::vector<int32_t>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (int32_t x : v) items.push_back(i32(x));
  return array(GgufType::INT32, std::move(items));
}

// ---- GgufTensorInfo ----------------------------------------------------------------------

int64_t GgufTensorInfo::nelements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// ---- GgufFile ----------------------------------------------------------------------------

GgufFile::GgufFile(const std::string& path) : map_(std::make_unique<MappedFile>(path)), name_(path) {
  parse(map_->data(), map_->size());
}

std::unique_ptr<GgufFile> GgufFile::from_buffer(const uint8_t* data, size_t size, std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->name_ = std::move(name);
  f->parse(data, size);
  return f;
}

void GgufFile::parse(const uint8_t* data, size_t size) {
  size_ = size;
  Cursor c(data, size, name_);
  if (size < 4 || std::memcmp(data, "GGUF", 4) != 0) fail("{}: not a GGUF file (bad magic)", name_);
  c.read<uint32_t>("magic");
  version_ = c.read<uint32_t>("version");
  if (version_ == 1) fail("{}: GGUF version 1 is not supported (re-convert the model)", name_);
  if (version_ != 2 && version_ != 3) {
    if ((version_ & 0xffff) == 0 && version_ != 0)
      fail("{}: big-endian GGUF files are not supported", name_);
    fail("{}: unsupported GGUF version {}", name_, version_);
  }
  const uint64_t n_tensors = c.read<uint64_t>("tensor count");
  const uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each kv needs at least a key length and a type; each tensor info at least 8+4+4+8 bytes.
  if (n_kv > c.remaining() / 12) fail("{}: metadata count {} is larger than the file allows", name_, n_kv);
  if (n_tensors > c.remaining() / 24) fail("{}: tensor count {} is larger than the file allows", name_, n_tensors);

  kv_.reserve(size_t(n_kv));
  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.str("metadata key");
    const uint32_t t = c.read<uint32_t>("metadata type");
    if (!valid_type(t)) fail("{}: key '{}' has unknown value type {}", name_, key, t);
    GgufValue v = read_value(c, GgufType(t), 0, name_, key);
    if (kv_index_.count(key)) fail("{}: duplicate metadata key '{}'", name_, key);
    kv_index_[key] = kv_.size();
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufType::UINT32) fail("{}: general.alignment must be a u32", name_);
    if (a->u == 0 || (a->u & (a->u - 1)) != 0)
      fail("{}: general.alignment {} is not a power of two", name_, a->u);
    alignment_ = uint32_t(a->u);
  }

  tensors_.reserve(size_t(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo ti;
    ti.name = c.str("tensor name");
    const uint32_t nd = c.read<uint32_t>("tensor dimension count");
    if (nd > kMaxDims) fail("{}: tensor '{}' has {} dimensions (at most {})", name_, ti.name, nd, kMaxDims);
    int64_t nel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t dim = c.read<uint64_t>("tensor dimension");
      if (dim == 0 || dim > uint64_t(std::numeric_limits<int64_t>::max()) ||
          int64_t(dim) > std::numeric_limits<int64_t>::max() / nel)
        fail("{}: tensor '{}' has an absurd dimension {}", name_, ti.name, dim);
      nel *= int64_t(dim);
      ti.ne.push_back(int64_t(dim));
    }
    const uint32_t t = c.read<uint32_t>("tensor type");
    auto tr = dtype_traits(t);
    if (!tr) fail("{}: tensor '{}' has unknown type id {}", name_, ti.name, t);
    if (tr->block_bytes == 0) fail("{}: tensor '{}' of type {} is not supported by this reader", name_, ti.name, tr->name);
    ti.type = DType(t);
    const int64_t row = ti.ne.empty() ? 1 : ti.ne[0];
    if (row % tr->block != 0)
      fail("{}: tensor '{}': row of {} elements is not a multiple of the {} block size {}", name_, ti.name, row,
           tr->name, tr->block);
    const uint64_t blocks = uint64_t(nel / tr->block);
    if (blocks > std::numeric_limits<uint64_t>::max() / tr->block_bytes)
      fail("{}: tensor '{}' is absurdly large", name_, ti.name);
    ti.nbytes = size_t(blocks * tr->block_bytes);
    ti.offset = c.read<uint64_t>("tensor offset");
    if (tensor_index_.count(ti.name)) fail("{}: duplicate tensor name '{}'", name_, ti.name);
    tensor_index_[ti.name] = tensors_.size();
    tensors_.push_back(std::move(ti));
  }

  // The data section starts at the next multiple of the alignment.
  header_end_ = c.pos();
  data_offset_ = (header_end_ + alignment_ - 1) / alignment_ * alignment_;
  if (data_offset_ > size && !tensors_.empty())
    fail("{}: truncated file: data section would start at {} but the file has {} bytes", name_, data_offset_, size);
  const uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;

  for (auto& ti : tensors_) {
    if (ti.offset % alignment_ != 0)
      fail("{}: tensor '{}' offset {} is not aligned to {}", name_, ti.name, ti.offset, alignment_);
    if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
      fail("{}: tensor '{}' (offset {}, {} bytes) extends past the end of the file (truncated?)", name_, ti.name,
           ti.offset, ti.nbytes);
    ti.data = data + data_offset_ + ti.offset;
  }
  // Overlapping tensors are a corrupt (or hostile) file.
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& ti : tensors_) by_offset.push_back(&ti);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const auto* prev = by_offset[k - 1];
    if (prev->offset + prev->nbytes > by_offset[k]->offset)
      fail("{}: tensors '{}' and '{}' overlap", name_, prev->name, by_offset[k]->name);
  }
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: missing metadata key '{}'", name_, key);
  return *v;
}

// Wrap accessor errors so they name the file and key.
template <class F>
static auto keyed(const std::string& file, const std::string& key, F&& f) {
  try {
    return f();
  } catch (const Error& e) {
    fail("{}: metadata key '{}': {}", file, key, e.what());
  }
}

std::string GgufFile::get_str(const std::string& key) const {
  return keyed(name_, key, [&] { return get(key).as_str(); });
}
std::string GgufFile::get_str(const std::string& key, const std::string& def) const {
  return has(key) ? get_str(key) : def;
}
int64_t GgufFile::get_int(const std::string& key) const {
  return keyed(name_, key, [&] { return get(key).as_int(); });
}
int64_t GgufFile::get_int(const std::string& key, int64_t def) const { return has(key) ? get_int(key) : def; }
double GgufFile::get_float(const std::string& key) const {
  return keyed(name_, key, [&] { return get(key).as_float(); });
}
double GgufFile::get_float(const std::string& key, double def) const { return has(key) ? get_float(key) : def; }
bool GgufFile::get_bool(const std::string& key, bool def) const {
  return has(key) ? keyed(name_, key, [&] { return get(key).as_int() != 0; }) : def;
}

std::vector<std::string> GgufFile::get_strings(const std::string& key) const {
  return keyed(name_, key, [&] {
    const GgufValue& v = get(key);
    if (v.type != GgufType::ARRAY || v.elem != GgufType::STRING) fail("expected an array of strings");
    std::vector<std::string> out;
    out.reserve(v.arr.size());
    for (const auto& e : v.arr) out.push_back(e.str);
    return out;
  });
}

std::vector<float> GgufFile::get_floats(const std::string& key) const {
  return keyed(name_, key, [&] {
    const GgufValue& v = get(key);
    if (v.type != GgufType::ARRAY) fail("expected an array");
    std::vector<float> out;
    out.reserve(v.arr.size());
    for (const auto& e : v.arr) out.push_back(float(e.as_float()));
    return out;
  });
}

std::vector<int64_t> GgufFile::get_ints(const std::string& key) const {
  return keyed(name_, key, [&] {
    const GgufValue& v = get(key);
    if (v.type != GgufType::ARRAY) fail("expected an array");
    std::vector<int64_t> out;
    out.reserve(v.arr.size());
    for (const auto& e : v.arr) out.push_back(e.as_int());
    return out;
  });
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) fail("{}: missing tensor '{}'", name_, name);
  return *t;
}

}  // namespace primal
