#include "infer/kv_cache.h"

#include "core/error.h"

namespace primal {

KVCache::KVCache(int64_t n_layer, int64_t n_ctx, int64_t kv_dim) : n_layer_(n_layer), n_ctx_(n_ctx), kv_dim_(kv_dim) {
  PRIMAL_CHECK(n_layer > 0 && kv_dim > 0, "KV cache: invalid shape ({} layers, width {})", n_layer, kv_dim);
  PRIMAL_CHECK(n_ctx > 0 && n_ctx <= (int64_t(1) << 24), "KV cache: invalid context size {}", n_ctx);
  const size_t n = size_t(n_layer * n_ctx * kv_dim);
  k_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
}

void KVCache::check_room(int64_t T) const {
  if (T < 0 || n_past_ + T > n_ctx_)
    fail("context is full: {} tokens already in the context + {} new tokens exceed the context size of {} "
         "(raise it with -c)",
         n_past_, T, n_ctx_);
}

void KVCache::advance(int64_t T) {
  check_room(T);
  n_past_ += T;
}

void KVCache::truncate(int64_t n_keep) {
  PRIMAL_CHECK(n_keep >= 0 && n_keep <= n_past_, "KV cache: cannot keep {} of {} positions", n_keep, n_past_);
  n_past_ = n_keep;
}

}  // namespace primal
