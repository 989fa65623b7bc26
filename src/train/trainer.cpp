#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "infer/sampler.h"
#include "io/model_source.h"
#include "quant/lut_pack.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/corpus.h"
#include "train/data_loader.h"
#include "train/forward_backward.h"
#include "train/model_io.h"

namespace primal::train {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string checkpoint_path(const std::string& dir) { return (fs::path(dir) / "checkpoint.gguf").string(); }
std::string metrics_path(const std::string& dir) { return (fs::path(dir) / "metrics.jsonl").string(); }
std::string final_model_path(const std::string& dir) { return (fs::path(dir) / "model.gguf").string(); }

namespace {

std::string fmt_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, t / 60 % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

// metrics.jsonl: on resume, the rows after the checkpoint's step are dropped (they belong to the
// part of the interrupted run that is redone).
void trim_metrics(const std::string& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      const auto j = nlohmann::json::parse(line);
      if (j.value("step", int64_t(0)) <= last_step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      break;  // a row torn by the interruption: everything from here is dropped
    }
  }
  in.close();
  write_file_atomic(path, kept);
}

// Which part of the model a LUT matrix or float parameter belongs to.
struct Owners {
  std::map<const Matrix*, int64_t> layer;  // physical layer, -1 embeddings, -2 head
};

TrainMask make_mask(const Phase& ph, const TrainConfig& cfg, int64_t P) {
  TrainMask k;
  k.embd = cfg.embd_trainable();
  k.head = cfg.head_trainable();
  k.out_norm = true;
  k.scales = !cfg.freeze_scales;
  k.layer.assign(size_t(P), true);
  if (ph.top_layers >= 0)
    for (int64_t p = 0; p < P; ++p) k.layer[size_t(p)] = p >= P - ph.top_layers;
  return k;
}

double persistent_bytes_per_weight(TrainModel& m, const VoteConfig& vc) {
  double bytes = 0, weights = 0;
  for (Matrix* mt : m.lut_matrices()) {
    const LutWeight& L = *mt->lut;
    const double n = double(L.O * L.I);
    weights += n;
    bytes += double(L.idx.size());                        // packed indices
    bytes += n * (vc.vote_bits / 8);                      // votes
    if (vc.cooldown > 0) bytes += n;                      // cooldown counters
    bytes += double(L.scale.size()) * 12;                 // fp32 scale + AdamW m, v
    if (vc.rule == Rule::Momentum && vc.second_moment) bytes += double(L.O + L.I) * 4;
  }
  return weights > 0 ? bytes / weights : 0;
}

}  // namespace

TrainSummary run_training(const TrainConfig& cfg_in, const TrainRunOptions& o) {
  auto log = [&](const std::string& s) {
    if (o.log) o.log(s);
  };
  TrainConfig cfg = cfg_in;
  const std::string ckpt = checkpoint_path(cfg.out);
  std::unique_ptr<GgufFile> resume_file;
  TrainState st;
  if (o.resume) {
    PRIMAL_CHECK(fs::exists(ckpt), "{}: no checkpoint to resume from", ckpt);
    remove_stale_temporaries(ckpt);
    resume_file = std::make_unique<GgufFile>(ckpt);
    st = read_checkpoint_state(*resume_file);
    const std::string out = cfg.out;
    cfg = TrainConfig::from_json(st.config_json, ckpt);
    cfg.out = out;
    if (o.steps_override > 0) {
      PRIMAL_CHECK(o.steps_override >= st.step, "--steps {} is below the {} steps already done", o.steps_override,
                   st.step);
      cfg.sched.steps = o.steps_override;
    }
  } else {
    fs::create_directories(cfg.out);
    remove_stale_temporaries(ckpt);
  }
  cfg.votes.seed = cfg.seed;
  cfg.sched.validate();

  // Tokenizer and the metadata that goes into saved models.
  const std::string tok_src = cfg.tokenizer.empty() ? cfg.model : cfg.tokenizer;
  PRIMAL_CHECK(!tok_src.empty(), "training from scratch needs --tokenizer");
  const std::unique_ptr<Tokenizer> tok = Tokenizer::open(tok_src);
  const KvList tok_kv = tokenizer_metadata(tok_src);
  const int32_t eos = tok->eos_id();
  PRIMAL_CHECK(eos >= 0, "{}: the tokenizer has no EOS token to separate documents", tok_src);

  // The model.
  TrainModel m;
  if (resume_file) {
    m = load_train_model(*ModelSource::open(resume_file->path()), cfg.lut, cfg.share);
    restore_scales(*resume_file, m);
  } else if (cfg.init_random) {
    HParams hp = parse_shape(cfg.shape);
    hp.n_vocab = tok->n_vocab();
    hp.bos_id = tok->bos_id();
    hp.eos_id = eos;
    m = init_random_model(hp, cfg.lut, cfg.share, cfg.seed);
  } else {
    const auto src = ModelSource::open(cfg.model);
    const bool lut = std::any_of(src->tensors().begin(), src->tensors().end(),
                                 [](const TensorRef& t) { return is_lut(t.type); });
    log(lut ? fmt::format("loading {}", cfg.model)
            : fmt::format("loading {} and quantizing its layers to {} (grid {}, group {})", cfg.model,
                          dtype_name(cfg.lut.type), cfg.lut.grid, cfg.lut.group));
    m = load_train_model(*src, cfg.lut, cfg.share);
  }
  PRIMAL_CHECK(m.hp.n_vocab >= tok->n_vocab(), "the model's vocabulary ({}) is smaller than the tokenizer's ({})",
               m.hp.n_vocab, tok->n_vocab());
  // The teacher (distillation): its matrices as the source stores them, float ones kept float.
  TrainModel teacher_model;
  Workspace<float> teacher_ws;
  Teacher<float> teacher;
  if (!cfg.teacher.empty()) {
    log(fmt::format("teacher {}: the loss is the KL to its next-token distribution", cfg.teacher));
    LutSpec keep;
    keep.type = DType::F32;
    teacher_model = load_train_model(*ModelSource::open(cfg.teacher), keep, 0);
    PRIMAL_CHECK(teacher_model.hp.n_vocab == m.hp.n_vocab, "--teacher {}: vocabulary {} differs from the model's {}",
                 cfg.teacher, teacher_model.hp.n_vocab, m.hp.n_vocab);
    teacher.model = &teacher_model;
    teacher.ws = &teacher_ws;
  }
  const int64_t P = m.n_physical();
  if (!o.resume) cfg.sched.apply_preset(cfg.preset, P);
  cfg.sched.validate();
  if (o.plan) o.plan(m, cfg);
  if (cfg.embd_trainable() && m.tok_embd.is_lut())
    log("LUT token embeddings: their scales train (AdamW), their indices stay as they are");

  // Data.
  CorpusOptions co;
  co.extensions = cfg.extensions;
  const Corpus all = Corpus::scan(cfg.data, co);
  Corpus train_docs, held;
  if (cfg.eval_data.empty()) {
    all.split_tail(cfg.eval_frac, train_docs, held);
  } else {
    train_docs = all;
    held = Corpus::scan(cfg.eval_data, co);
  }
  const int64_t T0 = cfg.sched.seq;
  const auto eval_seqs = eval_sequences(held, *tok, eos, T0, cfg.eval_seqs);
  PRIMAL_CHECK(!eval_seqs.empty(), "the held-out data is shorter than one sequence of {} tokens", T0 + 1);

  // Optimizer state.
  Grads<float> grads;
  grads.allocate(m, cfg.embd_trainable(), cfg.head_trainable());
  VoteEngine votes(cfg.votes, m.lut_matrices());
  AdamW adam(cfg.adam, m, grads);
  if (resume_file) {
    restore_votes(*resume_file, votes);
    restore_adam(*resume_file, adam);
    resume_file.reset();  // the model no longer points into it
  }
  Owners own;
  own.layer[&m.tok_embd] = -1;
  own.layer[&m.output] = -2;
  for (int64_t p = 0; p < P; ++p)
    for (const Matrix* mt : m.layers[size_t(p)].matrices()) own.layer[mt] = p;

  DataLoader loader(train_docs, *tok, eos, cfg.seed, cfg.shuffle, st.data);
  const std::string mpath = metrics_path(cfg.out);
  if (o.resume) trim_metrics(mpath, st.step);
  std::ofstream metrics(mpath, o.resume ? std::ios::app : std::ios::trunc);
  PRIMAL_CHECK(metrics, "{}: cannot open", mpath);

  const int64_t lut_weights = [&] {
    int64_t n = 0;
    for (Matrix* mt : m.lut_matrices()) n += mt->O * mt->I;
    return n;
  }();
  log(fmt::format("model: {} layers ({} physical), embd {}, vocab {}, {:.2f}M parameters, {:.2f}M LUT weights", m.hp.n_layer, P,
                  m.hp.n_embd, m.hp.n_vocab, double(m.n_params()) * 1e-6, double(lut_weights) * 1e-6));
  log(fmt::format("rule {}: {} votes, persistent state {:.3f} bytes per LUT weight (indices, votes{}, scales + AdamW)",
                  rule_name(cfg.votes.rule), cfg.votes.vote_bits == 8 ? "int8" : "int16",
                  persistent_bytes_per_weight(m, cfg.votes), cfg.votes.cooldown > 0 ? ", cooldown" : ""));
  log(fmt::format("data: {} training documents ({:.1f} MB), {} evaluation sequences of {} tokens; {} x {} x {} = {} "
                  "tokens per step",
                  train_docs.size(), double(train_docs.bytes()) * 1e-6, eval_seqs.size(), T0, cfg.sched.batch, T0,
                  cfg.sched.accum, cfg.sched.batch * T0 * cfg.sched.accum));
  if (o.resume) log(fmt::format("resuming at step {} ({} tokens)", st.step, st.tokens));

  EngineContext ectx;
  ectx.model = &m;
  ectx.votes = &votes;
  ectx.adam = &adam;
  ectx.grads = &grads;
  ectx.cfg = &cfg;
  ectx.teacher = teacher.model ? &teacher : nullptr;
  ectx.max_batch = cfg.sched.batch;
  ectx.max_seq = std::max(cfg.sched.seq, cfg.sched.seal_seq);
  const std::unique_ptr<StepEngine> engine = o.engine ? o.engine(ectx) : make_cpu_engine(ectx);
  if (engine->name() != "cpu") log(fmt::format("device: {}", engine->name()));
  std::vector<int32_t> in, tg;
  auto evaluate = [&]() {
    double nll = 0;
    int64_t count = 0;
    const TrainMask none = make_mask(phase_at(cfg.sched, 0), cfg, P);
    const int64_t B = cfg.sched.batch;
    for (size_t s0 = 0; s0 < eval_seqs.size(); s0 += size_t(B)) {
      const int64_t n = std::min<int64_t>(B, int64_t(eval_seqs.size() - s0));
      in.resize(size_t(n * T0));
      tg.resize(size_t(n * T0));
      for (int64_t b = 0; b < n; ++b) {
        const auto& q = eval_seqs[s0 + size_t(b)];
        std::copy(q.begin(), q.end() - 1, in.begin() + b * T0);
        std::copy(q.begin() + 1, q.end(), tg.begin() + b * T0);
      }
      const LossSum ls = engine->forward_backward(none, in.data(), tg.data(), n, T0, 1.0, false);
      nll += ls.nll;
      count += ls.count;
    }
    return nll / double(count);
  };
  auto sample = [&](int64_t step) {
    engine->sync_to_host();  // sampling runs the CPU forward on the host model
    std::vector<int32_t> ids = cfg.sample_prompt.empty()
                                   ? std::vector<int32_t>(eval_seqs[0].begin(), eval_seqs[0].begin() + std::min<int64_t>(8, T0))
                                   : tok->encode(cfg.sample_prompt, true, false);
    if (ids.empty()) ids.push_back(eos);
    SamplerParams sp;
    sp.seed = cfg.seed ^ uint64_t(step);
    Sampler sampler(sp);
    for (int32_t t : ids) sampler.accept(t);
    Workspace<float> sws;
    std::vector<float> logits(size_t(m.hp.n_vocab));
    const size_t n_prompt = ids.size();
    for (int64_t k = 0; k < cfg.sample_tokens; ++k) {
      const int64_t n = std::min<int64_t>(int64_t(ids.size()), T0);
      forward_last_logits<float>(m, sws, ids.data() + ids.size() - size_t(n), n, logits.data());
      const int32_t t = sampler.sample(logits.data(), m.hp.n_vocab);
      sampler.accept(t);
      ids.push_back(t);
      if (tok->is_eog(t)) break;
    }
    const std::string prompt = tok->decode(std::vector<int32_t>(ids.begin(), ids.begin() + std::ptrdiff_t(n_prompt)));
    const std::string cont = tok->decode(std::vector<int32_t>(ids.begin() + std::ptrdiff_t(n_prompt), ids.end()));
    std::ofstream sf((fs::path(cfg.out) / "samples.txt").string(), std::ios::app);
    sf << "=== step " << step << "\n" << prompt << "|" << cont << "\n";
    log(fmt::format("sample at step {}: {}|{}", step, prompt, cont));
  };
  auto write_ckpt = [&]() {
    engine->sync_to_host();
    st.data = loader.position();
    st.config_json = cfg.to_json();
    write_checkpoint(ckpt, m, votes, adam, st, tok_kv);
  };

  TrainSummary sum;
  if (!o.resume) {
    // The starting point, so that every run's metrics show where it began.
    const double el = evaluate();
    nlohmann::json er;
    er["step"] = 0;
    er["eval_loss"] = el;
    er["eval_ppl"] = std::exp(el);
    metrics << er.dump() << "\n";
    metrics.flush();
    sum.first_eval = el;
    log(fmt::format("eval at step 0: loss {:.4f} (ppl {:.3f})", el, std::exp(el)));
  }
  const auto t_start = Clock::now();
  const double seconds0 = st.seconds;
  const int64_t first_step = st.step;
  const int64_t steps = cfg.sched.steps;
  const int64_t end = o.stop_after > 0 ? std::min(steps, st.step + o.stop_after) : steps;
  for (int64_t s = st.step; s < end; ++s) {
    const auto t0 = Clock::now();
    const Phase ph = phase_at(cfg.sched, s);
    TrainMask mask = make_mask(ph, cfg, P);
    const double lr_mult = lr_multiplier(cfg.sched, s);
    engine->begin_step(s, lr_mult);
    const int64_t tokens_step = ph.batch * ph.seq * ph.accum;
    double nll = 0;
    for (int64_t a = 0; a < ph.accum; ++a) {
      loader.next(ph.batch, ph.seq, in, tg);
      nll += engine->forward_backward(mask, in.data(), tg.data(), ph.batch, ph.seq, 1.0 / double(tokens_step), true).nll;
    }
    const double loss = nll / double(tokens_step);
    PRIMAL_CHECK(std::isfinite(loss), "step {}: the loss is not finite ({})", s + 1, loss);
    auto matrix_trainable = [&](const Matrix& mt) {
      const int64_t l = own.layer.at(&mt);
      return l >= 0 ? bool(mask.layer[size_t(l)]) : l == -1 ? mask.embd : mask.head;
    };
    const StepStats fl = engine->apply_votes(matrix_trainable);
    const double gnorm = engine->adam_step(lr_mult, [&](const FloatParam& p) {
      if (p.kind == ParamKind::Scale && !mask.scales) return false;
      if (p.layer >= 0) return bool(mask.layer[size_t(p.layer)]);
      if (p.matrix == &m.tok_embd) return mask.embd;
      if (p.matrix == &m.output) return mask.head;
      return mask.out_norm;  // output_norm
    });
    st.step = s + 1;
    st.tokens += uint64_t(tokens_step);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    st.seconds = seconds0 + std::chrono::duration<double>(Clock::now() - t_start).count();
    const double tok_s = double(tokens_step) / dt;
    int64_t n_train_layers = 0;
    for (bool b : mask.layer) n_train_layers += b;

    nlohmann::json row;
    row["step"] = st.step;
    row["loss"] = loss;
    if (teacher.model) row["objective"] = "kl";
    row["lr"] = cfg.adam.lr * lr_mult;
    row["lut_lr"] = cfg.votes.rule == Rule::Momentum ? cfg.votes.lr * lr_mult * votes.governor().lr_mult
                                                     : cfg.votes.flip_lr * lr_mult * votes.governor().lr_mult;
    row["flips"] = fl.flips;
    row["flip_rate"] = fl.rate();
    row["tok_s"] = tok_s;
    row["tokens"] = st.tokens;
    row["grad_norm"] = gnorm;
    row["seq"] = ph.seq;
    row["accum"] = ph.accum;
    row["layers"] = n_train_layers;
    row["sensitivity"] = votes.governor().sensitivity;
    row["gov_lr_mult"] = votes.governor().lr_mult;
    if (ph.sealing) row["sealing"] = true;
    metrics << row.dump() << "\n";
    metrics.flush();
    if (s == first_step) sum.first_loss = loss;
    sum.last_loss = loss;

    const double per_step = (st.seconds - seconds0) / double(st.step - first_step);
    const std::string bar = fmt::format("step {}/{} | loss {:.4f} | {:.0f} tok/s | {} flips/step | ETA {}", st.step,
                                        steps, loss, tok_s, fl.flips, fmt_duration(per_step * double(steps - st.step)));
    if (o.tty) {
      std::fprintf(stderr, "\r%s\x1b[K", bar.c_str());
      std::fflush(stderr);
    } else if (st.step % std::max<int64_t>(1, o.log_every) == 0 || st.step == steps || s == first_step) {
      log(bar);
    }
    const bool last = st.step == steps;
    if ((cfg.eval_every > 0 && st.step % cfg.eval_every == 0) || last) {
      const double el = evaluate();
      nlohmann::json er;
      er["step"] = st.step;
      er["eval_loss"] = el;
      er["eval_ppl"] = std::exp(el);
      metrics << er.dump() << "\n";
      metrics.flush();
      if (sum.first_eval < 0) sum.first_eval = el;
      sum.last_eval = el;
      if (o.tty) std::fprintf(stderr, "\n");
      log(fmt::format("eval at step {}: loss {:.4f} (ppl {:.3f})", st.step, el, std::exp(el)));
    }
    if (cfg.sample_every > 0 && (st.step % cfg.sample_every == 0 || last)) {
      if (o.tty) std::fprintf(stderr, "\n");
      sample(st.step);
    }
    if ((cfg.checkpoint_every > 0 && st.step % cfg.checkpoint_every == 0) || last || st.step == end) write_ckpt();
  }
  if (o.tty) std::fprintf(stderr, "\n");
  sum.steps = st.step;
  sum.tokens = st.tokens;
  sum.seconds = st.seconds;
  if (st.step < steps) {
    log(fmt::format("stopped after step {} of {}; continue with --resume {}", st.step, steps, cfg.out));
    return sum;
  }

  // The final model.
  engine->sync_to_host();
  GgufWriter w;
  SaveOptions so;
  so.dense_type = cfg.save_f32 ? DType::F32 : DType::F16;
  add_model(w, m, tok_kv, so);
  const std::string final_path = final_model_path(cfg.out);
  w.write(final_path);
  log(fmt::format("wrote {}", final_path));
  return sum;
}

}  // namespace primal::train
