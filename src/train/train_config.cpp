#include "train/train_config.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace primal::train {

std::string TrainConfig::to_json() const {
  nlohmann::json j;
  j["model"] = model;
  j["init_random"] = init_random;
  j["shape"] = shape;
  j["tokenizer"] = tokenizer;
  j["lut"] = {{"type", dtype_name(lut.type)}, {"group", lut.group}, {"grid", lut.grid},
              {"quantize_embeddings", lut.quantize_embeddings}};
  j["share"] = share;
  j["train_embd"] = train_embd;
  j["train_head"] = train_head;
  j["freeze_scales"] = freeze_scales;
  j["teacher"] = teacher;
  j["data"] = data;
  j["extensions"] = extensions;
  j["eval_data"] = eval_data;
  j["eval_frac"] = eval_frac;
  j["eval_seqs"] = eval_seqs;
  j["shuffle"] = shuffle;
  const ScheduleConfig& s = sched;
  j["sched"] = {{"steps", s.steps},           {"warmup", s.warmup},         {"min_frac", s.min_frac},
                {"seq", s.seq},               {"batch", s.batch},           {"accum", s.accum},
                {"peel_every", s.peel_every}, {"peel_layers", s.peel_layers}, {"seal_steps", s.seal_steps},
                {"seal_seq", s.seal_seq},     {"seal_accum", s.seal_accum}};
  j["preset"] = preset;
  const AdamConfig& a = adam;
  j["adam"] = {{"lr", a.lr},       {"scale_lr", a.scale_lr},         {"beta1", a.beta1},
               {"beta2", a.beta2}, {"eps", a.eps},                   {"weight_decay", a.weight_decay},
               {"scale_decay", a.scale_decay}, {"clip", a.clip}};
  const VoteConfig& v = votes;
  j["votes"] = {{"rule", rule_name(v.rule)}, {"vote_bits", v.vote_bits}, {"seed", v.seed},
                {"sensitivity", v.sensitivity}, {"consensus", v.consensus}, {"flip_lr", v.flip_lr},
                {"noise", v.noise}, {"cooldown", v.cooldown}, {"flip_cap", v.flip_cap},
                {"lr", v.lr}, {"second_moment", v.second_moment}, {"beta2", v.beta2}, {"eps", v.eps}};
  j["seed"] = seed;
  j["out"] = out;
  j["checkpoint_every"] = checkpoint_every;
  j["eval_every"] = eval_every;
  j["sample_every"] = sample_every;
  j["sample_tokens"] = sample_tokens;
  j["sample_prompt"] = sample_prompt;
  j["save_f32"] = save_f32;
  return j.dump();
}

TrainConfig TrainConfig::from_json(const std::string& text, const std::string& what) {
  TrainConfig c;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    c.model = j.at("model");
    c.init_random = j.at("init_random");
    c.shape = j.at("shape");
    c.tokenizer = j.at("tokenizer");
    const auto type = dtype_from_name(j.at("lut").at("type").get<std::string>());
    PRIMAL_CHECK(type.has_value(), "{}: unknown LUT type in the saved configuration", what);
    c.lut.type = *type;
    c.lut.group = j.at("lut").at("group");
    c.lut.grid = j.at("lut").at("grid");
    c.lut.quantize_embeddings = j.at("lut").at("quantize_embeddings");
    c.share = j.at("share");
    c.train_embd = j.at("train_embd");
    c.train_head = j.at("train_head");
    c.freeze_scales = j.at("freeze_scales");
    c.teacher = j.value("teacher", std::string());  // absent in checkpoints before distillation
    c.data = j.at("data").get<std::vector<std::string>>();
    c.extensions = j.at("extensions").get<std::vector<std::string>>();
    c.eval_data = j.at("eval_data").get<std::vector<std::string>>();
    c.eval_frac = j.at("eval_frac");
    c.eval_seqs = j.at("eval_seqs");
    c.shuffle = j.at("shuffle");
    const auto& s = j.at("sched");
    c.sched.steps = s.at("steps");
    c.sched.warmup = s.at("warmup");
    c.sched.min_frac = s.at("min_frac");
    c.sched.seq = s.at("seq");
    c.sched.batch = s.at("batch");
    c.sched.accum = s.at("accum");
    c.sched.peel_every = s.at("peel_every");
    c.sched.peel_layers = s.at("peel_layers");
    c.sched.seal_steps = s.at("seal_steps");
    c.sched.seal_seq = s.at("seal_seq");
    c.sched.seal_accum = s.at("seal_accum");
    c.preset = j.at("preset");
    const auto& a = j.at("adam");
    c.adam.lr = a.at("lr");
    c.adam.scale_lr = a.at("scale_lr");
    c.adam.beta1 = a.at("beta1");
    c.adam.beta2 = a.at("beta2");
    c.adam.eps = a.at("eps");
    c.adam.weight_decay = a.at("weight_decay");
    c.adam.scale_decay = a.at("scale_decay");
    c.adam.clip = a.at("clip");
    const auto& v = j.at("votes");
    c.votes.rule = v.at("rule").get<std::string>() == "seed" ? Rule::Seed : Rule::Momentum;
    c.votes.vote_bits = v.at("vote_bits");
    c.votes.seed = v.at("seed");
    c.votes.sensitivity = v.at("sensitivity");
    c.votes.consensus = v.at("consensus");
    c.votes.flip_lr = v.at("flip_lr");
    c.votes.noise = v.at("noise");
    c.votes.cooldown = v.at("cooldown");
    c.votes.flip_cap = v.at("flip_cap");
    c.votes.lr = v.at("lr");
    c.votes.second_moment = v.at("second_moment");
    c.votes.beta2 = v.at("beta2");
    c.votes.eps = v.at("eps");
    c.seed = j.at("seed");
    c.out = j.at("out");
    c.checkpoint_every = j.at("checkpoint_every");
    c.eval_every = j.at("eval_every");
    c.sample_every = j.at("sample_every");
    c.sample_tokens = j.at("sample_tokens");
    c.sample_prompt = j.at("sample_prompt");
    c.save_f32 = j.at("save_f32");
  } catch (const nlohmann::json::exception& e) {
    fail("{}: the saved training configuration is unreadable ({})", what, e.what());
  }
  return c;
}

}  // namespace primal::train
