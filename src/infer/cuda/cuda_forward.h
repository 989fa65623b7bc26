// The GPU Backend (see cuda_backend.h). Buffers, state and sampling are in cuda_forward.cpp; the
// flat lists of layer calls for prefill and decode in cuda_layers.cpp.
//
// Shape letters as in model/weights.h; Tm = the most tokens of one prefill pass; W = Q + 2 KV.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "infer/backend.h"
#include "infer/cuda/cuda_backend.h"
#include "infer/cuda/cuda_weights.h"
#include "ops/cuda/buffer.h"
#include "ops/cuda/gemm.h"

struct CUgraphExec_st;

namespace primal::cuda {

class CudaForward final : public Backend {
 public:
  CudaForward(const LlamaWeights& w, int64_t n_ctx, const CudaOptions& o);
  ~CudaForward() override;

  std::string name() const override;
  const HParams& hparams() const override { return hp_; }
  int64_t n_ctx() const override { return n_ctx_; }
  int64_t n_past() const override { return n_past_; }
  void truncate(int64_t n_keep) override;
  void forward(const int32_t* tokens, int64_t T, int64_t n_logits, float* logits, const DumpFn& dump) override;
  void last_logits(float* out) override;
  std::vector<TokenLogit> top_k(int64_t k, float penalty, const std::vector<int32_t>& recent) override;

 private:
  struct State {  // device: what the decode graph reads and advances
    int32_t token;
    int32_t pos;  // position of `token` (the cache's fill level before it)
  };

  // cuda_layers.cpp
  void prefill(const int32_t* tokens, int64_t T, int64_t r0, const DumpFn& dump);  // head rows r0..T-1
  void decode_layers();
  void matmul(const MatrixView& w, const void* a16, int64_t T, float* c, int64_t ldc, float beta);
  void qkv_gemv(const CudaLayer& l);
  void ffn_gemv(const CudaLayer& l);

  // cuda_forward.cpp
  void decode(int32_t token);
  void copy_last_logits_to(float* out);  // (V), synchronizes
  void set_state(int32_t token, int64_t pos);
  void ensure_logit_rows(int64_t n);
  void sync();
  void* k_cache(int64_t l) const;
  void* v_cache(int64_t l) const;
  // Profiling (PRIMAL_CUDA_PROFILE=1): decode runs eagerly with an event after every op; the
  // time per op name is summed and printed to stderr when the backend goes away.
  void mark(const char* op);
  void collect_profile(bool decode_step);

  HParams hp_;
  int64_t n_ctx_, n_past_ = 0, tmax_;
  CudaOptions opt_;
  Stream stream_;
  Blas blas_;
  CudaWeights w_;
  DeviceBuffer kv_;     // (L, 2, n_ctx, KVH, HS) fp16
  DeviceBuffer state_;  // State
  DeviceBuffer rope_cs_;  // (n_ctx, n_rot/2) (cos, sin) of every position
  // prefill (T <= Tm tokens)
  DeviceBuffer tokens_;     // (Tm) int32
  DeviceBuffer x_;          // (Tm, C) fp32 residual stream
  DeviceBuffer xn16_;       // (Tm, C) fp16 normalized input of a sub-block
  DeviceBuffer qkv_;        // (Tm, W) fp32 q | k | v
  DeviceBuffer att16_;      // (Tm, Q) fp16 attention output
  DeviceBuffer gu_;         // (Tm, 2F) fp32 gate | up
  DeviceBuffer h16_;        // (Tm, F) fp16 SwiGLU output
  DeviceBuffer scratch16_;  // dequantized weight rows, fp16
  int64_t scratch_elems_ = 0;
  DeviceBuffer logits_;     // (rows, V) fp32 head output of a prefill
  int64_t logit_rows_ = 0;
  // decode (one token)
  DeviceBuffer x1_;         // (C)
  DeviceBuffer qkv1_;       // (W)
  DeviceBuffer att1_;       // (Q)
  DeviceBuffer h1_;         // (F) SwiGLU output
  DeviceBuffer up1_;        // (F) up projection, when gate and up differ in format
  DeviceBuffer part_;       // attention partials
  int splits_ = 1;
  DeviceBuffer logits1_;    // (V)
  DeviceBuffer key_;        // u64 argmax key of logits1_
  // sampling
  DeviceBuffer work_;       // (V) penalized logits
  DeviceBuffer pen_ids_;    // distinct penalized ids
  DeviceBuffer topk_scratch_, topk_out_;

  const float* last_row_ = nullptr;  // device (V) logits of the last token
  bool last_has_argmax_ = false;     // key_ holds its argmax (decode computes it)
  bool decode_warm_ = false;         // one eager decode ran (kernel attributes set)
  CUgraphExec_st* graph_ = nullptr;

  bool profile_ = false;
  std::vector<std::unique_ptr<Event>> events_;
  std::vector<const char*> marks_;
  std::map<std::string, std::pair<double, int64_t>> op_ms_;  // name -> (ms, count)
  int64_t profiled_steps_ = 0;
};

}  // namespace primal::cuda
