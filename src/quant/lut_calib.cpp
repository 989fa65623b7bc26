#include "quant/lut_calib.h"

#include <cmath>
#include <fstream>

#include "core/error.h"
#include "infer/kv_cache.h"
#include "io/gguf.h"
#include "io/model_source.h"
#include "model/forward.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace primal {
namespace {

// The matrices that multiply each named intermediate of the forward pass (model/forward.cpp).
std::vector<std::string> consumers(const std::string& dump_name) {
  const auto dash = dump_name.rfind('-');
  if (dash == std::string::npos) return dump_name == "result_norm" ? std::vector<std::string>{"output.weight"}
                                                                    : std::vector<std::string>{};
  const std::string what = dump_name.substr(0, dash), b = "blk." + dump_name.substr(dash + 1) + ".";
  if (what == "attn_norm") return {b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"};
  if (what == "kqv") return {b + "attn_output.weight"};
  if (what == "ffn_norm") return {b + "ffn_gate.weight", b + "ffn_up.weight"};
  if (what == "ffn_swiglu") return {b + "ffn_down.weight"};
  return {};
}

}  // namespace

const std::vector<float>* CalibStats::importance_of(const std::string& name) const {
  auto it = importance.find(name);
  return it == importance.end() ? nullptr : &it->second;
}

const std::vector<double>* CalibStats::hessian_of(const std::string& name) const {
  auto it = hessian.find(name);
  return it == hessian.end() ? nullptr : it->second.get();
}

CalibStats collect_calib_stats(const ModelSource& src, const std::string& text_path, int64_t n_tokens, int64_t n_ctx,
                               bool full) {
  PRIMAL_CHECK(src.gguf(), "{}: calibration needs a GGUF model (its vocabulary)", src.path());
  PRIMAL_CHECK(n_ctx >= 2 && n_tokens >= 2, "calibration: {} tokens in windows of {} (need at least 2)", n_tokens,
               n_ctx);
  std::ifstream f(text_path, std::ios::binary);
  PRIMAL_CHECK(f.good(), "calibration text {}: cannot read it", text_path);
  const std::string text(std::istreambuf_iterator<char>(f), {});
  const auto tok = Tokenizer::from_gguf(*src.gguf());
  std::vector<int32_t> ids = tok->encode(text, false, false);
  PRIMAL_CHECK(ids.size() >= 2, "calibration text {}: {} tokens, need at least 2", text_path, ids.size());
  if (int64_t(ids.size()) > n_tokens) ids.resize(size_t(n_tokens));

  CalibStats st;
  const LlamaWeights w = load_weights(src);
  st.token_counts.assign(size_t(w.hp.n_vocab), 0.0f);
  for (size_t i = 0; i < ids.size(); i += size_t(n_ctx)) {
    std::vector<int32_t> win(ids.begin() + ptrdiff_t(i), ids.begin() + ptrdiff_t(std::min(ids.size(), i + size_t(n_ctx))));
    if (win.size() >= 2) st.windows.push_back(std::move(win));
  }
  // Sums of squares per input column of each intermediate (with `full`, of all products a_i a_k),
  // then divided by the token count.
  std::map<std::string, std::vector<double>> sums, outer;
  auto dump = [&](const std::string& name, const float* data, const std::vector<int64_t>& shape) {
    if (consumers(name).empty()) return;
    const int64_t rows = shape[0];
    int64_t cols = 1;
    for (size_t k = 1; k < shape.size(); ++k) cols *= shape[k];
    std::vector<double>& s = sums[name];
    s.resize(size_t(cols), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) s[size_t(c)] += double(data[r * cols + c]) * data[r * cols + c];
    if (!full) return;
    std::vector<double>& h = outer[name];
    h.resize(size_t(cols * cols), 0.0);
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t r = 0; r < rows; ++r) {
        const double ai = data[r * cols + i];
        if (ai == 0) continue;
        const float* a = data + r * cols;
        double* hi = h.data() + i * cols;
        for (int64_t k = 0; k <= i; ++k) hi[k] += ai * a[k];  // lower triangle; mirrored at the end
      }
  };
  KVCache cache = make_kv_cache(w, n_ctx);
  for (const auto& win : st.windows) {
    const int64_t T = int64_t(win.size());
    for (int32_t t : win) {
      PRIMAL_CHECK(t >= 0 && t < w.hp.n_vocab, "calibration: token {} outside the vocabulary", t);
      st.token_counts[size_t(t)] += 1;
    }
    cache.clear();
    // n_logits = T: the head's input (result_norm) for every token. No logits: nothing reads them,
    // and the head (V x C per token) was about a quarter of a GPTQ calibration run.
    llama_forward(w, cache, win.data(), T, T, nullptr, dump);
    st.n_tokens += T;
  }
  for (const auto& [dump_name, s] : sums) {
    std::vector<float> mean(s.size());
    for (size_t c = 0; c < s.size(); ++c) mean[c] = float(s[c] / double(st.n_tokens));
    for (const auto& name : consumers(dump_name)) st.importance[name] = mean;
  }
  for (auto& [dump_name, h] : outer) {
    const int64_t n = int64_t(std::llround(std::sqrt(double(h.size()))));
    auto H = std::make_shared<std::vector<double>>(h.size());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k <= i; ++k)
        (*H)[size_t(i * n + k)] = (*H)[size_t(k * n + i)] = h[size_t(i * n + k)] / double(st.n_tokens);
    for (const auto& name : consumers(dump_name)) st.hessian[name] = H;
  }
  return st;
}

}  // namespace primal
