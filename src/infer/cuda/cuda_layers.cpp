// The forward pass on the GPU as a flat list of layer calls, the twin of model/forward.cpp:
// prefill (T tokens: fp16 GEMMs through cuBLAS) and decode (one token: GEMV kernels, captured
// into a CUDA graph by the caller).
#include <algorithm>

#include "core/error.h"
#include "core/half.h"
#include "infer/cuda/cuda_forward.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/dequant.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/launch.h"
#include "ops/cuda/sampling.h"

namespace primal::cuda {
namespace {

// Copies a device intermediate to the host for a DumpFn: fp32 rows with a stride, or fp16.
void dump_f32(const DumpFn& dump, const std::string& name, const float* dev, int64_t rows, int64_t cols,
              int64_t stride, std::vector<int64_t> shape, cudaStream_t s) {
  std::vector<float> full(size_t(rows * stride)), out(size_t(rows * cols));
  copy_to_host_async(full.data(), dev, full.size() * 4, s);
  Stream::sync_stream(s);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(full.data() + r * stride, cols, out.data() + r * cols);
  dump(name, out.data(), shape);
}

void dump_f16(const DumpFn& dump, const std::string& name, const void* dev, int64_t n, std::vector<int64_t> shape,
              cudaStream_t s) {
  std::vector<uint16_t> h(static_cast<size_t>(n));
  copy_to_host_async(h.data(), dev, h.size() * 2, s);
  Stream::sync_stream(s);
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = f16_to_f32(h[size_t(i)]);
  dump(name, out.data(), shape);
}

}  // namespace

// c[:, 0:O] (+)= a16 W^T: fp16 weights are used in place, others dequantized a slab of rows at a
// time into the scratch.
void CudaForward::matmul(const MatrixView& w, const void* a16, int64_t T, float* c, int64_t ldc, float beta) {
  const int64_t O = w.rows, I = w.cols;
  if (w.type == DType::F16) {
    gemm_f16(blas_, a16, w.q, c, T, O, I, ldc, beta, stream_.get());
    return;
  }
  const int64_t rows = std::max<int64_t>(1, std::min(O, scratch_elems_ / I));
  for (int64_t r0 = 0; r0 < O; r0 += rows) {
    const int64_t n = std::min(rows, O - r0);
    dequant_rows_f16(w, r0, n, scratch16_.data(), stream_.get());
    gemm_f16(blas_, a16, scratch16_.data(), c + r0, T, n, I, ldc, beta, stream_.get());
  }
}

void CudaForward::prefill(const int32_t* tokens, int64_t T, int64_t r0, const DumpFn& dump) {
  const HParams& hp = hp_;
  const int64_t C = hp.n_embd, NH = hp.n_head, KVH = hp.n_head_kv, HS = hp.head_dim, F = hp.n_ff, V = hp.n_vocab;
  const int64_t Q = NH * HS, KV = KVH * HS, W = Q + 2 * KV;
  const cudaStream_t s = stream_.get();
  auto named = [&](const std::string& name, int64_t l) { return l < 0 ? name : name + "-" + std::to_string(l); };
  float* x = x_.as<float>();
  float* qkv = qkv_.as<float>();
  const int32_t* pos0 = &state_.as<State>()->pos;

  copy_to_device_async(tokens_.data(), tokens, size_t(T) * sizeof(int32_t), s);
  set_state(tokens[T - 1], n_past_);
  mark("pp:start");
  embed_rows(w_.tok_embd.view, tokens_.as<int32_t>(), T, x, s);
  mark("pp:embed");
  if (dump) dump_f32(dump, "inp_embd", x, T, C, C, {T, C}, s);
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const CudaLayer& lw = w_.layers[size_t(l)];
    rmsnorm_f16(x, lw.attn_norm, T, C, hp.rms_eps, xn16_.data(), s);
    mark("pp:norm");
    if (lw.wqkv.rows) {
      matmul(lw.wqkv, xn16_.data(), T, qkv, W, 0.0f);
    } else {
      matmul(lw.wq, xn16_.data(), T, qkv, W, 0.0f);
      matmul(lw.wk, xn16_.data(), T, qkv + Q, W, 0.0f);
      matmul(lw.wv, xn16_.data(), T, qkv + Q + KV, W, 0.0f);
    }
    mark("pp:qkv");
    RopeQkvParams rp;
    rp.qkv = qkv, rp.bias = lw.bqkv, rp.T = T, rp.NH = NH, rp.KVH = KVH, rp.HS = HS, rp.n_rot = hp.rope_dim;
    rp.neox = hp.rope_neox, rp.cos_sin = rope_cs_.data(), rp.pos0 = pos0;
    rp.k_cache = k_cache(l), rp.v_cache = v_cache(l);
    rope_qkv(rp, s);
    mark("pp:rope");
    if (dump) {
      dump_f32(dump, named("Qcur", l), qkv, T, Q, W, {T, NH, HS}, s);
      dump_f32(dump, named("Kcur", l), qkv + Q, T, KV, W, {T, KVH, HS}, s);
      dump_f32(dump, named("Vcur", l), qkv + Q + KV, T, KV, W, {T, KVH, HS}, s);
    }
    AttentionParams ap;
    ap.q = qkv, ap.q_stride = W, ap.k_cache = k_cache(l), ap.v_cache = v_cache(l), ap.pos0 = pos0;
    ap.T = T, ap.NH = NH, ap.KVH = KVH, ap.HS = HS;
    attention_prefill(ap, att16_.data(), s);
    mark("pp:attention");
    if (dump) dump_f16(dump, named("kqv", l), att16_.data(), T * Q, {T, NH, HS}, s);
    matmul(lw.wo, att16_.data(), T, x, C, 1.0f);  // x += attention output
    mark("pp:attn_out");
    if (dump) dump_f32(dump, named("ffn_inp", l), x, T, C, C, {T, C}, s);
    rmsnorm_f16(x, lw.ffn_norm, T, C, hp.rms_eps, xn16_.data(), s);
    mark("pp:norm");
    if (lw.w_gu.rows) {
      matmul(lw.w_gu, xn16_.data(), T, gu_.as<float>(), 2 * F, 0.0f);
    } else {
      matmul(lw.w_gate, xn16_.data(), T, gu_.as<float>(), 2 * F, 0.0f);
      matmul(lw.w_up, xn16_.data(), T, gu_.as<float>() + F, 2 * F, 0.0f);
    }
    mark("pp:ffn_gate_up");
    swiglu_f16(gu_.as<float>(), T, F, h16_.data(), s);
    mark("pp:swiglu");
    matmul(lw.w_down, h16_.data(), T, x, C, 1.0f);  // x += MLP output
    mark("pp:ffn_down");
    if (dump) dump_f32(dump, named("l_out", l), x, T, C, C, {T, C}, s);
  }
  // The head, for rows r0 .. T-1 only.
  const int64_t n = T - r0;
  ensure_logit_rows(n);
  if (n == 1) {
    GemvParams g;
    g.seg[0].w = w_.output, g.seg[0].out = logits_.as<float>();
    g.x = x + (T - 1) * C, g.norm_w = w_.output_norm, g.eps = hp.rms_eps;
    gemv(g, s);
  } else {
    rmsnorm_f16(x + r0 * C, w_.output_norm, n, C, hp.rms_eps, xn16_.data(), s);
    matmul(w_.output, xn16_.data(), n, logits_.as<float>(), V, 0.0f);
  }
  mark("pp:head");
  collect_profile(false);
  if (dump) dump_f32(dump, "result_output", logits_.as<float>(), n, V, V, {n, V}, s);
  last_row_ = logits_.as<float>() + (n - 1) * V;
  last_has_argmax_ = false;
}

void CudaForward::qkv_gemv(const CudaLayer& l) {
  const int64_t Q = hp_.n_head * hp_.head_dim, KV = hp_.n_embd_kv();
  float* out = qkv1_.as<float>();
  const MatrixView* m[3] = {&l.wq, &l.wk, &l.wv};
  const int64_t off[3] = {0, Q, Q + KV};
  GemvParams g;
  g.x = x1_.as<float>(), g.norm_w = l.attn_norm, g.eps = hp_.rms_eps;
  if (l.wqkv.rows) {  // stacked: one matrix, one launch
    g.seg[0].w = l.wqkv, g.seg[0].out = out, g.seg[0].bias = l.bqkv;
    gemv(g, stream_.get());
    return;
  }
  if (m[0]->type == m[1]->type && m[1]->type == m[2]->type) {  // one launch for the three
    g.n_seg = 3;
    for (int k = 0; k < 3; ++k) {
      g.seg[k].w = *m[k], g.seg[k].out = out + off[k];
      g.seg[k].bias = l.bqkv ? l.bqkv + off[k] : nullptr;
    }
    gemv(g, stream_.get());
    return;
  }
  for (int k = 0; k < 3; ++k) {
    g.seg[0].w = *m[k], g.seg[0].out = out + off[k];
    g.seg[0].bias = l.bqkv ? l.bqkv + off[k] : nullptr;
    gemv(g, stream_.get());
  }
}

void CudaForward::ffn_gemv(const CudaLayer& l) {
  GemvParams g;
  g.x = x1_.as<float>(), g.norm_w = l.ffn_norm, g.eps = hp_.rms_eps;
  if (l.w_gate.type == l.w_up.type) {  // gate and up in one launch, SwiGLU on the way out
    g.n_seg = 2, g.mode = GemvMode::SwiGLU;
    g.seg[0].w = l.w_gate, g.seg[0].out = h1_.as<float>();
    g.seg[1].w = l.w_up, g.seg[1].out = h1_.as<float>();
    gemv(g, stream_.get());
    return;
  }
  g.seg[0].w = l.w_gate, g.seg[0].out = h1_.as<float>();
  gemv(g, stream_.get());
  g.seg[0].w = l.w_up, g.seg[0].out = up1_.as<float>();
  gemv(g, stream_.get());
  swiglu_f32(h1_.as<float>(), up1_.as<float>(), hp_.n_ff, h1_.as<float>(), stream_.get());
}

void CudaForward::decode_layers() {
  const HParams& hp = hp_;
  const cudaStream_t s = stream_.get();
  const PdlScope pdl(opt_.use_pdl && !profile_);  // kernels overlap their predecessors' tails
  State* st = state_.as<State>();
  float* x = x1_.as<float>();
  embed_rows(w_.tok_embd.view, &st->token, 1, x, s, key_.as<uint64_t>());
  mark("embed");
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const CudaLayer& lw = w_.layers[size_t(l)];
    qkv_gemv(lw);
    mark("qkv");
    RopeQkvParams rp;
    rp.qkv = qkv1_.as<float>(), rp.T = 1, rp.NH = hp.n_head, rp.KVH = hp.n_head_kv, rp.HS = hp.head_dim;
    rp.n_rot = hp.rope_dim, rp.neox = hp.rope_neox, rp.cos_sin = rope_cs_.data(), rp.pos0 = &st->pos;
    rp.k_cache = k_cache(l), rp.v_cache = v_cache(l);  // the QKV GEMV added the bias
    AttentionParams ap;
    ap.q = qkv1_.as<float>(), ap.k_cache = k_cache(l), ap.v_cache = v_cache(l), ap.pos0 = &st->pos;
    ap.T = 1, ap.NH = hp.n_head, ap.KVH = hp.n_head_kv, ap.HS = hp.head_dim;
    ap.fuse_rope = true, ap.rope = rp;  // RoPE and the cache store inside the attention kernel
    attention_decode(ap, splits_, part_.data(), att1_.as<float>(), s);
    mark("attention");
    GemvParams o;
    o.seg[0].w = lw.wo, o.seg[0].out = x, o.x = att1_.as<float>(), o.mode = GemvMode::Accumulate;
    gemv(o, s);
    mark("attn_out");
    ffn_gemv(lw);
    mark("ffn_gate_up");
    GemvParams d;
    d.seg[0].w = lw.w_down, d.seg[0].out = x, d.x = h1_.as<float>(), d.mode = GemvMode::Accumulate;
    gemv(d, s);
    mark("ffn_down");
  }
  GemvParams h;
  h.seg[0].w = w_.output, h.seg[0].out = logits1_.as<float>();
  h.x = x, h.norm_w = w_.output_norm, h.eps = hp.rms_eps;
  gemv(h, s);
  mark("head");
  argmax_key(logits1_.as<float>(), hp.n_vocab, key_.as<uint64_t>(), s, false);
  mark("argmax");
}

}  // namespace primal::cuda
