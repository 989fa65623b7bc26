#include "infer/cuda/cuda_forward.h"

#include <cuda_runtime.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_set>

#include "core/error.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/check.cuh"
#include "ops/cuda/device.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/sampling.h"

namespace primal::cuda {

CudaForward::CudaForward(const LlamaWeights& w, int64_t n_ctx, const CudaOptions& o)
    : hp_(w.hp), n_ctx_(n_ctx), tmax_(std::max<int64_t>(1, o.max_batch)), opt_(o), w_(CudaWeights::upload(w)) {
  const int64_t C = hp_.n_embd, Q = hp_.n_head * hp_.head_dim, KV = hp_.n_embd_kv(), F = hp_.n_ff, V = hp_.n_vocab;
  const int64_t L = hp_.n_layer, W = Q + 2 * KV, Tm = tmax_;
  PRIMAL_CHECK(n_ctx > 0 && n_ctx <= (int64_t(1) << 24), "KV cache: invalid context size {}", n_ctx);
  PRIMAL_CHECK(C % 32 == 0 && F % 32 == 0 && hp_.head_dim % 32 == 0,
               "the GPU path needs widths that are multiples of 32 (n_embd {}, n_ff {}, head_dim {})", C, F,
               hp_.head_dim);
  kv_ = DeviceBuffer(size_t(L) * 2 * size_t(n_ctx) * size_t(KV) * 2);
  state_ = DeviceBuffer(sizeof(State));
  rope_cs_ = DeviceBuffer(size_t(n_ctx) * size_t(hp_.rope_dim / 2) * 2 * sizeof(float));
  rope_table(w_.inv_freq, hp_.rope_dim / 2, n_ctx, rope_cs_.data(), stream_.get());
  tokens_ = DeviceBuffer(size_t(Tm) * sizeof(int32_t));
  x_ = DeviceBuffer(size_t(Tm * C) * 4);
  xn16_ = DeviceBuffer(size_t(Tm * C) * 2);
  qkv_ = DeviceBuffer(size_t(Tm * W) * 4);
  att16_ = DeviceBuffer(size_t(Tm * Q) * 2);
  gu_ = DeviceBuffer(size_t(Tm * 2 * F) * 4);
  h16_ = DeviceBuffer(size_t(Tm * F) * 2);
  // Dequantization scratch: the largest non-fp16 layer matrix, and at least 32M elements (or the
  // whole head) so that the head goes in few chunks.
  int64_t most = 0;
  auto need = [&](const MatrixView& m) {
    if (m.type != DType::F16) most = std::max(most, m.rows * m.cols);
  };
  for (const CudaLayer& l : w_.layers)
    for (const DeviceMatrix& m : l.owned) need(m.view);
  if (w_.output.type != DType::F16) most = std::max(most, std::min<int64_t>(w_.output.rows * C, int64_t(32) << 20));
  scratch_elems_ = std::max<int64_t>(most, 1);
  scratch16_ = DeviceBuffer(size_t(scratch_elems_) * 2);

  x1_ = DeviceBuffer(size_t(C) * 4);
  qkv1_ = DeviceBuffer(size_t(W) * 4);
  att1_ = DeviceBuffer(size_t(Q) * 4);
  h1_ = DeviceBuffer(size_t(F) * 4);
  up1_ = DeviceBuffer(size_t(F) * 4);
  splits_ = attention_decode_splits(hp_.n_head_kv);
  part_ = DeviceBuffer(attention_decode_scratch(hp_.n_head, hp_.head_dim, splits_));
  fill_bytes_async(part_.data(), 0, part_.size(), stream_.get());  // the completion counters start at 0
  logits1_ = DeviceBuffer(size_t(V) * 4);
  key_ = DeviceBuffer(sizeof(uint64_t));
  work_ = DeviceBuffer(size_t(V) * 4);
  pen_ids_ = DeviceBuffer(size_t(V) * sizeof(int32_t));
  topk_scratch_ = DeviceBuffer(top_k_scratch_bytes(V, kMaxTopK));
  topk_out_ = DeviceBuffer(size_t(kMaxTopK) * sizeof(uint64_t));
  set_state(0, 0);
  sync();
  const char* prof = std::getenv("PRIMAL_CUDA_PROFILE");
  profile_ = prof && *prof && std::string(prof) != "0";
}

CudaForward::~CudaForward() {
  if (graph_) cudaGraphExecDestroy(graph_);
  if (profile_ && !op_ms_.empty()) {
    // Ops named "pp:*" are prefill's (totals over all prefill passes), the others decode's (per step).
    fmt::print(stderr, "primal: profile (eager launches), {} decode steps\n", profiled_steps_);
    for (const auto& [name, v] : op_ms_) {
      const bool pp = name.rfind("pp:", 0) == 0;
      const double per = pp ? v.first : v.first / double(std::max<int64_t>(profiled_steps_, 1));
      fmt::print(stderr, "  {:<16} {:9.3f} ms{}  ({} calls)\n", name, per, pp ? " total" : "/step", v.second);
    }
  }
}

void CudaForward::mark(const char* op) {
  if (!profile_) return;
  if (marks_.size() == events_.size()) events_.push_back(std::make_unique<Event>());
  events_[marks_.size()]->record(stream_.get());
  marks_.push_back(op);
}

void CudaForward::collect_profile(bool decode_step) {
  if (!profile_ || marks_.empty()) return;
  sync();
  for (size_t i = 1; i < marks_.size(); ++i) {
    auto& v = op_ms_[marks_[i]];
    v.first += double(events_[i]->ms_since(*events_[i - 1]));
    v.second += 1;
  }
  marks_.clear();
  if (decode_step) ++profiled_steps_;
}

std::string CudaForward::name() const { return "cuda (" + device_name(0) + ")"; }

void* CudaForward::k_cache(int64_t l) const {
  return kv_.as<uint8_t>() + size_t(2 * l) * size_t(n_ctx_) * size_t(hp_.n_embd_kv()) * 2;
}
void* CudaForward::v_cache(int64_t l) const {
  return kv_.as<uint8_t>() + size_t(2 * l + 1) * size_t(n_ctx_) * size_t(hp_.n_embd_kv()) * 2;
}

void CudaForward::sync() {
  stream_.sync();
  check_last_error();
}

void CudaForward::truncate(int64_t n_keep) {
  PRIMAL_CHECK(n_keep >= 0 && n_keep <= n_past_, "KV cache: cannot keep {} of {} positions", n_keep, n_past_);
  n_past_ = n_keep;  // positions past n_keep are overwritten before they are read again
}

// Pageable source: cudaMemcpyAsync stages it before returning, so the local may go away.
void CudaForward::set_state(int32_t token, int64_t pos) {
  const State s{token, int32_t(pos)};
  copy_to_device_async(state_.data(), &s, sizeof(s), stream_.get());
}

void CudaForward::ensure_logit_rows(int64_t n) {
  if (n <= logit_rows_) return;
  logits_ = DeviceBuffer(size_t(n) * size_t(hp_.n_vocab) * 4);
  logit_rows_ = n;
}

void CudaForward::forward(const int32_t* tokens, int64_t T, int64_t n_logits, float* logits, const DumpFn& dump) {
  const int64_t V = hp_.n_vocab;
  PRIMAL_CHECK(T > 0, "forward: no tokens");
  PRIMAL_CHECK(n_logits >= 1 && n_logits <= T, "forward: {} logit rows requested for {} tokens", n_logits, T);
  if (n_past_ + T > n_ctx_)
    fail("context is full: {} tokens already in the context + {} new tokens exceed the context size of {} "
         "(raise it with -c)",
         n_past_, T, n_ctx_);
  for (int64_t t = 0; t < T; ++t)
    PRIMAL_CHECK(tokens[t] >= 0 && tokens[t] < V, "token id {} at position {} is outside the vocabulary (0..{})",
                 tokens[t], t, V - 1);
  if (T == 1 && !dump) {
    decode(tokens[0]);
    n_past_ += 1;
    if (logits) copy_last_logits_to(logits);
    return;
  }
  const int64_t first_row = T - n_logits;  // rows first_row .. T-1 are wanted
  for (int64_t c0 = 0; c0 < T; c0 += tmax_) {
    const int64_t Tc = std::min(tmax_, T - c0);
    const int64_t r0 = std::clamp<int64_t>(first_row - c0, 0, Tc);  // head rows r0 .. Tc-1 of this chunk
    prefill(tokens + c0, Tc, r0 < Tc ? r0 : Tc - 1, dump);
    n_past_ += Tc;
    if (logits && r0 < Tc)
      copy_to_host_async(logits + (c0 + r0 - first_row) * V, logits_.data(), size_t((Tc - r0) * V) * 4,
                         stream_.get());
  }
  sync();
}

void CudaForward::copy_last_logits_to(float* out) {
  copy_to_host_async(out, last_row_, size_t(hp_.n_vocab) * 4, stream_.get());
  sync();
}

void CudaForward::last_logits(float* out) {
  PRIMAL_CHECK(last_row_, "no logits yet: run a forward pass first");
  copy_last_logits_to(out);
}

void CudaForward::decode(int32_t token) {
  set_state(token, n_past_);
  if (profile_) {
    mark("start");
    decode_layers();
    collect_profile(true);
  } else if (!opt_.use_graph || !decode_warm_) {
    decode_layers();  // the first time eagerly: kernel attributes are set outside any capture
    decode_warm_ = true;
  } else {
    if (!graph_) {
      cudaGraph_t g = nullptr;
      PRIMAL_CUDA_CHECK(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
      try {
        decode_layers();
      } catch (...) {
        cudaStreamEndCapture(stream_.get(), &g);
        if (g) cudaGraphDestroy(g);
        throw;
      }
      PRIMAL_CUDA_CHECK(cudaStreamEndCapture(stream_.get(), &g));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
      cudaGraphDestroy(g);
      PRIMAL_CUDA_CHECK(e);
      graph_ = exec;
    }
    PRIMAL_CUDA_CHECK(cudaGraphLaunch(graph_, stream_.get()));
  }
  last_row_ = logits1_.as<float>();
  last_has_argmax_ = true;
}

std::vector<TokenLogit> CudaForward::top_k(int64_t k, float penalty, const std::vector<int32_t>& recent) {
  PRIMAL_CHECK(last_row_, "no logits yet: run a forward pass first");
  const int64_t V = hp_.n_vocab;
  PRIMAL_CHECK(k >= 1 && k <= V, "top-k: k = {} outside 1..{}", k, V);
  if (k > kMaxTopK) {  // rare (top-k off is handled by the caller): the host does it
    std::vector<float> row(static_cast<size_t>(V));
    copy_last_logits_to(row.data());
    return top_k_host(row.data(), V, k, penalty, recent);
  }
  std::vector<int32_t> ids;
  if (penalty != 1.0f) {
    std::unordered_set<int32_t> seen;
    for (int32_t id : recent)
      if (id >= 0 && id < V && seen.insert(id).second) ids.push_back(id);
  }
  const float* src = last_row_;
  if (!ids.empty()) {
    copy_device_async(work_.data(), last_row_, size_t(V) * 4, stream_.get());
    copy_to_device_async(pen_ids_.data(), ids.data(), ids.size() * sizeof(int32_t), stream_.get());
    apply_penalty(work_.as<float>(), pen_ids_.as<int32_t>(), int(ids.size()), penalty, stream_.get());
    src = work_.as<float>();
  }
  std::vector<uint64_t> keys(static_cast<size_t>(k));
  if (k == 1) {
    if (src != last_row_ || !last_has_argmax_) argmax_key(src, V, key_.as<uint64_t>(), stream_.get());
    last_has_argmax_ = src == last_row_;  // key_ now holds the argmax of src
    copy_to_host_async(keys.data(), key_.data(), sizeof(uint64_t), stream_.get());
  } else {
    top_k_keys(src, V, int(k), topk_scratch_.data(), topk_out_.as<uint64_t>(), stream_.get());
    copy_to_host_async(keys.data(), topk_out_.data(), keys.size() * sizeof(uint64_t), stream_.get());
  }
  sync();
  std::vector<TokenLogit> out(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) out[i] = {key_id(keys[i]), key_logit(keys[i])};
  return out;
}

}  // namespace primal::cuda
