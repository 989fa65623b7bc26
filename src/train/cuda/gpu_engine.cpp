// The CUDA engine: train/forward_backward.cpp, votes.cpp and adamw.cpp on the device. Read those
// first: every block below names the CPU lines it mirrors, and the order of operations is theirs.
#include "train/cuda/gpu_engine.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "ops/cuda/attention_mma.h"
#include "ops/cuda/attention_train.h"
#include "ops/cuda/buffer.h"
#include "ops/cuda/cudnn_attention.h"
#include "ops/cuda/device.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/lut_embedding_grad.h"
#include "ops/cuda/lut_dw_cast.h"
#include "ops/cuda/lut_train.h"
#include "ops/cuda/train_ops.h"
#include "ops/cuda/train_step.h"
#include "ops/cuda/votes.h"
#include "train/memory_plan.h"
#include "train/train_config.h"

namespace primal::train {
namespace cu = primal::cuda;
namespace {

constexpr int64_t kFastHeadChunk = 2048;

// Device allocations of the engine, with their total (what the engine adds to the device).
class Arena {
 public:
  void* bytes(size_t n) {
    if (n == 0) return nullptr;
    bufs_.emplace_back(n);
    total_ += int64_t(n);
    return bufs_.back().data();
  }
  template <class T>
  T* of(size_t n) {
    return static_cast<T*>(bytes(n * sizeof(T)));
  }
  // A device copy of a host vector (null when empty).
  template <class T>
  T* copy(const std::vector<T>& v) {
    T* d = of<T>(v.size());
    if (d) cu::copy_to_device(d, v.data(), v.size() * sizeof(T));
    return d;
  }
  int64_t total() const { return total_; }

 private:
  std::vector<cu::DeviceBuffer> bufs_;  // moving a DeviceBuffer keeps its device pointer
  int64_t total_ = 0;
};

// One weight matrix of the model on the device.
struct DevMat {
  Matrix* host = nullptr;
  cu::LutTrainView view;                    // LUT: indices, scales, grid
  float* dense = nullptr;                   // dense: (O, I)
  float* dscale = nullptr;                  // LUT scale gradient (O, I / G), or null
  float* dW = nullptr;                      // dense gradient (O, I), or null
  std::unique_ptr<cu::DeviceVotes> votes;   // LUT: the vote state
  LutVotes* hv = nullptr;                   // its host twin
  bool lut() const { return host->is_lut(); }
};

struct DevLayer {
  float *attn_norm = nullptr, *ffn_norm = nullptr, *bq = nullptr, *bk = nullptr, *bv = nullptr;  // (C) (C) (Q) (KV) (KV)
  float *g_attn_norm = nullptr, *g_ffn_norm = nullptr, *g_bq = nullptr, *g_bk = nullptr, *g_bv = nullptr;
  DevMat *wq = nullptr, *wk = nullptr, *wv = nullptr, *wo = nullptr, *w_gate = nullptr, *w_up = nullptr,
         *w_down = nullptr;
};

// What a layer's backward reads (forward_backward.h Workspace::Layer), N = B*T tokens.
// In the bf16 mode (--fast) the linear layers' inputs exist only as bf16 (xn1b, attb, xn2b, hb: the
// GEMM operands of the forward and of the weight gradient; the norms and SwiGLU write them
// directly, att is copied); their fp32 pointers xn1, xn2, h are null there.
struct Acts {
  float *xn1, *rstd1;   // (N, C), (N)
  float *q, *k, *v;     // (N, Q), (N, KV), (N, KV) after RoPE (fp32 mode; null in the bf16 mode)
  float *att, *lse;     // (N, Q) (fp32 mode; null in the bf16 mode), (B, NH, T)
  uint16_t *qb = nullptr, *kb = nullptr, *vb = nullptr;  // bf16 mode: q, k, v after RoPE (N, Q), (N, KV) x 2
  float *mid;           // (N, C)
  float *xn2, *rstd2;   // (N, C), (N)
  float *gate, *up, *h; // (N, F) each
  uint16_t *xn1b = nullptr, *attb = nullptr, *xn2b = nullptr, *hb = nullptr;  // bf16 (N, C) (N, Q) (N, C) (N, F)
  uint16_t *gateb = nullptr, *upb = nullptr;  // bf16 mode: gate, up as bf16 (N, F) (gate, up null)
};

struct DevParam {  // an AdamW parameter on the device (index = its index in AdamW::params())
  float *p = nullptr, *g = nullptr, *m = nullptr, *v = nullptr;
  int64_t n = 0;
};

class CudaEngine final : public StepEngine {
 public:
  CudaEngine(const EngineContext& c, const GpuEngineOptions& o);
  std::string name() const override {
    return !o_.fast ? "cuda (fp32)" : cudnn_attn_ ? "cuda (bf16 tensor-core GEMMs, cuDNN attention)"
                                                  : "cuda (bf16 tensor-core GEMMs)";
  }
  void begin_step(int64_t step, double sched) override;
  LossSum forward_backward(const TrainMask& mask, const int32_t* inputs, const int32_t* targets, int64_t B, int64_t T,
                           double loss_scale, bool train) override;
  StepStats apply_votes(const std::function<bool(const Matrix&)>& trainable) override;
  double adam_step(double sched, const std::function<bool(const FloatParam&)>& trainable) override;
  void sync_to_host() override;
  int64_t peak_bytes() const override { return peak_; }
  ~CudaEngine() override;

 private:
  DevMat* upload_matrix(Matrix& m);
  float* param(std::vector<float>& v) { return v.empty() ? nullptr : pmap_.at(v.data()); }
  float* grad(std::vector<float>& v) { return v.empty() ? nullptr : gmap_.at(v.data()); }
  float* res(int64_t l) { return res_ + l * maxN_ * hp_.n_embd; }
  // The activation set of logical layer l: layer l's own among the top kept_ layers, the shared set
  // (acts_[kept_]) below them: their forward's, and with recomputation the one each of them is
  // rebuilt into right before its backward.
  // With kept attention outputs or q, k, v, layer l below the kept ones: the shared set with l's own
  // attb, lse and qb, kb, vb where it keeps them.
  Acts& acts(int64_t l) {
    const int64_t first = hp_.n_layer - kept_;
    if (l < first && !views_.empty()) return views_[size_t(l)];
    return acts_[size_t(l >= first ? l - first : kept_)];
  }
  void forward_layer(int64_t l, Acts& a, int64_t B, int64_t T, bool need_out);
  void enqueue(const TrainMask& mask, int64_t B, int64_t T, double loss_scale, bool train);
  void run_graph(const TrainMask& mask, int64_t B, int64_t T, double loss_scale);
  void group_positions(const int32_t* inputs, int64_t N);
  // The LUT embedding's scale gradient (its positions grouped on the host) is part of the backward.
  bool embd_scale_grad(const TrainMask& mask) const {
    return mask.embd && mask.scales && embd_->lut() && embd_->dscale;
  }
  void lin_fwd(const DevMat& W, cu::Operand inp, int64_t n, const float* bias, float* out);
  void lin_bwd(float* dinp, bool accumulate, cu::Operand dout, cu::Operand inp, int64_t n, DevMat& W, bool trainable,
               bool scales, float* dbias);
  // Where the norms' backward writes dx_'s bf16 copy (the next linear backward's operand): dxb_ in
  // the bf16 mode, nowhere otherwise.
  uint16_t* dxb16() const { return bf16_ ? dxb_ : nullptr; }
  // The bf16 copy of x (n values) in dst, in the bf16 mode; nothing otherwise.
  void bf16_copy(uint16_t* dst, const float* x, int64_t n) {
    if (bf16_) cu::to_bf16(dst, x, n, s_);
  }
  // The same for x (rows, cols) into rows ld apart (0: cols).
  void bf16_copy_rows(uint16_t* dst, int64_t ld, const float* x, int64_t rows, int64_t cols) {
    if (bf16_) cu::to_bf16_rows(dst, ld > 0 ? ld : cols, x, rows, cols, s_);
  }
  // RoPE (inverse: its backward) on x (B, T, heads, HS) in place, and in the bf16 mode x's bf16 copy
  // xb (rows ldb apart; 0: dense), written by the RoPE kernel itself when every dimension rotates
  // (else converted after); the fused kernel writes only xb (the bf16 mode reads no rotated fp32
  // values: its bias gradients come from the bf16 copies).
  // bias and ldx, x's row stride (only where rope_adds_bias()): added to x first, inside the fused
  // kernel; x read as a column block of a wider matrix.
  void rope(float* x, uint16_t* xb, int64_t B, int64_t T, int64_t heads, bool inverse, int64_t ldb = 0,
            const float* bias = nullptr, int64_t ldx = 0) {
    const bool fused = rope_adds_bias();
    PRIMAL_CHECK(fused || (!bias && !ldx), "cuda engine: a bias or stride for RoPE without the fused kernel");
    cu::rope_rotate(x, B, T, heads, 0, rope_, inverse, s_, fused ? xb : nullptr, !fused, fused ? ldb : 0,
                    bias, ldx);
    if (!fused) bf16_copy_rows(xb, ldb, x, B * T, heads * hp_.head_dim);
  }
  // The bf16 mode's RoPE writes only the bf16 copy (every dimension rotated): the forward's q and k
  // biases are then added by that kernel, and v's by its bf16 copy, instead of a pass over each.
  bool rope_adds_bias() const { return bf16_ && rope_.n_rot == hp_.head_dim; }
  void note_memory();
  // PRIMAL_TRAIN_PROFILE=1: an event is recorded on the stream after every op, and the GPU time
  // between it and the previous one is added to the op's category (flush_profile, at the ends of
  // forward_backward, apply_votes and adam_step; a table on stderr when the engine ends). Events,
  // not synchronizations: the profiled step runs as an unprofiled one, so the shares are those of
  // real steps (a synchronization after every op added ~40% to a step, most of it to small ops).
  // Without the variable nothing happens. mark(nullptr) starts a span that no category is charged.
  void mark(const char* category);
  void flush_profile();
  // mark("<stage_prefix_>: <stage>"); the name is only built when profiling.
  void mark_stage(const char* stage) {
    if (prof_) mark((std::string(stage_prefix_) + ": " + stage).c_str());
  }
  const char* stage_prefix_ = "linear bwd";  // the profile's name for lut_train's stages

  EngineContext c_;
  GpuEngineOptions o_;
  bool bf16_ = false;  // native bf16 GEMM operands (--fast)
  bool fused_dequant_ = false;  // GpuEngineOptions::fused_dequant (or PRIMAL_LUT_GEMM), set on each call
  // The bf16 mode's attention: the tensor-core flash kernels (attention_mma.h), forward and
  // backward, at every length; the fp32 mode keeps the CUDA-core flash kernels (attention_train.h),
  // the CPU's twin. (The cuBLAS attention of attention_gemm.h, which this replaced in the trainer,
  // wrote the (T, T) scores to device memory and ran at HBM speed.)
  bool mma_attention_ = false;
  // ... and where libcudnn.so.9 loads, cuDNN's fused attention in their place (cudnn_attention.h:
  // Hopper wgmma kernels, the forward ~2.7x and the backward ~1.7x ours at qwen's shape), for the
  // configurations it has an engine for (PRIMAL_CUDNN=0: ours throughout).
  bool cudnn_attn_ = false;
  cu::CudnnAttnShape cudnn_shape(int64_t B, int64_t T) const;
  bool head_b16_ = false;  // bf16 mode with a LUT head: bf16 logits (logitsb_), no fp32 ones
  HParams hp_;
  // The compute stream outranks the casts' stream (below): their blocks fill what it leaves idle.
  cu::Stream stream_{true};
  cudaStream_t s_ = nullptr;
  std::unique_ptr<cu::Blas> blas_;
  Arena arena_;
  std::unordered_map<const float*, float*> pmap_, gmap_;  // host parameter / gradient -> device
  std::unordered_map<const Matrix*, std::unique_ptr<DevMat>> mats_;
  std::vector<DevLayer> layers_;
  DevMat* embd_ = nullptr;
  DevMat* head_ = nullptr;
  float *out_norm_ = nullptr, *g_out_norm_ = nullptr;
  float* grads_ = nullptr;   // (grad_floats_) every float gradient, zeroed at every step
  int64_t grad_floats_ = 0;
  std::vector<DevParam> dparams_;
  cu::RopeTrainParams rope_;
  cu::VoteParams vp_;

  // Workspace for micro-batches of up to maxN_ tokens.
  int64_t maxN_ = 0, head_chunk_ = 0, scratch_floats_ = 0;
  int64_t kept_ = 0;  // layers (the top ones) whose activations are kept from the forward to the backward
  int64_t qkv_kept_ = 0;  // the lowest layers keeping their q, k, v (GpuEngineOptions::qkv_layers)
  float* res_ = nullptr;                      // (L + 1, maxN, C)
  std::vector<Acts> acts_;                    // (kept_), and one shared set when kept_ < L
  std::vector<Acts> views_;                   // (L - kept_) the shared set with each layer's kept attb, lse, q, k, v
  float *xnf_, *rstdf_, *dx_, *dxn_, *dxnf_;  // (N, C), (N), (N, C) x 3
  float *dq_, *datt_, *dk_, *dv_;             // (N, Q) x 2, (N, KV) x 2
  float *dgate_, *dup_, *dh_;                 // (N, F) x 3 (dgate_, dup_ null in the bf16 mode)
  // (V, C) bf16: the bf16 mode's LUT head's weight gradient summed over the logits chunks, in the
  // memory of dxn_ .. dqb_ (free across the head), or null; its one cast runs on the casts' stream
  // (head_dw_ready_ .. head_cast_done_), which the compute stream waits for before it writes that
  // memory again (head_wait_).
  uint16_t* hdw_ = nullptr;
  cu::Event head_dw_ready_{false}, head_cast_done_{false};
  bool head_wait_ = false;
  // The layer whose gate and up weights the scratch holds dequantized from its recomputation
  // (forward_layer), for the gate/up input gradient to reuse; null when anything else wrote it since.
  const DevLayer* gu_in_scratch_ = nullptr;
  int64_t dh_floats_ = 0;                     // dh_'s size (the bf16 mode: bf16_dh_floats)
  // bf16 mode: the GEMM operand copies of the gradients and of the head's input (xnfb_).
  uint16_t *dxb_ = nullptr, *dgb_ = nullptr, *dub_ = nullptr;  // (N, C), (N, F) x 2 (dgb_ in dh_'s memory)
  uint16_t *dqb_ = nullptr, *dkb_ = nullptr, *dvb_ = nullptr;  // (N, Q), (N, KV) x 2, rows ldqkv_ apart
  int64_t ldqkv_ = 0;                                          // Q + 2 KV: one (N, Q + 2 KV) matrix
  uint16_t *xnfb_ = nullptr, *logitsb_ = nullptr;              // (N, C), (head_chunk, ldl_) bf16 logits
  int64_t ldl_ = 0;  // bf16 logits' row stride: V rounded up to 16 (an odd vocabulary misaligned the GEMMs)
  // (head_chunk, V); logits_ or logitsb_ lives in the shared activation set's memory when there is one
  float* logits_ = nullptr;
  float* scratch_ = nullptr;                  // (scratch_floats) GEMM operand / weight-gradient tiles
  double* nll_ = nullptr;                     // (maxN)
  double* dw_slabs_ = nullptr;                // (ceil(maxN / 16), C) the norms' weight-gradient slabs, or null
  int32_t *tokens_ = nullptr, *targets_ = nullptr, *flag_ = nullptr;  // (maxN), (maxN), (1)
  int32_t* csr_ = nullptr;                    // (3 maxN + 2) LUT-embedding positions by token (group_positions)
  double *ss_ = nullptr, *ss_scratch_ = nullptr;  // (params), sum_squares_batch scratch
  void* batch_desc_ = nullptr;                    // descriptors of the batched AdamW kernels
  void* apply_desc_ = nullptr;                    // descriptors of the batched vote apply
  cu::CastWorkspace cast_ws_;                     // the bf16 cast's column statistic (votes.h)
  cu::CastFoldQueue fold_queue_;                  // its deferred folds (flushed at the end of a backward)
  cu::CastWorkspace fused_ws_;                    // the fused weight gradient + cast's (lut_train.h CastAside)
  cu::CastFoldQueue fused_queue_;                 // its folds (flushed after each launch)
  const float* pending_add_ = nullptr;            // (N, C) forward: the last layer's mid, still to add to its output
  const uint16_t* pending_b16_ = nullptr;         // (N, C) bf16: that output when it left its GEMM as bf16, else null
  // The pending residual add with the next norm: x = its output + pending_add_, normed into xn or xnb.
  void add_pending(float* xn, uint16_t* xnb, float* rstd, float* x, const float* weight, int64_t N);
  // The vote casts beside the backward's GEMMs (lut_train.h CastAside): two dW buffers used in turn,
  // their events, the casts' stream, and the event the compute stream joins it by.
  cu::Stream cast_stream_;
  cu::Event cast_join_{false}, aside_ev_[4] = {cu::Event(false), cu::Event(false), cu::Event(false), cu::Event(false)};
  cu::CastAside aside_;
  bool aside_on_ = false;
  cu::Stream attn_stream_{true};  // the attention backward's dq kernel, beside dk/dv's
  bool attn_side_ = false;   // (PRIMAL_ATTN_SIDE=0: off, for comparisons)
  bool attn_b16_grads_ = true;  // dq, dk, dv as bf16 from the attention backward (PRIMAL_ATTN_B16=0: off, comparisons)
  // The o and down projections' outputs and the o projection's input gradient as bf16 out of their
  // GEMMs (PRIMAL_PROJ_B16=0: fp32, the earlier path, for comparisons).
  bool proj_b16_ = true;
  unsigned long long* flips_ = nullptr;       // (1)
  // The batch's way in and the losses' way out: page-locked host buffers (truly asynchronous
  // copies), the tokens uploaded on their own stream, which the compute stream waits for by an
  // event. (The batch arrives with the call, the loader having prefetched it on its thread, so
  // the upload cannot overlap this step's compute: 64 KB, ~10 us.)
  cu::PinnedBuffer staging_;   // (2 maxN) int32: inputs, then targets
  cu::PinnedBuffer csr_host_;  // (3 maxN + 2) int32: group_positions' layout of csr_
  int32_t csr_rows_ = 0;       // distinct tokens of the batch grouped last
  cu::Event copy_fork_{false};
  // The bf16 training micro-batch as a CUDA graph (run_graph; PRIMAL_GRAPH=0: off): per
  // configuration (batch shape, loss scale, mask) the graph, the casts' slots (their counters
  // relative to the call's start) and what a call adds to each vote state's counters.
  struct GraphSlot {
    cu::VoteState* st;
    int64_t events, events_this_step;
  };
  struct GraphDelta {
    cu::VoteState* st;
    int64_t events, events_this_step;
    bool folded;
  };
  struct GraphEntry {
    cu::Graph graph;
    std::vector<GraphSlot> slots;
    std::vector<GraphDelta> deltas;
    int turn = 0;  // aside_.turn after a call
  };
  std::map<std::string, GraphEntry> graphs_;
  std::set<std::string> eager_first_;  // configurations run once eagerly, the GEMMs' tuning (gemm_tune.h)
  bool graphs_on_ = false, capturing_ = false;
  cu::PinnedBuffer dyn_host_;          // (dyn_cap_) cu::CastDyn: the slots' scalars
  cu::CastDyn* dyn_dev_ = nullptr;     // (dyn_cap_)
  int64_t dyn_cap_ = 0;
  cu::PinnedBuffer nll_host_;  // (maxN) fp64
  cu::Stream copy_stream_;
  cu::Event tokens_ready_;
  int64_t free0_ = 0, peak_ = 0;
  bool prof_ = false;
  int64_t prof_steps_ = 0;  // steps begun; the first one's times are dropped (below)
  std::map<std::string, double> prof_s_;
  std::vector<std::unique_ptr<cu::Event>> prof_ev_;  // recorded events, in order (a pool)
  std::vector<std::string> prof_cat_;                // the category each event ends ("" none)
  size_t prof_n_ = 0;                                // events recorded since the last flush
};

void CudaEngine::mark(const char* category) {
  if (!prof_) return;
  if (prof_n_ == prof_ev_.size()) {
    if (prof_n_ >= 8192) flush_profile();
    if (prof_n_ == prof_ev_.size()) prof_ev_.push_back(std::make_unique<cu::Event>()), prof_cat_.emplace_back();
  }
  prof_ev_[prof_n_]->record(s_);
  prof_cat_[prof_n_] = category ? category : "";
  ++prof_n_;
}

void CudaEngine::flush_profile() {
  if (!prof_ || prof_n_ == 0) return;
  prof_ev_[prof_n_ - 1]->sync();
  for (size_t i = 1; i < prof_n_; ++i)
    if (!prof_cat_[i].empty()) prof_s_[prof_cat_[i]] += 1e-3 * double(prof_ev_[i]->ms_since(*prof_ev_[i - 1]));
  std::swap(prof_ev_[0], prof_ev_[prof_n_ - 1]);  // the last event starts the next span
  prof_cat_[0].clear();
  prof_n_ = 1;
}

CudaEngine::~CudaEngine() {
  if (prof_) cu::set_stage_hook(nullptr, nullptr);
  try {
    flush_profile();
  } catch (const std::exception&) {
    prof_s_.clear();  // a failed stream: no table
  }
  if (!prof_ || prof_s_.empty()) return;
  double total = 0;
  for (const auto& [k, v] : prof_s_) total += v;
  std::vector<std::pair<double, std::string>> rows;
  for (const auto& [k, v] : prof_s_) rows.push_back({v, k});
  std::sort(rows.rbegin(), rows.rend());
  std::fprintf(stderr, "cuda engine profile (GPU time per op, from events; steps after the first), %.3f s in all:\n",
               total);
  for (const auto& [v, k] : rows) std::fprintf(stderr, "  %-22s %9.3f s  %5.1f%%\n", k.c_str(), v, 100 * v / total);
}

CudaEngine::CudaEngine(const EngineContext& c, const GpuEngineOptions& o) : c_(c), o_(o), hp_(c.model->hp) {
  PRIMAL_CHECK(!c.teacher, "--teacher (distillation) runs on the CPU only for now: drop --device cuda");
  PRIMAL_CHECK(cu::attention_train_supports(hp_.head_dim), "--device cuda: head size {} is not supported (32, 64, 96, 128)",
               hp_.head_dim);
  for (const TrainLayer& l : c.model->layers)
    for (const Matrix* mt : l.matrices())
      PRIMAL_CHECK(mt->is_lut(), "--device cuda: {} is a dense matrix; the GPU trainer trains LUT layers (not --lut none)",
                   mt->name);
  s_ = stream_.get();
  const char* pe = std::getenv("PRIMAL_TRAIN_PROFILE");
  prof_ = pe && *pe && *pe != '0';
  if (prof_)
    cu::set_stage_hook([](void* ctx, const char* stage) { static_cast<CudaEngine*>(ctx)->mark_stage(stage); }, this);
  cu::set_train_math(o_.fast ? cu::TrainMath::Bf16 : cu::TrainMath::Fp32);
  {
    const char* e = std::getenv("PRIMAL_LUT_GEMM");
    fused_dequant_ = o_.fast && (o_.fused_dequant || (e && *e && *e != '0'));
  }
  bf16_ = o_.fast;
  free0_ = int64_t(cu::memory_info().first);
  blas_ = std::make_unique<cu::Blas>();
  if (bf16_) {  // PRIMAL_GEMM_TUNE=1 (or =verbose, printing the decisions): the GEMMs' tuning, off by default
    const char* e = std::getenv("PRIMAL_GEMM_TUNE");
    const std::string t = e ? e : "";
    if (t == "1" || t == "verbose") blas_->set_tuning(true, t == "verbose");
  }
  TrainModel& m = *c.model;
  const int64_t C = hp_.n_embd, NH = hp_.n_head, KVH = hp_.n_head_kv, HS = hp_.head_dim;
  const int64_t Q = NH * HS, KV = KVH * HS, FF = hp_.n_ff, V = hp_.n_vocab, L = hp_.n_layer;

  // Float gradients: a slice of one device block per host gradient vector (Grads::allocate decided
  // which), so that a step zeroes them all in one fill (a fill per vector was ~200 a step).
  Grads<float>& g = *c.grads;
  std::vector<std::vector<float>*> gvs = {&g.tok_embd.dW, &g.tok_embd.dscale, &g.output_norm, &g.output.dW,
                                          &g.output.dscale};
  for (LayerGrad<float>& lg : g.layers) {
    for (auto* v : {&lg.attn_norm, &lg.ffn_norm, &lg.bq, &lg.bk, &lg.bv}) gvs.push_back(v);
    for (MatGrad<float>* mg : lg.matrices()) gvs.push_back(&mg->dW), gvs.push_back(&mg->dscale);
  }
  constexpr size_t kGradAlign = 64;  // floats: every slice 256-byte aligned
  size_t grad_floats = 0;
  for (const std::vector<float>* v : gvs) grad_floats += (v->size() + kGradAlign - 1) / kGradAlign * kGradAlign;
  grads_ = arena_.of<float>(grad_floats);
  grad_floats_ = int64_t(grad_floats);
  for (size_t at = 0; std::vector<float>* v : gvs) {
    if (v->empty()) continue;
    gmap_[v->data()] = grads_ + at;
    at += (v->size() + kGradAlign - 1) / kGradAlign * kGradAlign;
  }

  // Parameters, matrices, votes.
  auto add_param = [&](std::vector<float>& v) -> float* {
    if (v.empty()) return nullptr;
    float* d = arena_.copy(v);
    pmap_[v.data()] = d;
    return d;
  };
  embd_ = upload_matrix(m.tok_embd);
  if (embd_->lut()) embd_->dscale = grad(g.tok_embd.dscale);
  else embd_->dW = grad(g.tok_embd.dW);
  if (hp_.tied_embeddings) {
    head_ = embd_;
  } else {
    head_ = upload_matrix(m.output);
    if (head_->lut()) head_->dscale = grad(g.output.dscale);
    else head_->dW = grad(g.output.dW);
  }
  out_norm_ = add_param(m.output_norm);
  g_out_norm_ = grad(g.output_norm);
  layers_.resize(m.layers.size());
  for (size_t p = 0; p < m.layers.size(); ++p) {
    TrainLayer& tl = m.layers[p];
    LayerGrad<float>& lg = g.layers[p];
    DevLayer& d = layers_[p];
    d.attn_norm = add_param(tl.attn_norm), d.ffn_norm = add_param(tl.ffn_norm);
    d.bq = add_param(tl.bq), d.bk = add_param(tl.bk), d.bv = add_param(tl.bv);
    d.g_attn_norm = grad(lg.attn_norm), d.g_ffn_norm = grad(lg.ffn_norm);
    d.g_bq = grad(lg.bq), d.g_bk = grad(lg.bk), d.g_bv = grad(lg.bv);
    DevMat** dm[] = {&d.wq, &d.wk, &d.wv, &d.wo, &d.w_gate, &d.w_up, &d.w_down};
    const auto hm = tl.matrices();
    const auto gm = lg.matrices();
    for (size_t k = 0; k < hm.size(); ++k) {
      *dm[k] = upload_matrix(*hm[k]);
      (*dm[k])->dscale = grad(gm[k]->dscale);
    }
  }
  // The bf16 mode's vote cast forms the column statistic (momentum with second moments) in one
  // workspace for every matrix (the planner counts it under the same condition).
  // Whole-matrix casts queue their folds (votes.h CastFoldQueue): room for a layer's block sums, so
  // a layer's folds go in one launch.
  int64_t I_max = 0, part_floats = 0, mat_max = 0;
  for (const auto& [mt, dm] : mats_)
    if (dm->votes) I_max = std::max(I_max, dm->view.I);
  for (const DevLayer& d : layers_) {
    int64_t sum = 0;
    for (const DevMat* m : {d.wq, d.wk, d.wv, d.wo, d.w_gate, d.w_up, d.w_down})
      if (m && m->votes) sum += cu::cast_part_floats(m->view.O, m->view.I), mat_max = std::max(mat_max, m->view.O * m->view.I);
    part_floats = std::max(part_floats, sum);
  }
  if (bf16_ && I_max > 0 && gpu_vote_params(c.votes->config(), c.votes->governor(), 0, 1.0).moments()) {
    cast_ws_ = cu::cast_workspace_at(arena_.of<unsigned char>(size_t(cu::cast_workspace_bytes(I_max, part_floats))),
                                     I_max, part_floats, s_);
    // PRIMAL_FOLD_NOW=1: every fold right after its cast (the previous behaviour, for comparisons).
    const char* now = std::getenv("PRIMAL_FOLD_NOW");
    if (!(now && *now && *now != '0')) cast_ws_.queue = &fold_queue_;
    for (auto& [mt, dm] : mats_)
      if (dm->votes) dm->votes->state.ws = &cast_ws_;
    // The casts beside the GEMMs (PRIMAL_CAST_ASIDE=0: on the compute stream, for comparisons), with
    // dW buffers for the largest layer matrix.
    const char* aside = std::getenv("PRIMAL_CAST_ASIDE");
    aside_on_ = !cu::votes_v1() && !(aside && *aside == '0');
    if (aside_on_) {
      const int64_t cap = mat_max;  // (the planner's cast_aside_bytes)
      aside_.capacity = cap;
      aside_.stream = cast_stream_.get();
      for (int k = 0; k < 2; ++k) {
        aside_.dw[k] = arena_.of<uint16_t>(size_t(cap));
        aside_.gemm_done[k] = aside_ev_[2 * k].get();
        aside_.dw_free[k] = aside_ev_[2 * k + 1].get();
      }
      // The fused weight gradient + cast (GpuEngineOptions::fused_dw) where the device runs it, for
      // the matrices it serves; its workspace is allocated either way (the planner counts it).
      int64_t fused_part = 0, fused_scratch = 0;
      for (const DevLayer& d : layers_) {
        int64_t pf = 0, sf = 0;
        for (const DevMat* m : {d.wq, d.wk, d.wv, d.wo, d.w_gate, d.w_up, d.w_down})
          if (m && m->votes)
            pf += cu::dw_fused_part_floats(m->view.O, m->view.I), sf += cu::dw_fused_scratch_floats(m->view.O, m->view.I);
        fused_part = std::max(fused_part, pf), fused_scratch = std::max(fused_scratch, sf);
      }
      if (fused_part > 0) {
        fused_ws_ = cu::cast_workspace_at(
            arena_.of<unsigned char>(size_t(cu::cast_workspace_bytes(I_max, fused_part, false))), I_max, fused_part, s_,
            false);
        fused_ws_.queue = &fused_queue_;
        float* fs = arena_.of<float>(size_t(fused_scratch));
        const char* e = std::getenv("PRIMAL_DW_FUSED");
        if ((o.fused_dw || (e && *e && *e != '0')) && cu::dw_cast_available()) {
          aside_.fused_ws = &fused_ws_;
          aside_.fused_scratch = fs;
          aside_.fused_scratch_floats = fused_scratch;
        }
      }
    }
  }
  {
    const char* e = std::getenv("PRIMAL_ATTN_SIDE");
    attn_side_ = !(e && *e == '0');
    const char* e16 = std::getenv("PRIMAL_ATTN_B16");
    attn_b16_grads_ = !(e16 && *e16 == '0');
    const char* ep = std::getenv("PRIMAL_PROJ_B16");
    proj_b16_ = bf16_ && !(ep && *ep == '0');
  }
  apply_desc_ = arena_.of<unsigned char>(cu::apply_batch_desc_bytes(mats_.size()));
  // AdamW's parameters, in its order, with their moments.
  for (FloatParam& fp : c.adam->params()) {
    DevParam d;
    d.n = int64_t(fp.n);
    d.p = pmap_.at(fp.p);
    d.g = gmap_.at(fp.g);
    d.m = arena_.copy(fp.m);
    d.v = arena_.copy(fp.v);
    dparams_.push_back(d);
  }
  std::vector<cu::SumSquaresItem> all_sq;
  for (const DevParam& d : dparams_) all_sq.push_back({d.g, d.n, nullptr});
  ss_ = arena_.of<double>(std::max<size_t>(1, dparams_.size()));
  ss_scratch_ = arena_.of<double>(size_t(cu::sum_squares_batch_scratch(all_sq)));
  batch_desc_ = arena_.of<unsigned char>(cu::batch_desc_bytes(dparams_.size()));
  flips_ = arena_.of<unsigned long long>(1);

  // RoPE frequencies.
  rope_.head_dim = m.rope.head_dim;
  rope_.n_rot = m.rope.n_rot;
  rope_.neox = m.rope.neox;
  rope_.inv_freq = arena_.copy(m.rope.inv_freq);
  // The cos/sin table of every position a micro-batch can hold (bitwise the per-pair fp64 values).
  rope_.table_len = std::max<int64_t>(1, c.max_seq);
  float* cs = arena_.of<float>(size_t(rope_.table_len * rope_.n_rot));
  cu::rope_table(cs, rope_.table_len, rope_, s_);
  rope_.cos_sin = cs;

  // Workspace.
  const int64_t B = std::max<int64_t>(1, c.max_batch), T = std::max<int64_t>(1, c.max_seq);
  const int64_t N = maxN_ = B * T;
  head_chunk_ = cuda_head_chunk(o_);
  head_chunk_ = std::min(head_chunk_, N);
  res_ = arena_.of<float>(size_t((L + 1) * N * C));
  xnf_ = arena_.of<float>(size_t(N * C)), rstdf_ = arena_.of<float>(size_t(N));
  dx_ = arena_.of<float>(size_t(N * C)), dxnf_ = arena_.of<float>(size_t(N * C));
  // (bf16 mode: dh_ as bf16 (N, FF), the attention backward's workspace, the stacked q, k, v:
  // memory_plan.h bf16_dh_floats; dgate's bf16 copy written over dh by SwiGLU's backward.)
  dh_floats_ = bf16_ ? bf16_dh_floats(N, FF, NH, HS, Q + 2 * KV) : N * FF;
  // dq, dk, dv as the column blocks of one (N, Q + 2 KV) matrix: the input gradient of q, k and v
  // is then one GEMM over the stacked weights (lut_linear_backward_input_group).
  if (bf16_) ldqkv_ = Q + 2 * KV;
  {
    // The backward's buffers that nothing reads across the head (all but dx_, its bf16 copy and
    // dxnf_: the output norm's backward) in one block, where the bf16 mode's LUT head sums its
    // weight gradient over the logits chunks (hdw_, (V, C) bf16) before its one cast; the block is
    // the larger of the two (memory_plan.cpp's backward scratch).
    char* base = nullptr;
    int64_t at = 0;
    auto take = [&](int64_t bytes) {
      void* p = base ? base + at : nullptr;
      at += (bytes + 255) / 256 * 256;
      return p;
    };
    auto carve = [&] {
      at = 0;
      dxn_ = static_cast<float*>(take(N * C * 4));
      dq_ = static_cast<float*>(take(N * Q * 4)), datt_ = static_cast<float*>(take(N * Q * 4));
      dk_ = static_cast<float*>(take(N * KV * 4)), dv_ = static_cast<float*>(take(N * KV * 4));
      dh_ = static_cast<float*>(take(dh_floats_ * 4));
      if (bf16_) dub_ = static_cast<uint16_t*>(take(N * FF * 2)), dqb_ = static_cast<uint16_t*>(take(N * ldqkv_ * 2));
    };
    carve();
    const bool head_trains = head_->lut() && head_->dscale;  // (its gradient: the planner's train_embeddings)
    const int64_t hdw_bytes = bf16_ && head_trains ? V * C * 2 : 0;
    base = static_cast<char*>(arena_.bytes(size_t(std::max(at, hdw_bytes))));
    carve();
    if (hdw_bytes > 0) hdw_ = reinterpret_cast<uint16_t*>(base);
  }
  auto b16 = [&](int64_t n) { return arena_.of<uint16_t>(size_t(n)); };
  if (bf16_) {
    dgate_ = dup_ = nullptr;
    dxb_ = b16(N * C), dgb_ = reinterpret_cast<uint16_t*>(dh_);
    dkb_ = dqb_ + Q, dvb_ = dkb_ + KV;
    xnfb_ = b16(N * C);
  } else {
    dgate_ = arena_.of<float>(size_t(N * FF)), dup_ = arena_.of<float>(size_t(N * FF));
  }
  kept_ = o_.kept_layers > 0 ? std::min(o_.kept_layers, L) : o_.recompute ? 0 : L;
  // The layers below the kept ones with their own attention output (N, Q) bf16 and lse (N, NH), and
  // the lowest qkv_layers with their own q, k, v (bf16, after RoPE).
  PRIMAL_CHECK((!o_.keep_attention && o_.qkv_layers == 0) || (bf16_ && o_.recompute),
               "cuda engine: attention outputs and q, k, v are kept for recomputed layers in the bf16 mode only");
  PRIMAL_CHECK(o_.qkv_layers >= 0 && o_.qkv_layers <= L - kept_, "cuda engine: q, k, v kept for {} of {} layers",
               o_.qkv_layers, L - kept_);
  qkv_kept_ = o_.qkv_layers;
  const bool shared_set = kept_ < L;
  // A layer's activation set, its buffers from take(bytes). The shared set leaves out what every
  // layer using it keeps of its own (attention outputs, q, k, v).
  auto layout = [&](Acts& a, bool shared, const std::function<void*(int64_t)>& take) {
    auto f32 = [&](int64_t n) { return static_cast<float*>(take(n * 4)); };
    auto h16 = [&](int64_t n) { return static_cast<uint16_t*>(take(n * 2)); };
    const bool own_att = shared && o_.keep_attention, own_qkv = shared && qkv_kept_ == L - kept_;
    a.rstd1 = f32(N);
    a.lse = own_att ? nullptr : f32(N * NH);
    if (bf16_) {  // q, k, v, att only as bf16 (the flash kernels' operands; a.attb below)
      a.q = a.k = a.v = a.att = nullptr;
      if (!own_qkv) a.qb = h16(N * Q), a.kb = h16(N * KV), a.vb = h16(N * KV);
    } else {
      a.q = f32(N * Q), a.k = f32(N * KV), a.v = f32(N * KV);
      a.att = f32(N * Q);
    }
    a.mid = f32(N * C), a.rstd2 = f32(N);
    if (bf16_) {
      a.gate = a.up = nullptr;
      a.gateb = h16(N * FF), a.upb = h16(N * FF);
      a.xn1 = a.xn2 = a.h = nullptr;
      a.xn1b = h16(N * C), a.attb = own_att ? nullptr : h16(N * Q), a.xn2b = h16(N * C), a.hb = h16(N * FF);
    } else {
      a.gate = f32(N * FF), a.up = f32(N * FF);
      a.xn1 = f32(N * C), a.xn2 = f32(N * C), a.h = f32(N * FF);
    }
  };
  acts_.resize(size_t(kept_ + (shared_set ? 1 : 0)));
  for (int64_t k = 0; k < kept_; ++k)
    layout(acts_[size_t(k)], false, [&](int64_t n) { return arena_.bytes(size_t(n)); });
  head_b16_ = bf16_ && head_->lut();
  ldl_ = bf16_logits_stride(V);
  const int64_t logit_bytes = head_b16_ ? head_chunk_ * ldl_ * 2 : head_chunk_ * V * 4;
  void* logits = nullptr;
  if (shared_set) {
    // The shared set and the logits chunk in one block: the head runs after the last forward
    // layer and before the first backward one, when no layer's set in it is alive (a recomputed
    // layer is rebuilt before its backward, a frozen one's forward is never read again).
    int64_t set_bytes = 0;
    Acts probe;
    layout(probe, true, [&](int64_t n) { set_bytes += (n + 255) / 256 * 256; return nullptr; });
    auto* base = static_cast<char*>(arena_.bytes(size_t(std::max(set_bytes, logit_bytes))));
    int64_t at = 0;
    layout(acts_[size_t(kept_)], true, [&](int64_t n) {
      void* p = base + at;
      at += (n + 255) / 256 * 256;
      return p;
    });
    logits = base;
  } else {
    logits = arena_.bytes(size_t(logit_bytes));
  }
  if (head_b16_) logitsb_ = static_cast<uint16_t*>(logits);
  else logits_ = static_cast<float*>(logits);
  if ((o_.keep_attention || qkv_kept_ > 0) && shared_set)
    for (int64_t l = 0; l < L - kept_; ++l) {
      Acts v = acts_[size_t(kept_)];
      if (o_.keep_attention) v.attb = b16(N * Q), v.lse = arena_.of<float>(size_t(N * NH));
      if (l < qkv_kept_) v.qb = b16(N * Q), v.kb = b16(N * KV), v.vb = b16(N * KV);
      views_.push_back(v);
    }
  // The GEMM scratch: the largest layer matrix whole (one dequantization and one GEMM per call),
  // at least one weight-gradient tile of the head.
  int64_t sc = cu::lut_grad_scratch_floats(C);
  for (const auto& [mt, dm] : mats_)
    if (dm->lut()) sc = std::max(sc, mt == &m.tok_embd || mt == &m.output ? cu::lut_grad_scratch_floats(mt->I) : mt->O * mt->I);
  mma_attention_ = bf16_;
  PRIMAL_CHECK(!mma_attention_ || cu::attention_mma_supports(HS), "--fast: head size {} is not supported", HS);
  using Cudnn = GpuEngineOptions::Cudnn;
  const Cudnn cm = o_.cudnn_attention == Cudnn::Auto && cu::cudnn_attention_forced() ? Cudnn::On : o_.cudnn_attention;
  cudnn_attn_ = mma_attention_ && cu::cudnn_attention_loaded() && (cm == Cudnn::On || (cm == Cudnn::Auto && HS >= 128));
  // The flash backward's workspace (bf16 dout, lse, D) lives in dh_, free during attention.
  PRIMAL_CHECK(!mma_attention_ || size_t(dh_floats_) >= cu::attention_backward_mma_workspace(B, T, NH, HS, true),
               "--fast: {} floats cannot hold the attention backward's workspace", dh_floats_);
  scratch_floats_ = sc;
  scratch_ = arena_.of<float>(size_t(sc));
  nll_ = arena_.of<double>(size_t(N));
  // The bf16 mode sums the norms' weight gradients in row slabs (train_ops.h); the fp32 mode keeps
  // the single pass whose order the CPU-equality tests hold.
  if (bf16_) dw_slabs_ = arena_.of<double>(size_t(cu::rmsnorm_dw_scratch_doubles(N, C)));
  staging_ = cu::PinnedBuffer(size_t(2 * N) * sizeof(int32_t));
  csr_host_ = cu::PinnedBuffer(size_t(3 * N + 2) * sizeof(int32_t));
  if (bf16_) {
    const char* e = std::getenv("PRIMAL_GRAPH");
    graphs_on_ = !(e && *e == '0');
    dyn_cap_ = cu::kGraphCastSlots;
    dyn_host_ = cu::PinnedBuffer(size_t(dyn_cap_) * sizeof(cu::CastDyn));
    dyn_dev_ = arena_.of<cu::CastDyn>(size_t(dyn_cap_));
  }
  nll_host_ = cu::PinnedBuffer(size_t(N) * sizeof(double));
  tokens_ = arena_.of<int32_t>(size_t(N)), targets_ = arena_.of<int32_t>(size_t(N)), flag_ = arena_.of<int32_t>(1);
  csr_ = arena_.of<int32_t>(size_t(3 * N + 2));
  stream_.sync();
  note_memory();
  if (o_.verbose) {
    const std::string kept = kept_ == L ? "all activations kept"
                             : "the top " + std::to_string(kept_) + " layers' activations kept" +
                                   (o_.recompute ? ", the others recomputed" : "");
    std::fprintf(stderr, "cuda engine: %.2f GiB allocated (%s; %lld tokens per micro-batch, head chunk %lld)\n",
                 double(arena_.total()) / double(1 << 30), kept.c_str(), (long long)N, (long long)head_chunk_);
  }
}

DevMat* CudaEngine::upload_matrix(Matrix& m) {
  auto& slot = mats_[&m];
  if (slot) return slot.get();
  slot = std::make_unique<DevMat>();
  DevMat& d = *slot;
  d.host = &m;
  if (!m.is_lut()) {
    d.dense = arena_.copy(m.dense);
    pmap_[m.dense.data()] = d.dense;
    return &d;
  }
  LutWeight& L = *m.lut;
  d.view.type = L.type;
  d.view.O = L.O, d.view.I = L.I, d.view.G = L.G;
  d.view.idx = arena_.copy(L.idx);
  float* scale = arena_.copy(L.scale);
  pmap_[L.scale.data()] = scale;
  d.view.scale = scale;
  d.view.grid = arena_.copy(L.grid);
  cu::check_lut_view(d.view, m.name.c_str());
  d.hv = c_.votes->find(&m);
  if (d.hv) {
    const cu::VoteParams p = gpu_vote_params(c_.votes->config(), c_.votes->governor(), 0, 1.0);
    // The bf16 mode attaches the cast's column workspace (below): no per-tile column sums.
    d.votes = std::make_unique<cu::DeviceVotes>(
        cu::make_device_votes(d.view, p, d.hv->id, s_, bf16_ && !cu::votes_v1()));
    // The host state (zero at the start, a checkpoint's on resume) replaces the fresh one.
    cu::VoteState& st = d.votes->state;
    const LutVotes& h = *d.hv;
    if (st.v8) cu::copy_to_device_async(st.v8, h.v8.data(), h.v8.size(), s_);
    if (st.v16) cu::copy_to_device_async(st.v16, h.v16.data(), h.v16.size() * 2, s_);
    if (st.cool) cu::copy_to_device_async(st.cool, h.cool.data(), h.cool.size(), s_);
    if (st.row_sq) cu::copy_to_device_async(st.row_sq, h.row_sq.data(), h.row_sq.size() * 4, s_);
    if (st.col_sq) cu::copy_to_device_async(st.col_sq, h.col_sq.data(), h.col_sq.size() * 4, s_);
    if (st.col_norm && !h.col_norm.empty()) cu::copy_to_device_async(st.col_norm, h.col_norm.data(), h.col_norm.size() * 4, s_);
    st.events = h.events;
    stream_.sync();
  }
  return &d;
}

void CudaEngine::note_memory() {
  const int64_t used = free0_ - int64_t(cu::memory_info().first);
  peak_ = std::max(peak_, used);
}

void CudaEngine::begin_step(int64_t step, double sched) {
  // The first step loads kernel modules and runs cuBLAS's heuristics: it would be charged to
  // whichever op came first, so the profile starts with the second.
  if (prof_ && ++prof_steps_ == 2) flush_profile(), prof_s_.clear();
  c_.votes->begin_step(step, sched);  // the host twin keeps step and schedule (checkpoints)
  vp_ = gpu_vote_params(c_.votes->config(), c_.votes->governor(), step, sched);
  for (auto& [mt, d] : mats_)
    if (d->votes) d->votes->state.begin_step();
  if (grads_) cu::fill_bytes_async(grads_, 0, size_t(grad_floats_) * 4, s_);
}

void CudaEngine::lin_fwd(const DevMat& W, cu::Operand inp, int64_t n, const float* bias, float* out) {
  if (W.lut()) cu::lut_linear_forward(*blas_, W.view, inp, n, bias, out, scratch_, scratch_floats_, s_);
  else cu::dense_linear_forward(*blas_, W.dense, W.host->O, W.host->I, inp.f32, n, bias, out, s_);
}

// linear_backward with grad_of's choices (forward_backward.cpp): only dinp when the matrix is not
// trainable; LUT: scale gradient (when scales train), bias, votes; dense: dW, bias.
void CudaEngine::lin_bwd(float* dinp, bool accumulate, cu::Operand dout, cu::Operand inp, int64_t n, DevMat& W,
                         bool trainable, bool scales, float* dbias) {
  if (dinp) {
    if (W.lut()) cu::lut_linear_backward_input(*blas_, W.view, dout, n, dinp, accumulate, scratch_, scratch_floats_, s_);
    else cu::dense_linear_backward_input(*blas_, W.dense, W.host->O, W.host->I, dout.f32, n, dinp, accumulate, s_);
    mark_stage("dinp");
  }
  if (!trainable) return;
  if (W.lut()) {
    cu::LutWeightGrad g;
    g.dscale = scales ? W.dscale : nullptr;
    g.dbias = dbias;
    g.votes = W.votes ? &W.votes->state : nullptr;
    g.params = &vp_;
    if (aside_on_) g.aside = &aside_;
    if (g.dscale || g.dbias || g.votes)
      cu::lut_linear_backward_weight(*blas_, W.view, dout, inp, n, g, scratch_, scratch_floats_, s_);
  } else if (W.dW || dbias) {
    cu::dense_linear_backward_weight(*blas_, W.host->O, W.host->I, dout.f32, inp.f32, n, W.dW, dbias, s_);
  }
}

// forward_layers' body for logical layer l (need_out false: a recomputation, which does not need
// the layer's output; the residual stream keeps it from the forward).
void CudaEngine::forward_layer(int64_t l, Acts& a, int64_t B, int64_t T, bool need_out) {
  const int64_t C = hp_.n_embd, NH = hp_.n_head, KVH = hp_.n_head_kv, HS = hp_.head_dim, FF = hp_.n_ff, N = B * T;
  const DevLayer& w = layers_[size_t(c_.model->layer_of[size_t(l)])];
  float* x = res(l);
  const char* ew = need_out ? "norm/rope/add fwd" : "recompute: elementwise";
  const char* lf = need_out ? "linear fwd" : "recompute: linear";
  if (need_out && pending_add_) {  // the layer below's res[l] = mid + W_down h, with this norm
    add_pending(bf16_ ? nullptr : a.xn1, bf16_ ? a.xn1b : nullptr, a.rstd1, x, w.attn_norm, N);
  } else if (bf16_) {
    cu::rmsnorm_forward_train_bf16(a.xn1b, a.rstd1, x, w.attn_norm, N, C, hp_.rms_eps, s_);
  } else {
    cu::rmsnorm_forward_train(a.xn1, a.rstd1, x, w.attn_norm, N, C, hp_.rms_eps, s_);
  }
  mark(ew);
  // A recomputed layer keeping its q, k, v (the lowest qkv_kept_) has nothing to rebuild here.
  if (need_out || l >= qkv_kept_) {
    // The bf16 mode keeps q, k, v as bf16 only: the GEMMs write fp32 into the backward's q/k/v
    // gradient buffers (free in the forward, and in a recomputation: the layer above has consumed
    // them), RoPE runs there in fp32, then the bf16 copies.
    float* q = bf16_ ? dq_ : a.q;
    float* k = bf16_ ? dk_ : a.k;
    float* v = bf16_ ? dv_ : a.v;
    // v without a bias goes straight out of its GEMM as bf16 (the only copy the bf16 mode reads); the
    // bf16 mode dequantizes q, k and v in one launch where they fit the scratch together.
    const bool v_b16 = bf16_ && !w.bv;
    // Likewise q and k without biases, then rotated in place as bf16 (where the group fits).
    const bool qk_b16 = bf16_ && !w.bq && !w.bk && cu::rope_bf16_inplace_ok(rope_, T);
    // Biases added later, by RoPE's kernel and v's bf16 copy, where those write only bf16 values.
    const bool late_bias = rope_adds_bias();
    const float* bq = late_bias ? nullptr : w.bq;
    const float* bk = late_bias ? nullptr : w.bk;
    const float* bv = late_bias ? nullptr : w.bv;
    const cu::LutTrainView qkv[3] = {w.wq->view, w.wk->view, w.wv->view};
    // All three fp32 with late biases: one GEMM into the column blocks of one (N, Q + 2 KV) matrix in
    // dh_'s memory (free in a forward and in a recomputation; bf16_dh_floats holds it), read with that
    // row stride after.
    const int64_t Q = NH * HS, KV = KVH * HS;
    int64_t ldx = late_bias && !qk_b16 && !v_b16 ? Q + 2 * KV : 0;
    bool grouped = false;
    if (ldx > 0) {
      cu::LutGroupOut st[3];
      st[0].f32 = dh_, st[1].f32 = dh_ + Q, st[2].f32 = dh_ + Q + KV;
      grouped = cu::lut_linear_forward_group(*blas_, qkv, st, 3, a.xn1b, N, scratch_, scratch_floats_, s_, ldx);
      if (grouped) q = st[0].f32, k = st[1].f32, v = st[2].f32;
      else ldx = 0;
    }
    cu::LutGroupOut qkv_out[3];
    if (qk_b16) qkv_out[0].bf16 = a.qb, qkv_out[1].bf16 = a.kb;
    else qkv_out[0].f32 = q, qkv_out[0].bias = bq, qkv_out[1].f32 = k, qkv_out[1].bias = bk;
    if (v_b16) qkv_out[2].bf16 = a.vb;
    else qkv_out[2].f32 = v, qkv_out[2].bias = bv;
    if (!grouped)
      grouped =
          bf16_ && cu::lut_linear_forward_group(*blas_, qkv, qkv_out, 3, a.xn1b, N, scratch_, scratch_floats_, s_);
    if (!grouped) {
      lin_fwd(*w.wq, {a.xn1, a.xn1b}, N, bq, q);
      lin_fwd(*w.wk, {a.xn1, a.xn1b}, N, bk, k);
      if (v_b16) cu::lut_linear_forward_bf16_out(*blas_, w.wv->view, a.xn1b, N, a.vb, scratch_, scratch_floats_, s_);
      else lin_fwd(*w.wv, {a.xn1, a.xn1b}, N, bv, v);
    }
    mark(lf);
    if (grouped && qk_b16) {
      cu::rope_forward_train_bf16(a.qb, B, T, NH, rope_, s_);
      cu::rope_forward_train_bf16(a.kb, B, T, KVH, rope_, s_);
    } else {
      rope(q, a.qb, B, T, NH, false, 0, late_bias ? w.bq : nullptr, ldx);
      rope(k, a.kb, B, T, KVH, false, 0, late_bias ? w.bk : nullptr, ldx);
    }
    if (!v_b16) {
      if (late_bias) cu::to_bf16_rows(a.vb, KV, v, N, KV, s_, w.bv, ldx);
      else bf16_copy(a.vb, v, N * KV);
    }
    mark(ew);
  }
  if (!need_out && o_.keep_attention) {
    // (a recomputation: the attention output and lse kept from the forward)
  } else if (mma_attention_) {  // bf16 in, bf16 out (dh_, free here, cuDNN's workspace)
    if (!(cudnn_attn_ && cu::cudnn_attention_forward(a.attb, a.lse, a.qb, a.kb, a.vb, cudnn_shape(B, T), dh_,
                                                     size_t(dh_floats_) * 4, s_)))
      cu::attention_forward_mma(a.attb, a.lse, a.qb, a.kb, a.vb, B, T, NH, KVH, HS, s_);
  } else {
    cu::attention_forward_train(a.att, a.lse, a.q, a.k, a.v, B, T, NH, KVH, HS, s_);
  }
  mark(need_out ? "attention fwd" : "recompute: attention");
  // The bf16 mode's LUT o and down projections leave their GEMMs as bf16 (as PyTorch's autocast), in
  // dxnf_'s memory (free but in the head's backward and the output norm's), and the residual adds
  // read them there.
  auto* ob = reinterpret_cast<uint16_t*>(dxnf_);
  if (proj_b16_ && w.wo->lut()) {
    cu::lut_linear_forward_bf16_out(*blas_, w.wo->view, a.attb, N, ob, scratch_, scratch_floats_, s_);
    mark(lf);
    cu::add_rmsnorm_forward_train(nullptr, a.xn2b, a.rstd2, a.mid, x, ob, w.ffn_norm, N, C, hp_.rms_eps, s_);
  } else {
    lin_fwd(*w.wo, {a.att, a.attb}, N, nullptr, a.mid);
    mark(lf);
    cu::add_rmsnorm_forward_train(bf16_ ? nullptr : a.xn2, bf16_ ? a.xn2b : nullptr, a.rstd2, a.mid, x, w.ffn_norm, N,
                                  C, hp_.rms_eps, s_);
  }
  mark(ew);
  if (bf16_) {  // gate and up straight out of the GEMMs as bf16 (as PyTorch's autocast keeps them)
    const cu::LutTrainView gu[2] = {w.w_gate->view, w.w_up->view};
    cu::LutGroupOut gu_out[2];
    gu_out[0].bf16 = a.gateb, gu_out[1].bf16 = a.upb;
    if (cu::lut_linear_forward_group(*blas_, gu, gu_out, 2, a.xn2b, N, scratch_, scratch_floats_, s_)) {
      if (!need_out) gu_in_scratch_ = &w;  // (the backward's gate/up input gradient reuses them)
    } else {
      cu::lut_linear_forward_bf16_out(*blas_, w.w_gate->view, a.xn2b, N, a.gateb, scratch_, scratch_floats_, s_);
      cu::lut_linear_forward_bf16_out(*blas_, w.w_up->view, a.xn2b, N, a.upb, scratch_, scratch_floats_, s_);
    }
  } else {
    lin_fwd(*w.w_gate, a.xn2, N, nullptr, a.gate);
    lin_fwd(*w.w_up, a.xn2, N, nullptr, a.up);
  }
  mark(lf);
  // A bf16 recomputation leaves h to the SwiGLU backward, which forms it in the same pass over gate
  // and up (the down projection's weight gradient runs after it).
  if (bf16_ && need_out) cu::swiglu_forward_train_bf16(a.hb, a.gateb, a.upb, N * FF, s_);
  else if (!bf16_) cu::swiglu_forward_train(a.h, a.gate, a.up, N * FF, s_);
  mark(ew);
  if (!need_out) return;
  if (proj_b16_ && w.w_down->lut()) {
    cu::lut_linear_forward_bf16_out(*blas_, w.w_down->view, a.hb, N, ob, scratch_, scratch_floats_, s_);
    pending_b16_ = ob;
  } else {
    lin_fwd(*w.w_down, {a.h, a.hb}, N, nullptr, res(l + 1));
  }
  mark(lf);
  pending_add_ = a.mid;  // res[l + 1] (+)= mid: with the next norm (the next layer's or the output norm)
}

cu::CudnnAttnShape CudaEngine::cudnn_shape(int64_t B, int64_t T) const {
  cu::CudnnAttnShape sh;
  sh.B = B, sh.T = T, sh.NH = hp_.n_head, sh.KVH = hp_.n_head_kv, sh.HS = hp_.head_dim;
  sh.ldq = sh.NH * sh.HS, sh.ldk = sh.KVH * sh.HS, sh.ldd = ldqkv_;
  return sh;
}

void CudaEngine::add_pending(float* xn, uint16_t* xnb, float* rstd, float* x, const float* weight, int64_t N) {
  const int64_t C = hp_.n_embd;
  if (pending_b16_)
    cu::add_rmsnorm_forward_train(xn, xnb, rstd, x, pending_add_, pending_b16_, weight, N, C, hp_.rms_eps, s_);
  else
    cu::add_rmsnorm_forward_train(xn, xnb, rstd, x, pending_add_, weight, N, C, hp_.rms_eps, s_);
  pending_add_ = nullptr, pending_b16_ = nullptr;
}

LossSum CudaEngine::forward_backward(const TrainMask& mask, const int32_t* inputs, const int32_t* targets, int64_t B,
                                     int64_t T, double loss_scale, bool train) {
  TrainModel& m = *c_.model;
  const int64_t V = hp_.n_vocab, N = B * T;
  PRIMAL_CHECK(B > 0 && T > 0, "forward: empty batch ({} x {})", B, T);
  PRIMAL_CHECK(N <= maxN_, "forward: {} x {} tokens exceed the {} the CUDA engine was sized for", B, T, maxN_);
  PRIMAL_CHECK(!train || int64_t(mask.layer.size()) == m.n_physical(), "forward: mask of {} layers for {}",
               mask.layer.size(), m.n_physical());
  LossSum loss;
  for (int64_t t = 0; t < N; ++t) {
    PRIMAL_CHECK(inputs[t] >= 0 && inputs[t] < V, "token id {} at position {} is outside the vocabulary (0..{})",
                 inputs[t], t, V - 1);
    PRIMAL_CHECK(targets[t] < V, "target {} at position {} is outside the vocabulary (0..{})", targets[t], t, V - 1);
    loss.count += targets[t] >= 0;
  }
  // The batch into the page-locked buffers the micro-batch's copies read (free: the previous call
  // ended with a synchronization), and the LUT embedding's positions grouped by token.
  int32_t* staged = staging_.as<int32_t>();
  std::memcpy(staged, inputs, size_t(N) * 4);
  std::memcpy(staged + N, targets, size_t(N) * 4);
  if (train && embd_scale_grad(mask)) group_positions(inputs, N);
  cu::set_fused_dequant(fused_dequant_);  // process-wide: this engine's choice for its calls (and captures)
  if (train && bf16_ && graphs_on_ && !prof_) run_graph(mask, B, T, loss_scale);
  else enqueue(mask, B, T, loss_scale, train);
  stream_.sync();
  flush_profile();
  for (int64_t t = 0; t < N; ++t) loss.nll += nll_host_.as<double>()[t];
  note_memory();
  return loss;
}

// Positions grouped by token, increasing within a token (the CPU's order per scale), into the
// page-locked csr_host_ at fixed offsets: rows (maxN), start (maxN + 1), order (maxN), the count.
void CudaEngine::group_positions(const int32_t* inputs, int64_t N) {
  std::vector<int32_t> order(static_cast<size_t>(N));
  for (int64_t t = 0; t < N; ++t) order[size_t(t)] = int32_t(t);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return inputs[a] < inputs[b]; });
  int32_t* rows = csr_host_.as<int32_t>();
  int32_t* start = rows + maxN_;
  int32_t R = 0;
  for (int64_t k = 0; k < N; ++k) {
    const int32_t tok = inputs[order[size_t(k)]];
    if (R == 0 || rows[R - 1] != tok) rows[R] = tok, start[R] = int32_t(k), ++R;
  }
  start[R] = int32_t(N);
  std::memcpy(start + maxN_ + 1, order.data(), size_t(N) * 4);
  start[2 * maxN_ + 1] = R;
  csr_rows_ = R;
}

// The training micro-batch as a CUDA graph: captured on a configuration's first call (the host
// state the calls advance, the votes' counters, advancing as an eager call would), replayed after
// with the casts' scalars of the current counters written to the slots the capture recorded.
// A capture that fails (a call that cannot be captured, a cast whose scalars are launch arguments)
// is dropped, the state restored, and the engine runs eagerly from then on.
void CudaEngine::run_graph(const TrainMask& mask, int64_t B, int64_t T, double loss_scale) {
  uint64_t scale_bits = 0;  // the loss scale's exact bits (a graph bakes it into its kernels)
  std::memcpy(&scale_bits, &loss_scale, sizeof scale_bits);
  std::string key = std::to_string(B) + "," + std::to_string(T) + "," + std::to_string(scale_bits) + ",";
  for (bool b : mask.layer) key += b ? '1' : '0';
  key += std::string(",") + char('0' + mask.embd) + char('0' + mask.head) + char('0' + mask.out_norm) +
         char('0' + mask.scales);
  auto* dyn = dyn_host_.as<cu::CastDyn>();
  auto it = graphs_.find(key);
  // With the GEMMs' tuning on, a configuration's first call runs eagerly: tuning times its GEMMs,
  // which no capture can (gemm_tune.h); the capture then takes the kept choices.
  // So with cuDNN's attention: its plans are built and their kernels loaded outside any capture.
  if (it == graphs_.end() && (blas_->tuner() || cudnn_attn_) && eager_first_.insert(key).second) {
    enqueue(mask, B, T, loss_scale, true);
    return;
  }
  if (it != graphs_.end()) {
    GraphEntry& e = it->second;
    for (size_t k = 0; k < e.slots.size(); ++k) {
      const GraphSlot& sl = e.slots[k];
      dyn[k] = cu::cast_dyn(vp_, *sl.st, sl.st->events + sl.events, sl.st->events_this_step + sl.events_this_step);
    }
    for (const GraphDelta& d : e.deltas) {
      d.st->events += d.events, d.st->events_this_step += d.events_this_step;
      d.st->folded = d.folded;
    }
    aside_.turn = e.turn;
    e.graph.launch(s_);
    return;
  }
  // Capture. Every vote state's counters before, to restore on failure and to key the slots.
  std::vector<GraphDelta> before;
  for (auto& [mt, d] : mats_)
    if (d->votes) {
      cu::VoteState& st = d->votes->state;
      before.push_back({&st, st.events, st.events_this_step, st.folded});
    }
  const int turn0 = aside_.turn;
  cu::CastRecorder rec;
  rec.host = dyn, rec.device = dyn_dev_, rec.capacity = dyn_cap_;
  cu::Graph g;
  bool ok = false;
  cu::set_cast_recorder(&rec);
  capturing_ = true;
  try {
    cu::Graph::begin_capture(s_);
    cu::copy_to_device_async(dyn_dev_, dyn, size_t(dyn_cap_) * sizeof(cu::CastDyn), s_);  // the slots' scalars
    enqueue(mask, B, T, loss_scale, true);
    ok = g.end_capture(s_) && !rec.unsafe;
  } catch (const Error&) {
    g.end_capture(s_);  // (discarded)
  }
  capturing_ = false;
  cu::set_cast_recorder(nullptr);
  if (!ok) {
    for (const GraphDelta& b : before) {
      b.st->events = b.events, b.st->events_this_step = b.events_this_step;
      b.st->folded = b.folded;
    }
    aside_.turn = turn0;
    fold_queue_.items.clear(), fold_queue_.used = 0;
    pending_add_ = nullptr, pending_b16_ = nullptr;
    graphs_on_ = false;
    std::fprintf(stderr, "cuda engine: the step could not be captured as a CUDA graph; running it eagerly\n");
    enqueue(mask, B, T, loss_scale, true);
    return;
  }
  GraphEntry e;
  std::unordered_map<const cu::VoteState*, const GraphDelta*> start;
  for (const GraphDelta& b : before) start[b.st] = &b;
  for (const cu::CastRecorder::Slot& sl : rec.slots) {
    const GraphDelta& b = *start.at(sl.st);
    e.slots.push_back({sl.st, sl.events - b.events, sl.events_this_step - b.events_this_step});
  }
  for (const GraphDelta& b : before)
    e.deltas.push_back({b.st, b.st->events - b.events, b.st->events_this_step - b.events_this_step, b.st->folded});
  e.turn = aside_.turn;
  e.graph = std::move(g);
  e.graph.launch(s_);  // the host state has advanced as this call's; the slots hold its scalars
  graphs_.emplace(key, std::move(e));
}

// One micro-batch's forward (and with train its backward) queued on the streams: the batch from
// the page-locked buffers (forward_backward), nothing read back but the losses' copy.
void CudaEngine::enqueue(const TrainMask& mask, int64_t B, int64_t T, double loss_scale, bool train) {
  TrainModel& m = *c_.model;
  const int64_t C = hp_.n_embd, NH = hp_.n_head, KVH = hp_.n_head_kv, HS = hp_.head_dim;
  const int64_t FF = hp_.n_ff, V = hp_.n_vocab, N = B * T, L = hp_.n_layer;
  mark(nullptr);
  const int32_t* staged = staging_.as<int32_t>();
  copy_fork_.record(s_);  // the copy stream joins the compute stream's order (and a capture of it)
  copy_fork_.wait_in(copy_stream_.get());
  cu::copy_to_device_async(tokens_, staged, size_t(N) * 4, copy_stream_.get());
  cu::copy_to_device_async(targets_, staged + N, size_t(N) * 4, copy_stream_.get());
  tokens_ready_.record(copy_stream_.get());
  tokens_ready_.wait_in(s_);
  if (train && aside_on_)  // both dW buffers free (a capture's waits then name its own records)
    for (cudaEvent_t e : aside_.dw_free) cu::record_event(e, s_);

  // Forward (forward_layers).
  if (embd_->lut()) cu::lut_embedding_rows(res(0), tokens_, N, embd_->view, s_);
  else cu::embedding_forward_train(res(0), tokens_, N, embd_->dense, V, C, flag_, s_);
  mark("embedding");
  pending_add_ = nullptr, pending_b16_ = nullptr;
  for (int64_t l = 0; l < L; ++l) forward_layer(l, acts(l), B, T, true);
  if (pending_add_) add_pending(xnf_, nullptr, rstdf_, res(L), out_norm_, N);
  else cu::rmsnorm_forward_train(xnf_, rstdf_, res(L), out_norm_, N, C, hp_.rms_eps, s_);
  bf16_copy(xnfb_, xnf_, N * C);
  mark("norm/rope/add fwd");

  // Head + loss, a chunk of rows at a time; the head's backward right there. Unscored rows
  // (target < 0) get loss 0 and a zero gradient row from the loss kernels.
  const bool head_tr = train && mask.head;
  // The bf16 mode's LUT head: its weight gradient summed over the chunks (bf16, hdw_) and cast once
  // a micro-batch, as every layer matrix, instead of once a chunk (each cast a pass over the whole
  // head: 4 of them took ~4 ms of a qwen2.5-1.5b step). Elsewhere the chunks' casts.
  cu::VoteState* const head_votes = head_->votes ? &head_->votes->state : nullptr;
  float* const head_dscale = mask.scales ? head_->dscale : nullptr;
  const bool head_sum = head_tr && hdw_ && head_b16_ && (head_votes || head_dscale) &&
                        cu::lut_grad_tiles_bf16_ok(head_->view, head_votes, &vp_);
  stage_prefix_ = "head";
  for (int64_t c0 = 0; c0 < N; c0 += head_chunk_) {
    const int64_t n = std::min(head_chunk_, N - c0);
    const cu::Operand xin(xnf_ + c0 * C, xnfb_ ? xnfb_ + c0 * C : nullptr);
    // A LUT head in the bf16 mode: bf16 logits, the loss from them and the bf16 gradient in their
    // place (PyTorch autocast's arithmetic; a third of the fp32 chunk's memory, so chunks 4x as
    // long at the same memory: a quarter of the head's vote-cast passes). Otherwise fp32 logits.
    if (head_b16_)
      cu::lut_linear_forward_bf16_out(*blas_, head_->view, xin.bf16, n, logitsb_, scratch_, scratch_floats_, s_, ldl_);
    else lin_fwd(*head_, xin, n, nullptr, logits_);
    mark("head fwd");
    if (!train) {
      if (head_b16_) cu::cross_entropy_rows_bf16(logitsb_, targets_ + c0, n, V, nll_ + c0, s_, ldl_);
      else cu::cross_entropy_rows(logits_, targets_ + c0, n, V, nll_ + c0, s_);
      mark("head loss");
      continue;
    }
    if (head_b16_)
      cu::cross_entropy_backward_rows_bf16_inplace(logitsb_, targets_ + c0, n, V, loss_scale, nll_ + c0, s_, ldl_);
    else cu::cross_entropy_backward_rows(logits_, targets_ + c0, n, V, loss_scale, nll_ + c0, s_);
    mark("head loss");
    const cu::Operand dlogits = head_b16_ ? cu::Operand(nullptr, logitsb_, ldl_) : cu::Operand(logits_);
    lin_bwd(dxnf_ + c0 * C, false, dlogits, xin, n, *head_, false, false, nullptr);
    if (head_sum) cu::lut_weight_grad_sum_bf16(*blas_, head_->view, logitsb_, ldl_, xin.bf16, n, hdw_, c0 > 0, s_);
    else if (head_tr) lin_bwd(nullptr, false, dlogits, xin, n, *head_, true, mask.scales, nullptr);
  }
  if (head_sum) {  // the one cast, beside the output norm's backward and the top layer's recomputation
    cudaStream_t cs = aside_on_ ? cast_stream_.get() : s_;
    if (cs != s_) head_dw_ready_.record(s_), head_dw_ready_.wait_in(cs);
    cu::lut_grad_tiles_bf16(head_->view, hdw_, 0, V, head_dscale, head_votes, &vp_, cs);
    if (head_votes) cu::lut_votes_done(head_->view, *head_votes, vp_, cs);
    if (cs != s_) head_cast_done_.record(cs), head_wait_ = true;
    mark_stage("dW gemm");
  }
  stage_prefix_ = "linear bwd";
  cu::copy_to_host_async(nll_host_.data(), nll_, size_t(N) * 8, s_);  // read after the final sync

  if (train) {
    // The lowest logical layer the gradient must reach (forward_backward.cpp).
    const bool embd_grad = mask.embd && !embd_->lut() && embd_->dW;
    const bool embd_sg = embd_scale_grad(mask);
    const int64_t lowest = lowest_backward_layer(m, mask, embd_grad || embd_sg);
    PRIMAL_CHECK(o_.recompute || lowest >= L - kept_,
                 "cuda engine: the backward must reach layer {}, but activations are kept for the top {} layers only",
                 lowest, kept_);
    cu::fill_bytes_async(dx_, 0, size_t(N * C) * 4, s_);
    cu::rmsnorm_backward(dx_, mask.out_norm ? g_out_norm_ : nullptr, dxnf_, res(L), out_norm_, rstdf_, N, C, s_, dxb16(),
                         dw_slabs_);
    for (int64_t l = L - 1; l >= lowest; --l) {
      const int64_t p = m.layer_of[size_t(l)];
      DevLayer& w = layers_[size_t(p)];
      const bool tr = mask.layer[size_t(p)], sc = mask.scales;
      Acts& a = acts(l);
      const bool recomputed = l < L - kept_;
      // A bf16 recomputation that keeps q, k, v writes nothing of the backward's scratch: the down
      // projection's input gradient goes first, so that the recomputation's gate/up dequantization
      // is still in the GEMM scratch for their input gradient. (Not while the head's cast may still
      // read that memory: then the recomputation overlaps the cast.)
      auto* dhb = reinterpret_cast<uint16_t*>(dh_);
      const bool down_first = bf16_ && recomputed && l < qkv_kept_ && !head_wait_;
      if (down_first) {
        cu::lut_linear_backward_input_bf16_out(*blas_, w.w_down->view, dxb_, N, dhb, scratch_, scratch_floats_, s_);
        mark_stage("dinp");
      }
      gu_in_scratch_ = nullptr;
      // (one rebuilding q, k, v writes them in dq_ .. dh_)
      if (head_wait_ && recomputed && l >= qkv_kept_) head_cast_done_.wait_in(s_), head_wait_ = false;
      if (recomputed) forward_layer(l, a, B, T, false);  // (recomputation: the check above)
      if (head_wait_) head_cast_done_.wait_in(s_), head_wait_ = false;
      if (!down_first) gu_in_scratch_ = nullptr;
      // FFN: res[l+1] = mid + W_down (silu(W_gate xn2) * (W_up xn2))
      bool gu_done = false;
      if (bf16_) {  // dh straight out of its GEMM as bf16 (in dh_'s memory), SwiGLU's backward reading it
        if (!down_first) {
          cu::lut_linear_backward_input_bf16_out(*blas_, w.w_down->view, dxb_, N, dhb, scratch_, scratch_floats_, s_);
          mark_stage("dinp");
        }
        // (a recomputed layer's h from this pass, before the down projection's weight gradient reads it)
        cu::swiglu_backward_bf16(dgb_, dub_, dhb, a.gateb, a.upb, N * FF, s_, recomputed ? a.hb : nullptr);
        mark("norm/swiglu/rope bwd");
        if (gu_in_scratch_ == &w) {  // the gate/up input gradient before the scratch is written again
          const cu::LutTrainView gu[2] = {w.w_gate->view, w.w_up->view};
          const uint16_t* gu_d[2] = {dgb_, dub_};
          gu_done = cu::lut_linear_backward_input_group(*blas_, gu, gu_d, 2, N, dxn_, false, scratch_, scratch_floats_,
                                                        s_, 0, true);
          PRIMAL_CHECK(gu_done, "cuda engine: the gate/up weights were dequantized as a group, not their gradient");
          mark_stage("dinp");
        }
        gu_in_scratch_ = nullptr;
        lin_bwd(nullptr, false, {dx_, dxb_}, {a.h, a.hb}, N, *w.w_down, tr, sc, nullptr);
        mark("linear bwd");
      } else {
        lin_bwd(dh_, false, {dx_, dxb_}, {a.h, a.hb}, N, *w.w_down, tr, sc, nullptr);
        mark("linear bwd");
        cu::swiglu_backward(dgate_, dup_, dh_, a.gate, a.up, N * FF, s_);
      }
      mark("norm/swiglu/rope bwd");
      {
        const cu::LutTrainView gu[2] = {w.w_gate->view, w.w_up->view};
        const uint16_t* gu_d[2] = {dgb_, dub_};
        const bool grouped = gu_done || (bf16_ && cu::lut_linear_backward_input_group(*blas_, gu, gu_d, 2, N, dxn_, false,
                                                                                      scratch_, scratch_floats_, s_));
        if (grouped && !gu_done) mark_stage("dinp");
        lin_bwd(grouped ? nullptr : dxn_, false, {dgate_, dgb_}, {a.xn2, a.xn2b}, N, *w.w_gate, tr, sc, nullptr);
        lin_bwd(grouped ? nullptr : dxn_, true, {dup_, dub_}, {a.xn2, a.xn2b}, N, *w.w_up, tr, sc, nullptr);
      }
      mark("linear bwd");
      cu::rmsnorm_backward(dx_, tr ? w.g_ffn_norm : nullptr, dxn_, a.mid, w.ffn_norm, a.rstd2, N, C, s_, dxb16(),
                           dw_slabs_);
      mark("norm/swiglu/rope bwd");
      // Attention: mid = res[l] + W_o attn(rope(W_q xn1), rope(W_k xn1), W_v xn1)
      // The tensor-core attention backward takes dout as bf16 straight out of the o projection's
      // input-gradient GEMM (as PyTorch's autocast leaves it), in datt_'s memory.
      auto* dattb = reinterpret_cast<uint16_t*>(datt_);
      const bool datt_b16 = proj_b16_ && mma_attention_ && w.wo->lut();
      if (datt_b16) {
        cu::lut_linear_backward_input_bf16_out(*blas_, w.wo->view, dxb_, N, dattb, scratch_, scratch_floats_, s_);
        mark_stage("dinp");
      }
      lin_bwd(datt_b16 ? nullptr : datt_, false, {dx_, dxb_}, {a.att, a.attb}, N, *w.wo, tr, sc, nullptr);
      mark("linear bwd");
      // The bf16 mode sums the q, k, v bias gradients from their stacked bf16 input gradient (as
      // PyTorch's autocast, from the bf16 output gradient): no fp32 copies of dq, dk, dv for them.
      const bool bias_b16 = bf16_ && dw_slabs_ && tr && (w.g_bq || w.g_bk || w.g_bv);
      // dq, dk (rotated back) and dv straight out of the attention backward as the bf16 operands of the
      // q, k, v backward, where nothing reads their fp32 values (LUT matrices, the bias gradients from
      // the bf16 copies) and RoPE rotates every dimension from the table: no fp32 round trip, no
      // RoPE pass.
      const bool lut_qkv = w.wq->lut() && w.wk->lut() && w.wv->lut();
      const bool grads_b16 = attn_b16_grads_ && mma_attention_ && rope_adds_bias() && rope_.cos_sin &&
                             rope_.table_len >= T && lut_qkv && (!(tr && (w.g_bq || w.g_bk || w.g_bv)) || bias_b16);
      // cuDNN's backward writes the bf16 operands too (dq, dk as the rotated values' gradients, rotated
      // back here in one pass over the [dq | dk] column block).
      bool cudnn_done = false;
      if (cudnn_attn_ && datt_b16 && grads_b16 && cu::rope_bf16_inplace_ok(rope_, T)) {
        cudnn_done = cu::cudnn_attention_backward(dqb_, dkb_, dvb_, dattb, a.attb, a.qb, a.kb, a.vb, a.lse,
                                                  cudnn_shape(B, T), dh_, size_t(dh_floats_) * 4, s_);
        if (cudnn_done) cu::rope_backward_train_bf16(dqb_, B, T, NH + KVH, rope_, ldqkv_, s_);
      }
      if (cudnn_done) {
        // (dq, dk, dv written above)
      } else if (mma_attention_) {  // dh_ is free until the next layer's FFN backward: the workspace
        cu::AttentionGradsBf16 g16;
        g16.dq = dqb_, g16.dk = dkb_, g16.dv = dvb_, g16.ld = ldqkv_;
        g16.rope_cs = rope_.cos_sin, g16.neox = rope_.neox;
        cudaStream_t side = attn_side_ ? attn_stream_.get() : nullptr;
        if (datt_b16)
          cu::attention_backward_mma(dq_, dk_, dv_, dattb, a.attb, a.qb, a.kb, a.vb, a.lse, B, T, NH, KVH, HS, s_, dh_,
                                     size_t(dh_floats_), side, grads_b16 ? &g16 : nullptr);
        else
          cu::attention_backward_mma(dq_, dk_, dv_, datt_, a.attb, a.qb, a.kb, a.vb, a.lse, B, T, NH, KVH, HS, s_, dh_,
                                     size_t(dh_floats_), side, grads_b16 ? &g16 : nullptr);
      } else {
        cu::attention_backward(dq_, dk_, dv_, datt_, a.att, a.q, a.k, a.v, a.lse, B, T, NH, KVH, HS, s_);
      }
      mark("attention bwd");
      if (!grads_b16) {
        rope(dq_, dqb_, B, T, NH, true, ldqkv_);
        rope(dk_, dkb_, B, T, KVH, true, ldqkv_);
        bf16_copy_rows(dvb_, ldqkv_, dv_, N, KVH * HS);
        mark("norm/swiglu/rope bwd");
      }
      if (bias_b16) {
        cu::column_sums_bf16_add({{w.g_bq, NH * HS}, {w.g_bk, KVH * HS}, {w.g_bv, KVH * HS}}, dqb_, ldqkv_, N,
                                 dw_slabs_, cu::rmsnorm_dw_scratch_doubles(N, C), s_);
        mark("linear bwd: dbias");
      }
      float* const dbq = tr && !bias_b16 ? w.g_bq : nullptr;
      float* const dbk = tr && !bias_b16 ? w.g_bk : nullptr;
      float* const dbv = tr && !bias_b16 ? w.g_bv : nullptr;
      {
        const cu::LutTrainView qkv[3] = {w.wq->view, w.wk->view, w.wv->view};
        const uint16_t* qkv_d[3] = {dqb_, dkb_, dvb_};
        const bool grouped = bf16_ && cu::lut_linear_backward_input_group(*blas_, qkv, qkv_d, 3, N, dxn_, false,
                                                                           scratch_, scratch_floats_, s_, ldqkv_);
        if (grouped) mark_stage("dinp");
        float* di = grouped ? nullptr : dxn_;
        // Their weight gradients as one GEMM over the stacked output gradient where it serves.
        bool dw_grouped = false;
        if (grouped && tr && aside_on_) {
          cu::LutWeightGrad g[3];
          const DevMat* m3[3] = {w.wq, w.wk, w.wv};
          float* const db3[3] = {dbq, dbk, dbv};
          for (int k = 0; k < 3; ++k) {
            g[k].dscale = sc ? m3[k]->dscale : nullptr, g[k].dbias = db3[k];
            g[k].votes = m3[k]->votes ? &m3[k]->votes->state : nullptr, g[k].params = &vp_, g[k].aside = &aside_;
          }
          dw_grouped = cu::lut_linear_backward_weight_group(*blas_, qkv, g, 3, dqb_, ldqkv_, a.xn1b, N, s_);
        }
        if (!dw_grouped) {
          lin_bwd(di, false, {dq_, dqb_, ldqkv_}, {a.xn1, a.xn1b}, N, *w.wq, tr, sc, dbq);
          lin_bwd(di, true, {dk_, dkb_, ldqkv_}, {a.xn1, a.xn1b}, N, *w.wk, tr, sc, dbk);
          lin_bwd(di, true, {dv_, dvb_, ldqkv_}, {a.xn1, a.xn1b}, N, *w.wv, tr, sc, dbv);
        }
      }
      mark("linear bwd");
      cu::rmsnorm_backward(dx_, tr ? w.g_attn_norm : nullptr, dxn_, res(l), w.attn_norm, a.rstd1, N, C, s_, dxb16(),
                           dw_slabs_);
      mark("norm/swiglu/rope bwd");
    }
    if (head_wait_) head_cast_done_.wait_in(s_), head_wait_ = false;  // (no layer's backward ran)
    if (aside_on_) {  // the casts' queued folds on their stream, then every cast joins the compute stream
      cu::cast_fold_flush(cast_ws_, cast_stream_.get());
      cast_join_.record(cast_stream_.get());
      cast_join_.wait_in(s_);
    }
    if (embd_grad) cu::embedding_backward(embd_->dW, dx_, tokens_, N, V, C, s_);
    if (embd_sg) {  // (positions grouped on the host: group_positions)
      const size_t n = size_t(3 * maxN_ + 2) * 4;
      cu::copy_to_device_async(csr_, csr_host_.data(), n, s_);
      // A graph's grid covers any batch (N blocks), the count read on the device.
      cu::lut_embedding_scale_grad(embd_->view, dx_, csr_, csr_ + maxN_, csr_ + 2 * maxN_ + 1, capturing_ ? N : csr_rows_,
                                   embd_->dscale, s_, csr_ + 3 * maxN_ + 1);
    }
    mark("embedding bwd");
    cu::cast_fold_flush(cast_ws_, s_);  // the queued folds, before anything reads col_sq or col_norm
    mark("votes cast");
  }
}

StepStats CudaEngine::apply_votes(const std::function<bool(const Matrix&)>& trainable) {
  StepStats st;
  mark(nullptr);
  cu::fill_bytes_async(flips_, 0, 8, s_);
  std::vector<cu::ApplyItem> items;
  for (LutVotes& hv : c_.votes->states()) {
    if (!trainable(*hv.m)) continue;
    DevMat& d = *mats_.at(hv.m);
    st.weights += hv.m->O * hv.m->I;
    items.push_back({d.view, &d.votes->state});
  }
  cu::lut_votes_apply_batch(items, vp_, flips_, apply_desc_, s_);  // (per matrix: lut_votes_apply)
  unsigned long long flips = 0;
  cu::copy_to_host_async(&flips, flips_, 8, s_);
  stream_.sync();
  mark("votes apply");
  flush_profile();
  st.flips = int64_t(flips);
  // VoteEngine::apply's governor.
  const VoteConfig& vc = c_.votes->config();
  Governor& gov = c_.votes->governor();
  if (vc.flip_cap > 0 && st.rate() > vc.flip_cap) {
    gov.lr_mult *= 0.8;
    gov.sensitivity += 0.02;
    ++gov.reactions;
  }
  return st;
}

// AdamW::step: the norm over the trainable parameters (per-parameter sums added in order), the
// clip factor, then each parameter's update with its own step count.
double CudaEngine::adam_step(double sched, const std::function<bool(const FloatParam&)>& trainable) {
  mark(nullptr);
  std::vector<FloatParam>& ps = c_.adam->params();
  std::vector<char> on(ps.size());
  std::vector<cu::SumSquaresItem> sq;
  for (size_t k = 0; k < ps.size(); ++k) {
    on[k] = trainable(ps[k]);
    if (on[k]) sq.push_back({dparams_[k].g, dparams_[k].n, ss_ + k});
  }
  // Every tensor's sum in two launches (bitwise the per-tensor sum_squares).
  cu::sum_squares_batch(sq, ss_scratch_, batch_desc_, s_);
  std::vector<double> ss(ps.size(), 0.0);
  if (!ps.empty()) cu::copy_to_host_async(ss.data(), ss_, ss.size() * 8, s_);
  stream_.sync();
  double total = 0;
  for (size_t k = 0; k < ps.size(); ++k)
    if (on[k]) total += ss[k];
  const double norm = std::sqrt(total);
  const AdamConfig& cfg = c_.adam->config();
  const double clip = (cfg.clip > 0 && norm > cfg.clip) ? cfg.clip / norm : 1.0;
  std::vector<cu::AdamItem> items;
  for (size_t k = 0; k < ps.size(); ++k) {
    if (!on[k]) continue;
    FloatParam& fp = ps[k];
    ++fp.t;
    cu::AdamArgs a;
    a.clip_scale = clip;
    a.b1 = cfg.beta1, a.b2 = cfg.beta2;
    a.bc1 = 1 - std::pow(cfg.beta1, double(fp.t));
    a.bc2 = 1 - std::pow(cfg.beta2, double(fp.t));
    a.relative = fp.kind == ParamKind::Scale;
    a.lr = (a.relative ? cfg.scale_lr : cfg.lr) * sched;
    a.wd = a.relative ? cfg.scale_decay
                      : (fp.kind == ParamKind::Embed || fp.kind == ParamKind::Head || fp.kind == ParamKind::Dense)
                            ? cfg.weight_decay
                            : 0.0;
    a.eps = cfg.eps;
    const DevParam& d = dparams_[k];
    cu::AdamItem it;
    it.p = d.p, it.g = d.g, it.m = d.m, it.v = d.v, it.n = d.n, it.a = a;
    items.push_back(it);
  }
  cu::adamw_update_batch(items, batch_desc_, s_);  // one launch (bitwise adamw_update per tensor)
  mark("adamw");
  flush_profile();
  return norm;
}

void CudaEngine::sync_to_host() {
  TrainModel& m = *c_.model;
  auto down = [&](std::vector<float>& v) {
    if (!v.empty()) cu::copy_to_host_async(v.data(), pmap_.at(v.data()), v.size() * 4, s_);
  };
  for (auto& [mt, d] : mats_) {
    Matrix& h = *d->host;
    if (!h.is_lut()) {
      down(h.dense);
      continue;
    }
    LutWeight& L = *h.lut;
    cu::copy_to_host_async(L.idx.data(), d->view.idx, L.idx.size(), s_);
    down(L.scale);
    if (d->votes && d->hv) {
      const cu::VoteState& st = d->votes->state;
      LutVotes& hv = *d->hv;
      if (st.v8) cu::copy_to_host_async(hv.v8.data(), st.v8, hv.v8.size(), s_);
      if (st.v16) cu::copy_to_host_async(hv.v16.data(), st.v16, hv.v16.size() * 2, s_);
      if (st.cool) cu::copy_to_host_async(hv.cool.data(), st.cool, hv.cool.size(), s_);
      if (st.row_sq) cu::copy_to_host_async(hv.row_sq.data(), st.row_sq, hv.row_sq.size() * 4, s_);
      if (st.col_sq) cu::copy_to_host_async(hv.col_sq.data(), st.col_sq, hv.col_sq.size() * 4, s_);
      if (st.col_norm && !hv.col_norm.empty())
        cu::copy_to_host_async(hv.col_norm.data(), st.col_norm, hv.col_norm.size() * 4, s_);
      hv.events = st.events;
    }
  }
  for (TrainLayer& l : m.layers)
    for (auto* v : {&l.attn_norm, &l.ffn_norm, &l.bq, &l.bk, &l.bv}) down(*v);
  down(m.output_norm);
  std::vector<FloatParam>& ps = c_.adam->params();
  for (size_t k = 0; k < ps.size(); ++k) {
    cu::copy_to_host_async(ps[k].m.data(), dparams_[k].m, ps[k].n * 4, s_);
    cu::copy_to_host_async(ps[k].v.data(), dparams_[k].v, ps[k].n * 4, s_);
  }
  stream_.sync();
}

}  // namespace

cuda::VoteParams gpu_vote_params(const VoteConfig& vc, const Governor& gov, int64_t step, double sched) {
  cu::VoteParams p;
  p.rule = vc.rule == Rule::Seed ? cu::VoteRule::Seed : cu::VoteRule::Momentum;
  p.vote_bits = vc.vote_bits;
  p.seed = vc.seed;
  p.step = step;
  p.sched = sched;
  p.lr_mult = gov.lr_mult;
  p.sensitivity = gov.sensitivity;
  p.consensus = vc.consensus;
  p.flip_lr = vc.flip_lr;
  p.noise = vc.noise;
  p.cooldown = vc.cooldown;
  p.lr = vc.lr;
  p.second_moment = vc.second_moment;
  p.beta2 = vc.beta2;
  p.eps = vc.eps;
  return p;
}

int64_t cuda_head_chunk(const GpuEngineOptions& o) {
  return o.head_chunk > 0 ? o.head_chunk : o.fast ? kFastHeadChunk : kHeadChunk;
}

std::unique_ptr<StepEngine> make_cuda_engine(const EngineContext& ctx, const GpuEngineOptions& o) {
  PRIMAL_CHECK(cu::device_count() > 0, "--device cuda: no usable GPU (use --device cpu)");
  return std::make_unique<CudaEngine>(ctx, o);
}

}  // namespace primal::train
