#include "infer/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace primal {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

Generator::Generator(const LlamaWeights& w, int64_t n_ctx, const SamplerParams& sp, int64_t n_batch)
    : Generator(make_cpu_backend(w, n_ctx), sp, n_batch) {}

Generator::Generator(std::unique_ptr<Backend> backend, const SamplerParams& sp, int64_t n_batch)
    : backend_(std::move(backend)), sampler_(sp), n_batch_(n_batch), logits_(size_t(backend_->hparams().n_vocab)) {
  PRIMAL_CHECK(n_batch > 0, "batch size must be positive (got {})", n_batch);
}

void Generator::feed(const int32_t* tokens, int64_t n, const DumpFn& dump) {
  for (int64_t i = 0; i < n; i += n_batch_) {
    const int64_t b = std::min(n_batch_, n - i);
    backend_->forward(tokens + i, b, 1, nullptr, dump);
    ctx_.insert(ctx_.end(), tokens + i, tokens + i + b);
  }
  have_logits_ = n > 0;
  logits_fresh_ = false;
}

const std::vector<float>& Generator::logits() const {
  PRIMAL_CHECK(have_logits_, "logits() before any token was fed");
  if (!logits_fresh_) {
    backend_->last_logits(logits_.data());
    logits_fresh_ = true;
  }
  return logits_;
}

void Generator::set_context(const std::vector<int32_t>& tokens, const DumpFn& dump) {
  PRIMAL_CHECK(!tokens.empty(), "the prompt is empty (no tokens)");
  if (int64_t(tokens.size()) > n_ctx())
    fail("the prompt has {} tokens but the context holds {} (raise it with -c)", tokens.size(), n_ctx());
  // Reuse the cached prefix; at least the last token is run again so that its logits exist.
  size_t keep = 0;
  while (keep < ctx_.size() && keep < tokens.size() && ctx_[keep] == tokens[keep]) ++keep;
  keep = std::min(keep, tokens.size() - 1);
  backend_->truncate(int64_t(keep));
  ctx_.resize(keep);
  const auto t0 = std::chrono::steady_clock::now();
  feed(tokens.data() + keep, int64_t(tokens.size() - keep), dump);
  stats_.prompt_s += seconds_since(t0);
  stats_.n_prompt += int64_t(tokens.size() - keep);
  // The repetition penalty sees the most recent tokens of the whole context.
  sampler_.clear_history();
  const size_t n = std::min(ctx_.size(), size_t(std::max(sampler_.params().repeat_last_n, 0)));
  for (size_t i = ctx_.size() - n; i < ctx_.size(); ++i) sampler_.accept(ctx_[i]);
}

void Generator::push(int32_t token) {
  const auto t0 = std::chrono::steady_clock::now();
  feed(&token, 1, nullptr);
  stats_.decode_s += seconds_since(t0);
  stats_.n_decode += 1;
  sampler_.accept(token);
}

int32_t Generator::sample() {
  PRIMAL_CHECK(have_logits_, "sample() before any token was fed");
  const int64_t V = int64_t(logits_.size());
  const int64_t k = sampler_.candidates_needed(V);
  if (k == 0) return sampler_.sample(logits().data(), V);
  const auto best = backend_->top_k(k, sampler_.params().repeat_penalty, sampler_.recent());
  return sampler_.sample_top(best.data(), best.size());
}

std::string Utf8Stream::push(const std::string& piece) {
  pending_ += piece;
  // Find where the last (possibly incomplete) sequence starts and whether it is complete.
  size_t n = pending_.size(), start = n;
  for (size_t k = 0; k < 4 && k < n; ++k) {
    const unsigned char c = static_cast<unsigned char>(pending_[n - 1 - k]);
    if ((c & 0xC0) != 0x80) {
      start = n - 1 - k;
      break;
    }
  }
  size_t cut = n;
  if (start < n) {
    const unsigned char c = static_cast<unsigned char>(pending_[start]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 1;
    if (n - start < len) cut = start;  // incomplete: hold it back
  }
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace primal
