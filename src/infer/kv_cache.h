// KV cache: the keys and values of every layer for the positions processed so far, in fp32.
// One contiguous (n_ctx, KVH*HS) block per layer and per K/V; position p of layer l is row p.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace primal {

class KVCache {
 public:
  // n_ctx: the context limit (positions); kv_dim = KVH * HS.
  KVCache(int64_t n_layer, int64_t n_ctx, int64_t kv_dim);

  int64_t n_layer() const { return n_layer_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t kv_dim() const { return kv_dim_; }
  int64_t n_past() const { return n_past_; }  // positions filled: the next token goes there

  float* k(int64_t layer) { return k_.data() + size_t(layer * n_ctx_ * kv_dim_); }  // (n_ctx, kv_dim)
  float* v(int64_t layer) { return v_.data() + size_t(layer * n_ctx_ * kv_dim_); }  // (n_ctx, kv_dim)

  // Throws a clear Error when T more tokens do not fit in the context.
  void check_room(int64_t T) const;
  void advance(int64_t T);          // T positions were written
  void clear() { n_past_ = 0; }     // forget everything (a new sequence)
  void truncate(int64_t n_keep);    // keep the first n_keep positions

 private:
  int64_t n_layer_, n_ctx_, kv_dim_;
  int64_t n_past_ = 0;
  std::vector<float> k_, v_;  // (L, n_ctx, kv_dim) each
};

}  // namespace primal
