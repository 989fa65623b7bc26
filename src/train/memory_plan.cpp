#include "train/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/synth.h"
#include "ops/cuda/cast_workspace.h"
#include "train/model.h"
#include "train/train_config.h"

namespace primal::train {

namespace {

constexpr int64_t kCublasWorkspace = int64_t(32) << 20;
// What the device loses beyond the engine's buffers: the engine's measured peak minus the
// buffers counted here was 454-466 MiB on Qwen2.5-1.5B plans and 663-697 MiB on seed-500m (H100,
// CUDA 13, driver 580; cuBLAS's handle and the kernel images loaded on first use; what makes the
// smaller model's larger is not established), so 768 MiB are reserved.
constexpr int64_t kDeviceOverhead = int64_t(768) << 20;

struct Shape {
  int64_t O, I;
};

// Bytes of the packed indices of an (O, I) matrix of `bits` bits per index.
int64_t index_bytes(Shape s, int bits) { return s.O * ((s.I * bits + 7) / 8); }
int64_t n_scales(Shape s, int64_t group) { return s.O * (group > 0 ? s.I / group : 1); }

class Counter {
 public:
  explicit Counter(MemoryPlan& p) : p_(p) {}
  void add(const std::string& group, const std::string& name, int64_t bytes) {
    if (bytes == 0) return;
    for (MemoryItem& it : p_.items)
      if (it.name == name && it.group == group) {
        it.bytes += bytes;
        return;
      }
    p_.items.push_back({name, group, bytes});
  }

 private:
  MemoryPlan& p_;
};

void count_lut(Counter& c, const PlanRequest& r, Shape s, bool trainable) {
  c.add("persistent", "LUT indices", index_bytes(s, r.lut_bits));
  const int64_t ns = n_scales(s, r.group);
  c.add("persistent", "LUT scales (fp32)", ns * 4);
  if (!trainable) return;
  const int64_t n = s.O * s.I;
  c.add("persistent", "votes", n * (r.vote_bits / 8));
  if (r.cooldown) c.add("persistent", "cooldown counters", n);
  c.add("persistent", "scale gradients + AdamW m, v", ns * 12);
  // row_sq (O), col_sq and col_norm (I), and the per-tile column sums of a backward call (none
  // where the bf16 cast forms them in its workspace: ops/cuda/cast_workspace.h).
  const bool no_part = r.act_bytes == 2 && r.vote_bits == 8 && cuda::cast_fast_serves(s.I, r.group, r.lut_bits);
  const int64_t tiles = no_part ? 0 : (s.O + lut_tile_rows(s.I) - 1) / lut_tile_rows(s.I);
  if (r.momentum) c.add("persistent", "momentum row/column state", (s.O + 2 * s.I + tiles * s.I) * 4);
}

void count_dense(Counter& c, const std::string& name, int64_t n, bool trainable) {
  c.add("persistent", name + " (fp32)", n * 4);
  if (trainable) c.add("persistent", name + " gradients + AdamW m, v", n * 12);
}

}  // namespace

int64_t MemoryPlan::total() const {
  int64_t t = 0;
  for (const MemoryItem& it : items) t += it.bytes;
  return t;
}

int64_t MemoryPlan::group_bytes(const std::string& group) const {
  int64_t t = 0;
  for (const MemoryItem& it : items)
    if (it.group == group) t += it.bytes;
  return t;
}

double MemoryPlan::index_vote_bytes_per_weight() const {
  int64_t b = 0;
  for (const MemoryItem& it : items)
    if (it.name == "LUT indices" || it.name == "votes" || it.name == "cooldown counters") b += it.bytes;
  return lut_weights ? double(b) / double(lut_weights) : 0.0;
}

double MemoryPlan::persistent_bytes_per_weight() const {
  return lut_weights ? double(group_bytes("persistent")) / double(lut_weights) : 0.0;
}

MemoryPlan measure_plan(const PlanRequest& r, int64_t micro_batch, bool recompute, int64_t trainable_layers,
                        int64_t kept_layers, bool keep_attention, int64_t qkv_layers) {
  const HParams& hp = r.hp;
  const int64_t C = hp.n_embd, NH = hp.n_head, Q = hp.n_head * hp.head_dim, KV = hp.n_embd_kv(), F = hp.n_ff,
                V = hp.n_vocab, L = hp.n_layer;
  PRIMAL_CHECK(L > 0 && C > 0 && V > 0 && F > 0 && NH > 0, "memory plan: incomplete model shape");
  PRIMAL_CHECK(r.batch > 0 && r.seq > 0, "memory plan: batch and seq must be positive");
  PRIMAL_CHECK(micro_batch > 0 && r.batch % micro_batch == 0, "memory plan: micro-batch {} does not divide batch {}",
               micro_batch, r.batch);
  PRIMAL_CHECK(trainable_layers >= 1 && trainable_layers <= L, "memory plan: trainable layers {} outside 1..{}",
               trainable_layers, L);
  PRIMAL_CHECK(!recompute || (kept_layers >= 0 && kept_layers < trainable_layers),
               "memory plan: {} layers keeping their activations with recomputation, of {} trainable", kept_layers,
               trainable_layers);
  PRIMAL_CHECK(r.act_bytes == 2 || r.act_bytes == 4, "memory plan: activations are 2 (bf16) or 4 (fp32) bytes");
  PRIMAL_CHECK(!keep_attention || (recompute && r.act_bytes == 2),
               "memory plan: attention outputs are kept with recomputation in the bf16 mode only");
  PRIMAL_CHECK(qkv_layers == 0 || (recompute && r.act_bytes == 2 && qkv_layers > 0 && qkv_layers <= L - kept_layers),
               "memory plan: q, k, v kept for {} layers (bf16 recomputation, at most the {} recomputed)", qkv_layers,
               L - kept_layers);
  PRIMAL_CHECK(r.vote_bits == 8 || r.vote_bits == 16, "memory plan: votes are 8 or 16 bits");
  const std::vector<Shape> mats = {{Q, C}, {KV, C}, {KV, C}, {C, Q}, {F, C}, {F, C}, {C, F}};
  for (const Shape& s : mats)
    PRIMAL_CHECK(r.group <= 0 || s.I % r.group == 0, "memory plan: group {} does not divide a row of {}", r.group, s.I);

  MemoryPlan p;
  p.micro_batch = micro_batch;
  p.accum = r.batch / micro_batch;
  p.recompute = recompute;
  p.trainable_layers = trainable_layers;
  p.kept_layers = recompute ? kept_layers : trainable_layers;
  p.keep_attention = keep_attention;
  p.qkv_layers = qkv_layers;
  Counter c(p);
  const int64_t lowest = L - trainable_layers;  // first trainable layer
  const bool all_layers = lowest == 0;

  // Persistent state.
  for (int64_t l = 0; l < L; ++l) {
    const bool tr = l >= lowest;
    for (const Shape& s : mats) {
      count_lut(c, r, s, tr);
      p.lut_weights += s.O * s.I;
      p.params += s.O * s.I;
    }
    const int64_t floats = 2 * C + (hp.qkv_bias ? Q + 2 * KV : 0);
    count_dense(c, "norms and biases", floats, tr);
    p.params += floats;
  }
  count_dense(c, "norms and biases", C, true);  // output_norm
  p.params += C;
  const Shape emb{V, C};
  // The head's gradient exists whenever the head trains; the input embedding's only when the
  // backward reaches layer 0 (or it is the head, tied).
  const bool head_tr = r.train_embeddings;
  const bool embd_tr = r.train_embeddings && (all_layers || hp.tied_embeddings);
  for (int k = 0; k < (hp.tied_embeddings ? 1 : 2); ++k) {
    const bool tr = k == 0 ? (hp.tied_embeddings ? head_tr || embd_tr : embd_tr) : head_tr;
    if (r.lut_embeddings) {
      count_lut(c, r, emb, tr);
      p.lut_weights += V * C;
    } else {
      count_dense(c, "embeddings/head", V * C, tr);
    }
    p.params += V * C;
  }

  // Activations and workspace: the buffers the CUDA engine (train/cuda/gpu_engine.cpp) allocates,
  // by the same formulas. act_bytes 2 is its bf16 mode (--fast: fp32 values where the kernels
  // need them, bf16 copies of the GEMM inputs), 4 its fp32 mode.
  const int64_t N = micro_batch * r.seq;
  const bool b16 = r.act_bytes == 2;
  // Per token of one layer: mid, rstd1, rstd2, lse (fp32); bf16 mode: q, k, v, att, xn1, xn2, gate,
  // up, h in bf16; fp32 mode: q, k, v, att, xn1, xn2, gate, up, h in fp32.
  const int64_t layer_set =
      4 * (C + 2 + NH) + (b16 ? 2 * (2 * Q + 2 * KV + 2 * C + 3 * F) : 4 * (2 * Q + 2 * KV + 2 * C + 3 * F));
  c.add("activations", "residual stream (fp32)", N * C * 4 * (L + 1));
  c.add("activations", "layer activations", N * layer_set * p.kept_layers);
  const int64_t chunk = std::min(r.head_chunk, N);
  const bool bf16_logits = b16 && r.lut_embeddings;  // the bf16 mode's LUT head: bf16 logits, gradient in place
  const int64_t logit_bytes = bf16_logits ? chunk * bf16_logits_stride(V) * 2 : chunk * V * 4;
  // The layers below the kept ones share one set: the frozen ones' forward, the recomputed ones'
  // (without what each of them keeps of its own: attention outputs, q, k, v). The logits chunk
  // lives in its memory (the head runs when no layer's set in it is alive): only what it needs
  // beyond the set is counted for it.
  int64_t shared_bytes = 0;
  if (p.kept_layers < L) {
    shared_bytes = N * (layer_set - (keep_attention ? 2 * Q + 4 * NH : 0) -
                        (qkv_layers == L - p.kept_layers ? 2 * (Q + 2 * KV) : 0));
    c.add("activations", recompute ? "one layer's activations (recomputed)" : "frozen layers' forward scratch",
          shared_bytes);
  }
  // bf16 attention output and fp32 log-sum-exp of every layer below the kept ones (the engine keeps
  // them for all of those, frozen ones included).
  if (keep_attention)
    c.add("activations", "recomputed layers' attention outputs", N * (2 * Q + 4 * NH) * (L - p.kept_layers));
  if (qkv_layers > 0) c.add("activations", "recomputed layers' q, k, v", N * 2 * (Q + 2 * KV) * qkv_layers);
  c.add("activations", "final norm", N * (4 * C + 4 + (b16 ? 2 * C : 0)));

  // dx, dxn, dxnf, dq, datt, dk, dv fp32; dh, dgate, dup fp32, or in the bf16 mode dh sized by
  // bf16_dh_floats (dgate's bf16 copy in its memory) and bf16 copies of the GEMMs' output gradients
  // (dx, dup, dq, dk, dv).
  // All but dx, dxnf and dx's bf16 copy form one block, in which the bf16 mode's trainable LUT head
  // sums its (V, C) bf16 weight gradient over the logits chunks: the block is the larger of the two.
  const int64_t kept_out = N * (4 * 2 * C + (b16 ? 2 * C : 0));
  const int64_t block = N * (4 * (C + 2 * Q + 2 * KV) + (b16 ? 2 * (F + Q + 2 * KV) : 4 * 2 * F)) +
                        4 * (b16 ? bf16_dh_floats(N, F, NH, hp.head_dim, Q + 2 * KV) : N * F);
  const int64_t head_dw = b16 && bf16_logits && r.train_embeddings ? V * C * 2 : 0;
  c.add("workspace", "backward scratch", kept_out + std::max(block, head_dw));
  const std::string logits = bf16_logits ? "logits chunk (bf16)" : "logits chunk (fp32)";
  if (p.kept_layers == L) c.add("workspace", logits, logit_bytes);
  else c.add("workspace", logits + " beyond the shared set", std::max<int64_t>(0, logit_bytes - shared_bytes));
  // The GEMM scratch: the largest layer matrix dequantized (fp32 values; bf16 ones take half),
  // at least a weight-gradient tile of the embeddings/head. (Both modes' attention kernels are
  // flash kernels: no workspace.)
  int64_t floats = lut_tile_rows(C) * C;
  for (const Shape& s : mats) floats = std::max(floats, s.O * s.I);
  c.add("workspace", "GEMM scratch (dequantized weights, weight gradients)", floats * 4);
  // The bf16 vote cast's column sums (ops/cuda/cast_workspace.h): for the longest row of a voting
  // matrix, and a layer's whole-matrix casts with their folds queued.
  if (b16 && r.momentum) {
    int64_t I_max = 0, part_floats = 0, mat_max = 0;
    for (const Shape& s : mats) {
      I_max = std::max(I_max, s.I), mat_max = std::max(mat_max, s.O * s.I);
      part_floats += cuda::cast_part_floats(s.O, s.I);
    }
    if (r.train_embeddings) I_max = std::max(I_max, C);
    c.add("workspace", "vote cast column sums", cuda::cast_workspace_bytes(I_max, part_floats));
    c.add("workspace", "weight gradients of the casts beside the GEMMs", cuda::cast_aside_bytes(mat_max));
    // The fused weight gradient + cast (Hopper): its column sums and the tiles' row sums.
    int64_t fused_part = 0, fused_scratch = 0;
    for (const Shape& s : mats)
      fused_part += cuda::dw_fused_part_floats(s.O, s.I), fused_scratch += cuda::dw_fused_scratch_floats(s.O, s.I);
    c.add("workspace", "fused weight gradient + cast sums",
          cuda::cast_workspace_bytes(I_max, fused_part, false) + fused_scratch * 4);
  }
  if (b16) c.add("workspace", "CUDA graph's cast scalars", cuda::graph_cast_bytes());
  c.add("workspace", "token buffers, losses", N * (4 + 4 + 8 + 12) + 8);
  if (b16) c.add("workspace", "norm gradient slabs", (N + 15) / 16 * C * 8);  // train_ops.h rmsnorm_dw_scratch_doubles
  c.add("workspace", "RoPE cos/sin table", r.seq * (hp.rope_dim > 0 ? hp.rope_dim : hp.head_dim) * 4);
  c.add("workspace", "cuBLAS workspace", kCublasWorkspace);
  c.add("workspace", "CUDA context, cuBLAS handle and kernels", kDeviceOverhead);

  // Cost model: recomputation re-runs a layer's forward (a third of its fwd + bwd); small
  // micro-batches lose GEMM efficiency (a fixed cost per GEMM, amortized over ~512 tokens); and
  // every micro-batch's backward casts the votes of every trainable weight once, a pass that costs
  // what the GEMMs of kCastTokens tokens cost (H100, qwen2.5-1.5b: 42 ms per pass against 0.2 s
  // of GEMMs for 8192 tokens; seed-500m micro-batch 4 with recomputation 22,401 tok/s, 2 x 2
  // without 19,681).
  // A kept attention output spares the recomputation its attention forward: per token 2 T Q of
  // the layer's 2 (C (Q + 2 KV) + Q C + 3 C F) GEMM flops, at about a third of their speed; kept
  // q, k, v their GEMMs' 2 C (Q + 2 KV) and RoPE's and v's copies, 1.4 times the GEMM (H100,
  // qwen2.5-1.5b: 110 against 79 us a layer).
  constexpr double kCastTokens = 1700;
  const double eff = (1.0 + 512.0 / double(N)) / (1.0 + 512.0 / double(r.batch * r.seq));
  const double att = 3.0 * double(r.seq) * double(Q), lin = double(C * (Q + 2 * KV) + Q * C + 3 * C * F);
  const double rebuilt = keep_attention ? lin / (lin + att) : 1.0;  // share of a layer's forward recomputed
  const double spared = 1.4 * double(qkv_layers) * double(C * (Q + 2 * KV)) / (lin + att);  // in layers
  const double recomputed = (double(trainable_layers - p.kept_layers) * rebuilt - spared) / double(L);
  p.relative_time = (1.0 + recomputed / 3.0) * eff + double(p.accum) * kCastTokens / double(r.batch * r.seq);
  return p;
}

PlanRequest plan_request(const TrainModel& m, const TrainConfig& cfg, int64_t act_bytes, int64_t head_chunk) {
  PlanRequest r;
  r.hp = m.hp;
  // Mixed-precision models: the widest index, and the greatest common divisor of the groups (it
  // divides every row and counts at least as many scales as any matrix has).
  int bits = 0;
  int64_t group = 0;
  for (const Matrix* mt : m.lut_matrices()) {
    bits = std::max(bits, mt->lut->bits());
    group = std::gcd(group, mt->lut->G);
  }
  r.lut_bits = bits > 0 ? bits : 4;
  r.group = group > 0 ? group : 32;
  const Matrix& head = m.head();
  r.lut_embeddings = m.tok_embd.is_lut() && head.is_lut();
  r.train_embeddings = cfg.embd_trainable() || cfg.head_trainable();
  r.vote_bits = cfg.votes.vote_bits;
  r.cooldown = cfg.votes.cooldown > 0;
  r.momentum = cfg.votes.rule == Rule::Momentum && cfg.votes.second_moment;
  r.batch = cfg.sched.batch;
  r.seq = std::max(cfg.sched.seq, cfg.sched.seal_seq);
  r.act_bytes = act_bytes;
  r.head_chunk = head_chunk;
  return r;
}

MemoryPlan choose_plan(const PlanRequest& r) {
  const int64_t L = r.hp.n_layer;
  PRIMAL_CHECK(r.batch > 0, "memory plan: batch must be positive");
  PRIMAL_CHECK(r.micro_batch == 0 || r.batch % r.micro_batch == 0, "--micro-batch {} does not divide --batch {}",
               r.micro_batch, r.batch);
  PRIMAL_CHECK(r.trainable_layers >= 0 && r.trainable_layers <= L, "--trainable-layers {} outside 1..{}",
               r.trainable_layers, L);
  std::vector<int64_t> mbs;
  for (int64_t b = r.batch; b >= 1; --b)
    if (r.batch % b == 0 && (r.micro_batch == 0 || b == r.micro_batch)) mbs.push_back(b);
  std::vector<bool> rcs;
  if (r.recompute != 1) rcs.push_back(false);
  if (r.recompute != 0) rcs.push_back(true);
  const int64_t k_hi = r.trainable_layers ? r.trainable_layers : L, k_lo = r.trainable_layers ? r.trainable_layers : 1;

  int64_t smallest = std::numeric_limits<int64_t>::max();
  for (int64_t k = k_hi; k >= k_lo; --k) {
    bool found = false;
    MemoryPlan best;
    for (bool rc : rcs)
      for (int64_t b : mbs) {
        // With recomputation: of the numbers of layers keeping their activations that fit
        // (--recompute on: none, every trainable layer recomputed), with the attention outputs of the
        // others kept (bf16) or not, and what the budget leaves to q, k, v, whichever the cost model
        // prefers (a kept layer spares its whole recomputation, but its 572 MiB hold the q, k, v of
        // 17 qwen2.5-1.5b layers, which spare more).
        for (const bool att : {false, true}) {
          if (att && (!rc || r.act_bytes != 2)) continue;
          for (int64_t kept = rc && r.recompute != 1 ? k - 1 : 0; kept >= 0; --kept) {
            MemoryPlan p = measure_plan(r, b, rc, k, kept, att);
            smallest = std::min(smallest, p.total());
            if (r.budget > 0 && p.total() > r.budget) continue;
            // What the budget leaves: the q, k, v of as many recomputed layers as fit.
            if (rc && r.act_bytes == 2 && r.budget > 0) {
              const int64_t per = measure_plan(r, b, rc, k, kept, att, 1).total() - p.total();
              const int64_t n = std::min(L - kept, (r.budget - p.total()) / per);
              if (n > 0) p = measure_plan(r, b, rc, k, kept, att, n);
            }
            if (!found || p.relative_time < best.relative_time) best = std::move(p), found = true;
            if (!rc || r.act_bytes != 2 || r.budget <= 0) break;  // (more kept layers are faster)
          }
        }
      }
    if (found) return best;
  }
  fail("the training state does not fit in {}: the smallest plan needs {} (micro-batch {}{}, recomputation {}, {} "
       "trainable layers); give --memory at least that, or a smaller --seq",
       format_bytes(r.budget), format_bytes(smallest), r.micro_batch ? r.micro_batch : 1,
       r.micro_batch ? " as fixed" : "", r.recompute == 0 ? "off as fixed" : "on", k_lo);
}

std::string MemoryPlan::describe(const PlanRequest& r) const {
  std::string s;
  s += fmt::format("memory plan: {:.3f}B parameters ({:.3f}B LUT{} weights), {} x {} tokens per step, activations {}\n",
                   double(params) * 1e-9, double(lut_weights) * 1e-9, r.lut_bits, r.batch, r.seq,
                   r.act_bytes == 2 ? "bf16" : "fp32");
  const std::string rc = (!recompute         ? std::string("off")
                          : kept_layers == 0 ? std::string("on")
                                             : fmt::format("on for {} layers (the top {} keep their activations)",
                                                           trainable_layers - kept_layers, kept_layers)) +
                         (keep_attention ? ", their attention outputs kept" : "") +
                         (qkv_layers > 0 ? fmt::format(", q, k, v kept for the lowest {}", qkv_layers) : "");
  s += fmt::format("  micro-batch {} x {}, accumulation {}, per-layer recomputation {}, trainable layers {}/{}\n",
                   micro_batch, r.seq, accum, rc, trainable_layers, r.hp.n_layer);
  for (const char* g : {"persistent", "activations", "workspace"}) {
    s += fmt::format("  {:<12} {:>10}\n", g, format_bytes(group_bytes(g)));
    for (const MemoryItem& it : items)
      if (it.group == g) s += fmt::format("    {:<40} {:>10}\n", it.name, format_bytes(it.bytes));
  }
  s += fmt::format("  total        {:>10}{}\n", format_bytes(total()),
                   r.budget > 0 ? fmt::format(" of a {} budget", format_bytes(r.budget)) : std::string());
  s += fmt::format("  persistent state: {:.3f} bytes per LUT weight for indices + votes, {:.3f} with scales, AdamW "
                   "and norms",
                   index_vote_bytes_per_weight(), persistent_bytes_per_weight());
  return s;
}

std::string MemoryPlan::to_json(const PlanRequest& r) const {
  nlohmann::json j;
  j["micro_batch"] = micro_batch;
  j["accum"] = accum;
  j["recompute"] = recompute;
  j["trainable_layers"] = trainable_layers;
  j["kept_layers"] = kept_layers;
  j["keep_attention"] = keep_attention;
  j["qkv_layers"] = qkv_layers;
  j["batch"] = r.batch;
  j["seq"] = r.seq;
  j["params"] = params;
  j["lut_weights"] = lut_weights;
  j["total_bytes"] = total();
  j["budget_bytes"] = r.budget;
  j["index_vote_bytes_per_weight"] = index_vote_bytes_per_weight();
  j["persistent_bytes_per_weight"] = persistent_bytes_per_weight();
  for (const MemoryItem& it : items) j["items"].push_back({{"name", it.name}, {"group", it.group}, {"bytes", it.bytes}});
  return j.dump();
}

int64_t parse_bytes(const std::string& s) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(s, &used);
  } catch (const std::logic_error&) {
    fail("'{}' is not a memory size (e.g. 8GiB, 512MiB, 1.5G)", s);
  }
  std::string unit = s.substr(used);
  for (char& ch : unit) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  double mul = 0;
  if (unit.empty() || unit == "b") mul = 1;
  else if (unit == "k" || unit == "kb" || unit == "kib") mul = 1024.0;
  else if (unit == "m" || unit == "mb" || unit == "mib") mul = 1024.0 * 1024;
  else if (unit == "g" || unit == "gb" || unit == "gib") mul = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tb" || unit == "tib") mul = 1024.0 * 1024 * 1024 * 1024;
  PRIMAL_CHECK(mul > 0, "'{}': unknown unit '{}' (B, KiB, MiB, GiB, TiB; K/M/G/T mean the same)", s, unit);
  PRIMAL_CHECK(std::isfinite(x) && x > 0 && x * mul < 9.0e18, "'{}' is not a positive memory size", s);
  return int64_t(x * mul);
}

std::string format_bytes(int64_t b) {
  const double x = double(b);
  if (x >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", x / (1024.0 * 1024 * 1024));
  if (x >= 1024.0 * 1024) return fmt::format("{:.1f} MiB", x / (1024.0 * 1024));
  if (x >= 1024.0) return fmt::format("{:.1f} KiB", x / 1024.0);
  return fmt::format("{} B", b);
}

HParams training_shape(const std::string& name) {
  if (name.find('=') == std::string::npos) {
    // A named shape: the benchmark shapes of `primal synth` (model/synth.h).
    const SynthShape s = synth_shape(name);
    HParams hp;
    hp.arch = s.arch;
    hp.n_vocab = s.n_vocab;
    hp.n_ctx_train = s.n_ctx;
    hp.n_embd = s.n_embd;
    hp.n_layer = s.n_layer;
    hp.n_head = s.n_head;
    hp.n_head_kv = s.n_head_kv;
    hp.head_dim = s.head_dim;
    hp.rope_dim = s.head_dim;
    hp.n_ff = s.n_ff;
    hp.rms_eps = s.rms_eps;
    hp.rope_theta = s.rope_theta;
    hp.rope_neox = s.arch == "qwen2";
    hp.tied_embeddings = s.tied;
    hp.qkv_bias = s.qkv_bias;
    return hp;
  }
  // A parse_shape spec with vocab=V.
  std::string rest, vocab;
  size_t start = 0;
  while (start <= name.size()) {
    const size_t end = std::min(name.find(',', start), name.size());
    const std::string item = name.substr(start, end - start);
    if (item.rfind("vocab=", 0) == 0) vocab = item.substr(6);
    else if (!item.empty()) rest += (rest.empty() ? "" : ",") + item;
    start = end + 1;
  }
  PRIMAL_CHECK(!vocab.empty(), "--shape '{}': a spec needs vocab=V", name);
  HParams hp = parse_shape(rest);
  try {
    size_t used = 0;
    hp.n_vocab = std::stoll(vocab, &used);
    PRIMAL_CHECK(used == vocab.size(), "--shape: vocab '{}' is not a number", vocab);
  } catch (const std::logic_error&) {
    fail("--shape: vocab '{}' is not a number", vocab);
  }
  PRIMAL_CHECK(hp.n_vocab >= 2, "--shape: vocab must be at least 2");
  return hp;
}

}  // namespace primal::train
