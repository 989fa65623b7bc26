#include "train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <memory>

#include "core/error.h"

namespace primal::train {
namespace {

constexpr uint32_t kCheckpointVersion = 1;

template <class T>
void add_array(GgufWriter& w, const std::string& name, DType t, std::vector<int64_t> ne, const std::vector<T>& v) {
  w.add_tensor(name, t, std::move(ne), v.data(), v.size() * sizeof(T));
}

const GgufTensorInfo& need(const GgufFile& f, const std::string& name, DType t, size_t n) {
  const GgufTensorInfo& x = f.tensor(name);
  PRIMAL_CHECK(x.type == t && size_t(x.nelements()) == n, "{}: checkpoint tensor '{}' is not {} x {}", f.path(), name,
               n, dtype_name(t));
  return x;
}

template <class T>
void load_array(const GgufFile& f, const std::string& name, DType t, std::vector<T>& v) {
  const GgufTensorInfo& x = need(f, name, t, v.size());
  std::memcpy(v.data(), x.data, v.size() * sizeof(T));
}

}  // namespace

void write_checkpoint(const std::string& path, const TrainModel& m, const VoteEngine& votes, const AdamW& adam,
                      const TrainState& st, const KvList& tokenizer_kv) {
  GgufWriter w;
  SaveOptions so;
  so.dense_type = DType::F32;
  add_model(w, m, tokenizer_kv, so);
  w.add_kv("primal.train.version", GgufValue::u32(kCheckpointVersion));
  w.add_kv("primal.train.step", GgufValue::i64(st.step));
  w.add_kv("primal.train.tokens", GgufValue::u64(st.tokens));
  w.add_kv("primal.train.data.epoch", GgufValue::u64(st.data.epoch));
  w.add_kv("primal.train.data.doc", GgufValue::u64(st.data.doc));
  w.add_kv("primal.train.data.offset", GgufValue::u64(st.data.offset));
  w.add_kv("primal.train.seconds", GgufValue::f64(st.seconds));
  w.add_kv("primal.train.governor.lr_mult", GgufValue::f64(votes.governor().lr_mult));
  w.add_kv("primal.train.governor.sensitivity", GgufValue::f64(votes.governor().sensitivity));
  w.add_kv("primal.train.governor.reactions", GgufValue::i64(votes.governor().reactions));
  w.add_kv("primal.train.config", GgufValue::string(st.config_json));

  // Everything below is kept alive by the writer's producers until write() returns.
  auto events = std::make_shared<std::vector<int64_t>>();
  for (const LutVotes& s : votes.states()) {
    const Matrix& mt = *s.m;
    const LutWeight& L = *mt.lut;
    add_array(w, "train.scale." + mt.name, DType::F32, {L.groups(), L.O}, L.scale);
    if (!s.v8.empty()) add_array(w, "train.votes." + mt.name, DType::I8, {mt.I, mt.O}, s.v8);
    else add_array(w, "train.votes." + mt.name, DType::I16, {mt.I, mt.O}, s.v16);
    if (!s.cool.empty()) add_array(w, "train.cool." + mt.name, DType::I8, {mt.I, mt.O}, s.cool);
    if (!s.row_sq.empty()) {
      add_array(w, "train.row_sq." + mt.name, DType::F32, {mt.O}, s.row_sq);
      add_array(w, "train.col_sq." + mt.name, DType::F32, {mt.I}, s.col_sq);
    }
    events->push_back(s.events);
  }
  if (!events->empty())
    w.add_tensor("train.vote_events", DType::I64, {int64_t(events->size())},
                 [events](uint8_t* dst, size_t n) { std::memcpy(dst, events->data(), n); });
  auto steps = std::make_shared<std::vector<int64_t>>();
  for (const FloatParam& p : adam.params()) {
    add_array(w, "train.adam_m." + p.name, DType::F32, {int64_t(p.n)}, p.m);
    add_array(w, "train.adam_v." + p.name, DType::F32, {int64_t(p.n)}, p.v);
    steps->push_back(p.t);
  }
  if (!steps->empty())
    w.add_tensor("train.adam_t", DType::I64, {int64_t(steps->size())},
                 [steps](uint8_t* dst, size_t n) { std::memcpy(dst, steps->data(), n); });
  w.write(path);
}

TrainState read_checkpoint_state(const GgufFile& f) {
  PRIMAL_CHECK(f.has("primal.train.version"), "{}: not a primal training checkpoint", f.path());
  const int64_t v = f.get_int("primal.train.version");
  PRIMAL_CHECK(v == kCheckpointVersion, "{}: checkpoint format {} (this build reads {})", f.path(), v,
               kCheckpointVersion);
  TrainState st;
  st.step = f.get_int("primal.train.step");
  st.tokens = uint64_t(f.get_int("primal.train.tokens"));
  st.data.epoch = uint64_t(f.get_int("primal.train.data.epoch"));
  st.data.doc = uint64_t(f.get_int("primal.train.data.doc"));
  st.data.offset = uint64_t(f.get_int("primal.train.data.offset"));
  st.seconds = f.get_float("primal.train.seconds", 0.0);
  st.config_json = f.get_str("primal.train.config");
  return st;
}

void restore_scales(const GgufFile& f, TrainModel& m) {
  for (Matrix* mt : m.lut_matrices()) load_array(f, "train.scale." + mt->name, DType::F32, mt->lut->scale);
}

void restore_votes(const GgufFile& f, VoteEngine& votes) {
  Governor& g = votes.governor();
  g.lr_mult = f.get_float("primal.train.governor.lr_mult");
  g.sensitivity = f.get_float("primal.train.governor.sensitivity");
  g.reactions = f.get_int("primal.train.governor.reactions");
  auto& st = votes.states();
  std::vector<int64_t> events(st.size());
  if (!st.empty()) load_array(f, "train.vote_events", DType::I64, events);
  for (size_t k = 0; k < st.size(); ++k) {
    LutVotes& s = st[k];
    const std::string& n = s.m->name;
    if (!s.v8.empty()) load_array(f, "train.votes." + n, DType::I8, s.v8);
    else load_array(f, "train.votes." + n, DType::I16, s.v16);
    if (!s.cool.empty()) load_array(f, "train.cool." + n, DType::I8, s.cool);
    if (!s.row_sq.empty()) {
      load_array(f, "train.row_sq." + n, DType::F32, s.row_sq);
      load_array(f, "train.col_sq." + n, DType::F32, s.col_sq);
    }
    s.events = events[k];
  }
  votes.refresh();
}

void restore_adam(const GgufFile& f, AdamW& adam) {
  auto& ps = adam.params();
  std::vector<int64_t> t(ps.size());
  if (!ps.empty()) load_array(f, "train.adam_t", DType::I64, t);
  for (size_t k = 0; k < ps.size(); ++k) {
    load_array(f, "train.adam_m." + ps[k].name, DType::F32, ps[k].m);
    load_array(f, "train.adam_v." + ps[k].name, DType::F32, ps[k].v);
    ps[k].t = t[k];
  }
}

void remove_stale_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const std::string prefix = p.filename().string() + ".tmp.";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(p.parent_path().empty() ? "." : p.parent_path(), ec))
    if (e.path().filename().string().rfind(prefix, 0) == 0) fs::remove(e.path(), ec);
}

}  // namespace primal::train
