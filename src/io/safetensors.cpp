#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace primal {
namespace {

using json = nlohmann::json;

// The safetensors library refuses headers above 100 MB; a real header is a few hundred KB at most.
constexpr uint64_t kMaxHeader = uint64_t(100) << 20;
constexpr size_t kMaxDims = 8;
constexpr int64_t kMaxElements = int64_t(1) << 48;  // far above any real tensor, far below overflow

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t k = 0; k < s.size(); ++k) out += (k ? ", " : "") + std::to_string(s[k]);
  return out + "]";
}

std::optional<DType> dtype_of(const std::string& s) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "F64") return DType::F64;
  if (s == "I8") return DType::I8;
  if (s == "I16") return DType::I16;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  return std::nullopt;
}

// Parse JSON text, refusing duplicate keys in the top-level object (nlohmann would keep the last
// one silently, and two tensors of one name would make the file ambiguous).
json parse_json_object(const char* begin, const char* end, const std::string& name, const char* what) {
  std::string dup;
  std::set<std::string> seen;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && dup.empty()) dup = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON {}: {}", name, what, e.what());
  }
  if (!j.is_object()) fail("{}: the JSON {} is not an object", name, what);
  if (!dup.empty()) fail("{}: the JSON {} has the key '{}' twice", name, what, dup);
  return j;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

size_t safetensors_dtype_size(const std::string& s) {
  if (s == "BOOL" || s == "U8" || s == "I8" || s == "F8_E4M3" || s == "F8_E5M2") return 1;
  if (s == "I16" || s == "U16" || s == "F16" || s == "BF16") return 2;
  if (s == "I32" || s == "U32" || s == "F32") return 4;
  if (s == "I64" || s == "U64" || s == "F64") return 8;
  return 0;
}

int64_t SafetensorsTensor::nelements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

DType SafetensorsTensor::weight_type() const {
  if (type && (*type == DType::F32 || *type == DType::F16 || *type == DType::BF16)) return *type;
  fail("{}: tensor '{}' has dtype {}, which cannot be used as a weight (F32, F16 or BF16)", file, name, dtype);
}

// ---- SafetensorsFile ----------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path)
    : map_(std::make_unique<MappedFile>(path)), name_(path) {
  parse(map_->data(), map_->size());
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::from_buffer(const uint8_t* data, size_t size, std::string name) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->name_ = std::move(name);
  f->parse(data, size);
  return f;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::parse(const uint8_t* data, size_t size) {
  size_ = size;
  if (size < 8)
    fail("{}: truncated file: {} bytes, but a safetensors file starts with an 8-byte header length", name_, size);
  uint64_t n;
  std::memcpy(&n, data, 8);
  if (n > kMaxHeader) fail("{}: header length {} is absurd (at most {}); not a safetensors file?", name_, n, kMaxHeader);
  if (n > size - 8)
    fail("{}: header length {} extends past the end of the file ({} bytes; truncated?)", name_, n, size);
  if (n < 2) fail("{}: header length {} is too short for a JSON object", name_, n);
  header_size_ = n;
  const char* hb = reinterpret_cast<const char*>(data + 8);
  const json header = parse_json_object(hb, hb + n, name_, "header");

  const uint64_t data_size = size - 8 - n;
  for (const auto& [key, v] : header.items()) {
    if (key == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ is not an object", name_);
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) fail("{}: __metadata__ value of '{}' is not a string", name_, mk);
        metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    SafetensorsTensor t;
    t.name = key;
    t.file = name_;
    if (!v.is_object()) fail("{}: tensor '{}': header entry is not an object", name_, key);
    if (!v.contains("dtype") || !v["dtype"].is_string()) fail("{}: tensor '{}': missing or bad 'dtype'", name_, key);
    t.dtype = v["dtype"].get<std::string>();
    const size_t esize = safetensors_dtype_size(t.dtype);
    if (esize == 0) fail("{}: tensor '{}': unknown dtype '{}'", name_, key, t.dtype);
    t.type = dtype_of(t.dtype);

    if (!v.contains("shape") || !v["shape"].is_array()) fail("{}: tensor '{}': missing or bad 'shape'", name_, key);
    const json& shape = v["shape"];
    if (shape.size() > kMaxDims) fail("{}: tensor '{}' has {} dimensions (at most {})", name_, key, shape.size(), kMaxDims);
    int64_t nel = 1;
    for (const json& d : shape) {
      if (!d.is_number_unsigned()) fail("{}: tensor '{}': shape entry {} is not a non-negative integer", name_, key, d.dump());
      const uint64_t dim = d.get<uint64_t>();
      if (dim > uint64_t(kMaxElements) || (dim > 0 && nel > kMaxElements / int64_t(dim)))
        fail("{}: tensor '{}' has an absurd shape {}", name_, key, shape.dump());
      nel *= int64_t(dim);
      t.shape.push_back(int64_t(dim));
    }

    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2 ||
        !v["data_offsets"][0].is_number_unsigned() || !v["data_offsets"][1].is_number_unsigned())
      fail("{}: tensor '{}': 'data_offsets' must be two non-negative integers", name_, key);
    t.begin = v["data_offsets"][0].get<uint64_t>();
    t.end = v["data_offsets"][1].get<uint64_t>();
    if (t.begin > t.end)
      fail("{}: tensor '{}': data_offsets [{}, {}] are out of order", name_, key, t.begin, t.end);
    if (t.end > data_size)
      fail("{}: tensor '{}': data_offsets [{}, {}] extend past the end of the data section ({} bytes; truncated?)",
           name_, key, t.begin, t.end, data_size);
    const uint64_t want = uint64_t(nel) * esize;
    if (want != t.end - t.begin)
      fail("{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}", name_, key,
           shape_str(t.shape), t.dtype, want, t.begin, t.end, t.end - t.begin);
    t.nbytes = size_t(t.end - t.begin);
    t.data = data + 8 + n + t.begin;
    tensors_.push_back(std::move(t));
  }

  // Overlapping byte ranges are a corrupt (or hostile) file. Empty tensors overlap nothing.
  std::vector<const SafetensorsTensor*> by_offset;
  for (const auto& t : tensors_)
    if (t.nbytes > 0) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k - 1]->end > by_offset[k]->begin)
      fail("{}: tensors '{}' and '{}' overlap (bytes [{}, {}) and [{}, {}))", name_, by_offset[k - 1]->name,
           by_offset[k]->name, by_offset[k - 1]->begin, by_offset[k - 1]->end, by_offset[k]->begin,
           by_offset[k]->end);

  std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t k = 0; k < tensors_.size(); ++k) index_[tensors_[k].name] = k;
}

// ---- SafetensorsModel ---------------------------------------------------------------------

SafetensorsModel::SafetensorsModel(const std::string& path) : path_(path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    if (!fs::exists(path, ec)) fail("{}: no such file or folder", path);
    add_file(path);
    index_tensors("", nullptr);
    return;
  }
  const fs::path dir(path);
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index, ec)) {
    const std::string ip = index.string();
    const std::string text = slurp(ip);
    const json j = parse_json_object(text.data(), text.data() + text.size(), ip, "index");
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) fail("{}: missing or bad 'weight_map'", ip);
    std::map<std::string, std::string> weight_map;
    std::set<std::string> shards;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail("{}: weight_map entry '{}' is not a file name", ip, name);
      const std::string f = file.get<std::string>();
      // Shards live beside the index: a path that leaves the folder is refused.
      if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos || f.find('\\') != std::string::npos)
        fail("{}: weight_map entry '{}' names the file '{}', which is not a plain file name", ip, name, f);
      weight_map[name] = f;
      shards.insert(f);
    }
    if (weight_map.empty()) fail("{}: weight_map is empty", ip);
    for (const auto& s : shards) add_file((dir / s).string());
    index_tensors(ip, &weight_map);
    return;
  }
  if (fs::exists(dir / "model.safetensors", ec)) {
    add_file((dir / "model.safetensors").string());
  } else {
    std::vector<std::string> found;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".safetensors") found.push_back(e.path().string());
    std::sort(found.begin(), found.end());
    if (found.empty()) fail("{}: no model.safetensors.index.json and no *.safetensors file in this folder", path);
    for (const auto& f : found) add_file(f);
  }
  index_tensors("", nullptr);
}

void SafetensorsModel::add_file(const std::string& file) {
  files_.push_back(std::make_shared<SafetensorsFile>(file));
}

void SafetensorsModel::index_tensors(const std::string& ip, const std::map<std::string, std::string>* weight_map) {
  namespace fs = std::filesystem;
  for (const auto& f : files_) {
    for (const auto& t : f->tensors()) {
      auto [it, inserted] = by_name_.emplace(t.name, &t);
      if (!inserted) fail("{}: tensor '{}' appears in both {} and {}", path_, t.name, it->second->file, t.file);
      if (weight_map) {
        auto w = weight_map->find(t.name);
        if (w == weight_map->end()) fail("{}: tensor '{}' of {} is not listed in the weight_map", ip, t.name, t.file);
        if (fs::path(t.file).filename() != w->second)
          fail("{}: tensor '{}' is listed in {} but found in {}", ip, t.name, w->second, t.file);
      }
    }
  }
  if (weight_map)
    for (const auto& [name, file] : *weight_map)
      if (!by_name_.count(name)) fail("{}: tensor '{}' is listed in {} but that shard does not hold it", ip, name, file);
  for (const auto& [name, t] : by_name_) tensors_.push_back(t);
}

const SafetensorsTensor* SafetensorsModel::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const SafetensorsTensor& SafetensorsModel::tensor(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  if (!t) fail("{}: missing tensor '{}'", path_, name);
  return *t;
}

}  // namespace primal
