#include "io/gguf_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include "core/error.h"

namespace primal {
namespace {

constexpr size_t kMaxName = 63;  // GGML_MAX_NAME - 1: ggml refuses longer tensor names
constexpr size_t kMaxDims = 4;   // GGML_MAX_DIMS

size_t pad_to(size_t n, size_t align) { return (n + align - 1) / align * align; }

// A FILE* that checks every write and counts bytes; errors name the final path.
class Out {
 public:
  Out(std::FILE* f, const std::string& path) : f_(f), path_(path) {}
  void bytes(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n) fail("{}: write failed: {}", path_, std::strerror(errno));
    pos_ += n;
  }
  template <class T>
  void pod(T v) { bytes(&v, sizeof v); }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void zeros(size_t n) {
    static const uint8_t z[64] = {};
    while (n) {
      const size_t k = n < sizeof z ? n : sizeof z;
      bytes(z, k);
      n -= k;
    }
  }
  size_t pos() const { return pos_; }

 private:
  std::FILE* f_;
  const std::string& path_;
  size_t pos_ = 0;
};

void write_value(Out& o, const GgufValue& v, const std::string& key, const std::string& path) {
  switch (v.type) {
    case GgufType::UINT8: o.pod<uint8_t>(uint8_t(v.u)); break;
    case GgufType::INT8: o.pod<int8_t>(int8_t(v.i)); break;
    case GgufType::UINT16: o.pod<uint16_t>(uint16_t(v.u)); break;
    case GgufType::INT16: o.pod<int16_t>(int16_t(v.i)); break;
    case GgufType::UINT32: o.pod<uint32_t>(uint32_t(v.u)); break;
    case GgufType::INT32: o.pod<int32_t>(int32_t(v.i)); break;
    case GgufType::UINT64: o.pod<uint64_t>(v.u); break;
    case GgufType::INT64: o.pod<int64_t>(v.i); break;
    case GgufType::FLOAT32: o.pod<float>(float(v.f)); break;
    case GgufType::FLOAT64: o.pod<double>(v.f); break;
    case GgufType::BOOL: o.pod<uint8_t>(v.u ? 1 : 0); break;
    case GgufType::STRING: o.str(v.str); break;
    case GgufType::ARRAY:
      o.pod<uint32_t>(uint32_t(v.elem));
      o.pod<uint64_t>(v.arr.size());
      for (const auto& e : v.arr) {
        if (e.type != v.elem)
          fail("{}: key '{}': array of {} holds an element of type {}", path, key, gguf_type_name(v.elem),
               gguf_type_name(e.type));
        write_value(o, e, key, path);
      }
      break;
    default: fail("{}: key '{}' has an unknown value type {}", path, key, uint32_t(v.type));
  }
}

// Checks a value before anything is written (so a bad value never leaves a partial temp file).
void check_value(const GgufValue& v, const std::string& key, int depth) {
  if (uint32_t(v.type) > uint32_t(GgufType::FLOAT64)) fail("metadata key '{}': unknown value type {}", key, uint32_t(v.type));
  if (v.type != GgufType::ARRAY) return;
  if (depth >= 8) fail("metadata key '{}': arrays nested deeper than 8", key);
  for (const auto& e : v.arr) {
    if (e.type != v.elem)
      fail("metadata key '{}': array of {} holds an element of type {}", key, gguf_type_name(v.elem),
           gguf_type_name(e.type));
    check_value(e, key, depth + 1);
  }
}

}  // namespace

void GgufWriter::add_kv(const std::string& key, GgufValue v) {
  for (const auto& [k, _] : kv_)
    if (k == key) fail("GGUF writer: duplicate metadata key '{}'", key);
  check_value(v, key, 0);
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::set_kv(const std::string& key, GgufValue v) {
  check_value(v, key, 0);
  for (auto& [k, old] : kv_)
    if (k == key) {
      old = std::move(v);
      return;
    }
  kv_.emplace_back(key, std::move(v));
}

void GgufWriter::add_tensor(const std::string& name, DType type, std::vector<int64_t> ne, Producer produce) {
  if (name.empty() || name.size() > kMaxName)
    fail("GGUF writer: tensor name '{}' must have 1 to {} characters", name, kMaxName);
  for (const auto& t : tensors_)
    if (t.name == name) fail("GGUF writer: duplicate tensor '{}'", name);
  if (ne.empty() || ne.size() > kMaxDims) fail("GGUF writer: tensor '{}' has {} dimensions (1 to {})", name, ne.size(), kMaxDims);
  int64_t nel = 1;
  for (int64_t d : ne) {
    if (d <= 0 || d > (int64_t(1) << 40) || nel > (int64_t(1) << 50) / d)
      fail("GGUF writer: tensor '{}' has an invalid dimension {}", name, d);
    nel *= d;
  }
  const size_t row = row_bytes(type, ne[0]);  // throws for a row that is not whole blocks
  const size_t nbytes = row * size_t(nel / ne[0]);
  tensors_.push_back(Tensor{name, type, std::move(ne), nbytes, std::move(produce)});
}

void GgufWriter::add_tensor(const std::string& name, DType type, std::vector<int64_t> ne, const void* data,
                            size_t nbytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  add_tensor(name, type, std::move(ne), [p, nbytes, name](uint8_t* dst, size_t n) {
    if (n != nbytes) fail("GGUF writer: tensor '{}' has {} bytes but its type and shape need {}", name, nbytes, n);
    std::memcpy(dst, p, n);
  });
}

uint32_t GgufWriter::effective_alignment() const {
  for (const auto& [k, v] : kv_)
    if (k == "general.alignment") {
      if (v.type != GgufType::UINT32 || v.u == 0 || (v.u & (v.u - 1)) != 0)
        fail("GGUF writer: general.alignment must be a u32 power of two");
      return uint32_t(v.u);
    }
  if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
    fail("GGUF writer: alignment {} is not a power of two", alignment_);
  return alignment_;
}

void GgufWriter::write(const std::string& path, const Progress& progress) const {
  const size_t align = effective_alignment();
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) fail("{}: cannot create a temporary file beside it: {}", path, std::strerror(errno));
  // mkstemp creates 0600; give the file the permissions an ordinary create would.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);
  std::FILE* f = ::fdopen(fd, "wb");
  if (!f) {
    ::close(fd);
    ::unlink(tmp.c_str());
    fail("{}: cannot open the temporary file: {}", path, std::strerror(errno));
  }
  std::vector<char> iobuf(size_t(1) << 20);  // outlives every fclose below
  std::setvbuf(f, iobuf.data(), _IOFBF, iobuf.size());
  try {
    Out o(f, path);
    o.bytes("GGUF", 4);
    o.pod<uint32_t>(3);
    o.pod<uint64_t>(tensors_.size());
    o.pod<uint64_t>(kv_.size());
    for (const auto& [k, v] : kv_) {
      o.str(k);
      o.pod<uint32_t>(uint32_t(v.type));
      write_value(o, v, k, path);
    }
    size_t offset = 0;
    for (const auto& t : tensors_) {
      o.str(t.name);
      o.pod<uint32_t>(uint32_t(t.ne.size()));
      for (int64_t d : t.ne) o.pod<uint64_t>(uint64_t(d));
      o.pod<uint32_t>(uint32_t(t.type));
      o.pod<uint64_t>(offset);
      offset += pad_to(t.nbytes, align);
    }
    o.zeros(pad_to(o.pos(), align) - o.pos());
    std::vector<uint8_t> buf;
    for (size_t k = 0; k < tensors_.size(); ++k) {
      const auto& t = tensors_[k];
      buf.assign(t.nbytes, 0);
      t.produce(buf.data(), t.nbytes);
      o.bytes(buf.data(), t.nbytes);
      o.zeros(pad_to(t.nbytes, align) - t.nbytes);
      if (progress) progress(k, tensors_.size(), t.name);
    }
    if (std::fflush(f) != 0 || ::fsync(fd) != 0) fail("{}: write failed: {}", path, std::strerror(errno));
    const int rc = std::fclose(f);
    f = nullptr;
    if (rc != 0) fail("{}: write failed: {}", path, std::strerror(errno));
    if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("{}: cannot rename the finished file into place: {}", path, std::strerror(errno));
  } catch (...) {
    if (f) std::fclose(f);
    ::unlink(tmp.c_str());
    throw;
  }
}

void copy_gguf(const GgufFile& f, GgufWriter& w) {
  for (const auto& [k, v] : f.kv()) w.add_kv(k, v);
  for (const auto& t : f.tensors()) w.add_tensor(t.name, t.type, t.ne, t.data, t.nbytes);
}

}  // namespace primal
