#include "quant/lut_mixed.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "infer/kv_cache.h"
#include "io/model_source.h"
#include "model/forward.h"
#include "model/weights.h"
#include "quant/lut_format.h"
#include "quant/lut_pack.h"
#include "quant/lut_quantize.h"

namespace primal {
namespace {

// Where the forward reads matrix `name` (every slot that holds it: a tied head shares the
// embedding's).
std::vector<const TensorRef**> weight_slots(LlamaWeights& w, const std::string& name) {
  std::vector<const TensorRef**> s;
  if (name == "token_embd.weight") {
    s.push_back(&w.tok_embd);
    if (w.output == w.tok_embd) s.push_back(&w.output);
  } else if (name == "output.weight") {
    s.push_back(&w.output);
  } else if (name.rfind("blk.", 0) == 0) {
    const size_t dot = name.find('.', 4);
    const int64_t l = std::stoll(name.substr(4, dot - 4));
    PRIMAL_CHECK(l >= 0 && l < int64_t(w.layers.size()), "mixed precision: no layer {} for '{}'", l, name);
    LayerWeights& lw = w.layers[size_t(l)];
    const std::string what = name.substr(dot + 1);
    if (what == "attn_q.weight") s.push_back(&lw.wq);
    if (what == "attn_k.weight") s.push_back(&lw.wk);
    if (what == "attn_v.weight") s.push_back(&lw.wv);
    if (what == "attn_output.weight") s.push_back(&lw.wo);
    if (what == "ffn_gate.weight") s.push_back(&lw.w_gate);
    if (what == "ffn_up.weight") s.push_back(&lw.w_up);
    if (what == "ffn_down.weight") s.push_back(&lw.w_down);
  }
  PRIMAL_CHECK(!s.empty(), "mixed precision: the forward pass does not read '{}'", name);
  return s;
}

// log-softmax of each of `rows` rows of V logits, in place.
void log_softmax(float* x, int64_t rows, int64_t V) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* v = x + r * V;
    float mx = v[0];
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, v[i]);
    double sum = 0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(double(v[i] - mx));
    const float lse = mx + float(std::log(sum));
    for (int64_t i = 0; i < V; ++i) v[i] -= lse;
  }
}

// The model's log-probabilities on the windows, all positions, (sum of T, V).
std::vector<float> run_logprobs(const LlamaWeights& w, const std::vector<std::vector<int32_t>>& windows) {
  const int64_t V = w.hp.n_vocab;
  int64_t n = 0, cap = 0;
  for (const auto& win : windows) cap = std::max<int64_t>(cap, int64_t(win.size())), n += int64_t(win.size());
  std::vector<float> lp(size_t(n * V));
  KVCache cache = make_kv_cache(w, cap);
  int64_t at = 0;
  for (const auto& win : windows) {
    const int64_t T = int64_t(win.size());
    cache.clear();
    llama_forward(w, cache, win.data(), T, T, lp.data() + at * V);
    at += T;
  }
  log_softmax(lp.data(), n, V);
  return lp;
}

// Mean over positions of KL(ref || q), both given as log-probabilities.
double mean_kl(const std::vector<float>& ref, const std::vector<float>& q, int64_t V) {
  const int64_t n = int64_t(ref.size()) / V;
  double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t r = 0; r < n; ++r) {
    double kl = 0;
    for (int64_t i = r * V; i < (r + 1) * V; ++i) kl += std::exp(double(ref[size_t(i)])) * double(ref[size_t(i)] - q[size_t(i)]);
    total += kl;
  }
  return total / double(n);
}

// "LUT4" or, when several groups are tried, "LUT4/G64" (the log rows).
std::string candidate_label(const MixedCandidate& c, bool with_group) {
  return with_group ? fmt::format("{}/G{}", dtype_name(c.type), c.group) : dtype_name(c.type);
}

// " LUT2:3.98e-01 LUT3:6.84e-02 ...": a matrix's measured KL per candidate.
std::string kl_row(const std::vector<MixedCandidate>& cands, bool with_group) {
  std::string row;
  for (const auto& c : cands) row += fmt::format(" {}:{:.2e}", candidate_label(c, with_group), c.kl);
  return row;
}

// What the measured KLs depend on; a cache file with another key is not used. The weights are
// identified by a checksum of their bytes (an HF folder is read through a temporary GGUF whose
// name changes every run).
std::string cache_key(const ModelSource& src, const CalibStats& stats, const MixedOptions& o) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over every tensor's name and bytes
  for (const auto& t : src.tensors()) {
    for (char ch : t.name) h = (h ^ uint8_t(ch)) * 1099511628211ull;
    for (size_t i = 0; i < t.nbytes; ++i) h = (h ^ t.data[i]) * 1099511628211ull;
  }
  return fmt::format("weights {:016x} grid {} act-aware {} gptq {} calib {} tokens {} ctx {} windows {} kl-tokens {}",
                     h, grid_name(o.base.grid), o.base.act_aware, o.base.gptq,
                     std::filesystem::path(o.base.calib).filename().string(), o.base.calib_tokens, o.base.calib_ctx,
                     stats.windows.size(), o.kl_tokens);
}

std::string cache_entry(const std::string& name, DType t, int64_t group) {
  return fmt::format("{}|{}|{}", name, dtype_name(t), group);
}

nlohmann::json read_cache(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  if (!f) return nlohmann::json::object();
  try {
    auto j = nlohmann::json::parse(f);
    if (j.value("key", "") == key && j.contains("kl") && j["kl"].is_object()) return j["kl"];
  } catch (const nlohmann::json::exception&) {
  }
  return nlohmann::json::object();  // unreadable or measured under other options: measured anew
}

void write_cache(const std::string& path, const std::string& key, const nlohmann::json& kl) {
  write_file_atomic(path, nlohmann::json{{"key", key}, {"kl", kl}}.dump(1) + "\n");
}

}  // namespace

std::vector<std::vector<MixedCandidate>> measure_sensitivity(const ModelSource& src,
                                                             const std::vector<LutTensorPlan>& plan,
                                                             const CalibStats& stats, const MixedOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.base.log) o.base.log(s);
  };
  PRIMAL_CHECK(!stats.windows.empty(), "mixed precision: no calibration windows");
  LlamaWeights w = load_weights(src);
  // The KL windows: the first calibration windows, up to o.kl_tokens tokens.
  std::vector<std::vector<int32_t>> windows;
  int64_t n = 0;
  for (const auto& win : stats.windows) {
    if (n >= o.kl_tokens) break;
    windows.push_back(std::vector<int32_t>(win.begin(), win.begin() + ptrdiff_t(std::min<int64_t>(int64_t(win.size()), o.kl_tokens - n))));
    n += int64_t(windows.back().size());
  }
  const std::string key = o.cache.empty() ? std::string() : cache_key(src, stats, o);  // hashes every weight byte
  nlohmann::json cached = o.cache.empty() ? nlohmann::json::object() : read_cache(o.cache, key);
  if (!o.cache.empty() && !cached.empty()) log(fmt::format("  sensitivity: {} measured values from {}", cached.size(), o.cache));
  std::vector<float> ref;  // the float model's log-probabilities, computed when first needed
  const bool learned = o.base.grid == GridKind::Learned;
  std::vector<std::vector<MixedCandidate>> out;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t k = 0; k < plan.size(); ++k) {
    const LutTensorPlan& p = plan[k];
    const auto slots = weight_slots(w, p.name);
    const TensorRef* orig = *slots[0];
    std::vector<MixedCandidate> c;
    for (int64_t g : o.groups.empty() ? std::vector<int64_t>{p.group} : o.groups) {
      if (g <= 0 || p.ne0 % g != 0) continue;
      for (DType b : o.widths) {
        LutTensorPlan q = p;
        q.type = b;
        q.group = g;
        const std::string e = cache_entry(p.name, b, g);
        if (cached.contains(e) && cached[e].is_number()) {
          c.push_back({b, lut_tensor_bits(q, learned), cached[e].get<double>(), g});
          continue;
        }
        if (ref.empty()) ref = run_logprobs(w, windows);
        const auto packed = pack_lut_matrix(p.name, quantize_planned(*orig, q, o.base, &stats));
        LlamaWeights wq = w;
        for (auto* s : weight_slots(wq, p.name)) *s = &packed->ref;
        c.push_back({b, lut_tensor_bits(q, learned), mean_kl(ref, run_logprobs(wq, windows), w.hp.n_vocab), g});
        cached[e] = c.back().kl;
      }
    }
    PRIMAL_CHECK(!c.empty(), "mixed precision: no scale group of the list divides the rows of {} ({} weights)", p.name,
                 p.ne0);
    const std::string row = kl_row(c, o.groups.size() > 1);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log(fmt::format("  sensitivity [{}/{}] {:<28} KL{} ({:.0f} s)", k + 1, plan.size(), p.name, row, secs));
    if (!o.cache.empty()) write_cache(o.cache, key, cached);
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<size_t> allocate_bits(const std::vector<std::vector<MixedCandidate>>& cands, double fixed_bits,
                                  double budget_total_bits) {
  std::vector<size_t> pick(cands.size(), 0);
  double total = fixed_bits;
  for (size_t t = 0; t < cands.size(); ++t) {
    PRIMAL_CHECK(!cands[t].empty(), "mixed precision: matrix {} has no candidate width", t);
    // Start at the narrowest candidate.
    for (size_t k = 1; k < cands[t].size(); ++k)
      if (cands[t][k].bits < cands[t][pick[t]].bits) pick[t] = k;
    total += cands[t][pick[t]].bits;
  }
  PRIMAL_CHECK(total <= budget_total_bits,
               "mixed precision: even the narrowest widths need {:.0f} bits, over the budget of {:.0f}", total,
               budget_total_bits);
  for (;;) {
    // The upgrade with the largest KL reduction per added bit that fits.
    double best_rate = 0;
    size_t bt = cands.size(), bk = 0;
    for (size_t t = 0; t < cands.size(); ++t) {
      const MixedCandidate& cur = cands[t][pick[t]];
      for (size_t k = 0; k < cands[t].size(); ++k) {
        const MixedCandidate& c = cands[t][k];
        const double add = c.bits - cur.bits, gain = cur.kl - c.kl;
        if (add <= 0 || gain <= 0 || total + add > budget_total_bits) continue;
        if (gain / add > best_rate) best_rate = gain / add, bt = t, bk = k;
      }
    }
    if (bt == cands.size()) break;
    total += cands[bt][bk].bits - cands[bt][pick[bt]].bits;
    pick[bt] = bk;
  }
  return pick;
}

std::vector<LutTensorPlan> plan_mixed_precision(const ModelSource& src, const std::vector<LutTensorPlan>& plan,
                                                const CalibStats& stats, const MixedOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.base.log) o.base.log(s);
  };
  if (o.groups.empty()) {
    for (DType t : o.widths) check_lut_shape(t, plan.front().ne0, plan.front().group, "mixed precision");
    for (const auto& p : plan)
      for (DType t : o.widths) check_lut_shape(t, p.ne0, p.group, src.path() + ": tensor '" + p.name + "'");
  }
  // Bits outside the matrices: every other tensor as stored, plus the shared grids.
  int64_t params = 0;
  double fixed = 0;
  for (const auto& t : src.tensors()) {
    params += t.nelements();
    bool planned = false;
    for (const auto& p : plan) planned = planned || p.name == t.name;
    if (!planned) fixed += 8.0 * double(t.nbytes);
  }
  const bool learned = o.base.grid == GridKind::Learned;
  if (!learned)
    for (DType t : o.widths) fixed += 32.0 * double(lut_entries(t));
  const auto cands = measure_sensitivity(src, plan, stats, o);
  const auto pick = allocate_bits(cands, fixed, o.budget_bits * double(params));
  std::vector<LutTensorPlan> out = plan;
  double total = fixed, kl = 0;
  log(fmt::format("mixed precision: {:.2f} bits per weight budget over {} parameters", o.budget_bits, params));
  for (size_t t = 0; t < plan.size(); ++t) {
    const MixedCandidate& c = cands[t][pick[t]];
    out[t].type = c.type;
    if (c.group > 0) out[t].group = c.group;
    total += c.bits;
    kl += c.kl;
    const std::string row = kl_row(cands[t], o.groups.size() > 1);
    log(fmt::format("  {:<28} -> {:<9} KL by width{}", plan[t].name, candidate_label(c, o.groups.size() > 1), row));
  }
  log(fmt::format("mixed precision: {:.4f} bits per weight planned, sum of measured KL {:.4f}", total / double(params),
                  kl));
  return out;
}

}  // namespace primal
