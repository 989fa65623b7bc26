// Training runs on a tiny model (2 layers, dim 32, a 257-token byte vocabulary) over real text
// (tinyshakespeare): 200 steps lower the training and the held-out loss under both rules; a run
// interrupted and resumed from its checkpoint reproduces the uninterrupted run bit for bit
// (losses, flips, final model bytes) with every piece of state in play; a process killed while
// writing a checkpoint leaves the previous checkpoint loadable, and the run resumes from it.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"
#include "testing.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "train_fixture.h"

using namespace primal;
using namespace primal::train;
namespace fs = std::filesystem;

namespace {

std::string vocab_path() {
  static const std::string p = [] {
    const std::string v = test::temp_dir() + "/bytes.gguf";
    test::write_byte_vocab(v);
    return v;
  }();
  return p;
}

TrainConfig tiny(const std::string& out, Rule rule, int64_t steps) {
  TrainConfig c;
  c.init_random = true;
  c.shape = "layers=2,embd=32,heads=4,kv_heads=2,ff=64";
  c.tokenizer = vocab_path();
  c.data = {test::data_path("text/tinyshakespeare.txt")};
  c.lut.group = 32;
  c.sched.steps = steps;
  c.sched.warmup = 10;
  c.sched.seq = 32;
  c.sched.batch = 8;
  c.eval_seqs = 24;
  c.adam.lr = 3e-3;
  c.adam.scale_lr = 3e-3;
  c.votes.rule = rule;
  c.votes.lr = 3e-3;
  c.votes.flip_lr = 0.5;
  c.votes.consensus = 2;
  c.out = out;
  c.checkpoint_every = 0;
  c.eval_every = 50;
  return c;
}

std::vector<nlohmann::json> rows(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(metrics_path(dir));
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double mean_loss(const std::vector<nlohmann::json>& r, int64_t from, int64_t to) {
  double s = 0;
  int n = 0;
  for (const auto& j : r)
    if (j.contains("loss") && j["step"] >= from && j["step"] <= to) s += j["loss"].get<double>(), ++n;
  return s / n;
}

}  // namespace

class Rules : public ::testing::TestWithParam<Rule> {};

TEST_P(Rules, TwoHundredStepsLowerTrainingAndHeldOutLoss) {
  const std::string out = test::temp_dir() + "/run200_" + rule_name(GetParam());
  const TrainSummary s = run_training(tiny(out, GetParam(), 200), TrainRunOptions{});
  EXPECT_EQ(s.steps, 200);
  EXPECT_EQ(s.tokens, 200u * 8 * 32);
  const auto r = rows(out);
  // Step 0 starts near the uniform distribution's ln(257) = 5.55.
  EXPECT_NEAR(s.first_eval, std::log(257.0), 0.3);
  const double early = mean_loss(r, 1, 10), late = mean_loss(r, 191, 200);
  EXPECT_LT(late, early - 1.5) << "training loss " << early << " -> " << late;
  EXPECT_LT(s.last_eval, s.first_eval - 1.5) << "held-out loss " << s.first_eval << " -> " << s.last_eval;
  int64_t flips = 0;
  for (const auto& j : r)
    if (j.contains("flips")) flips += j["flips"].get<int64_t>();
  EXPECT_GT(flips, 1000);  // the indices learned, not only the float parameters
  // The final model is a LUT GGUF with the tokenizer carried over.
  const GgufFile f(final_model_path(out));
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight").type, DType::LUT4);
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight.scale").type, DType::F16);
  EXPECT_EQ(f.get_str("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(f.get_int("primal.lut.version"), 1);
}

TEST_P(Rules, IndicesAloneLowerTheLoss) {
  // Embeddings, head, norms and scales frozen: only the LUT indices move (votes), so any
  // decrease of the held-out loss is the discrete rule's doing.
  const std::string out = test::temp_dir() + "/indices_" + rule_name(GetParam());
  TrainConfig c = tiny(out, GetParam(), 200);
  c.train_embd = 0;
  c.train_head = 0;
  c.freeze_scales = true;
  c.adam.lr = 0;
  c.eval_every = 0;
  const TrainSummary s = run_training(c, TrainRunOptions{});
  EXPECT_LT(s.last_eval, s.first_eval - 0.1) << "held-out loss " << s.first_eval << " -> " << s.last_eval;
}

INSTANTIATE_TEST_SUITE_P(Train, Rules, ::testing::Values(Rule::Seed, Rule::Momentum),
                         [](const auto& info) { return std::string(rule_name(info.param)); });

namespace {

// Every piece of state at once: peel + sealing schedules, accumulation, cooldown, noise, the
// governor, int16 votes or second moments, shared layers, trained embeddings and head.
TrainConfig all_state(const std::string& out, Rule rule) {
  TrainConfig c = tiny(out, rule, 24);
  c.shape = "layers=4,embd=32,heads=4,kv_heads=2,ff=64";
  c.share = 2;
  c.sched.accum = 2;
  c.sched.peel_every = 4;
  c.sched.seal_steps = 6;
  c.votes.cooldown = 2;
  c.votes.noise = 1;
  c.votes.flip_cap = 0.001;
  c.votes.vote_bits = rule == Rule::Seed ? 16 : 8;
  c.adam.scale_decay = 0.01;
  c.checkpoint_every = 5;
  c.eval_every = 8;
  c.sample_every = 12;
  c.sample_tokens = 8;
  return c;
}

}  // namespace

TEST_P(Rules, ResumeReproducesTheUninterruptedRunBitForBit) {
  const std::string base = test::temp_dir() + "/resume_" + rule_name(GetParam());
  const std::string a = base + "_a", b = base + "_b";
  run_training(all_state(a, GetParam()), TrainRunOptions{});
  TrainRunOptions stop;
  stop.stop_after = 11;  // stops inside a peel phase, with votes and cooldowns pending
  const TrainSummary part = run_training(all_state(b, GetParam()), stop);
  EXPECT_EQ(part.steps, 11);
  EXPECT_FALSE(fs::exists(final_model_path(b)));
  TrainRunOptions resume;
  resume.resume = true;
  TrainConfig rc;
  rc.out = b;
  const TrainSummary rest = run_training(rc, resume);
  EXPECT_EQ(rest.steps, 24);
  const auto ra = rows(a), rb = rows(b);
  ASSERT_EQ(ra.size(), rb.size());
  int64_t flips = 0, sealing = 0;
  for (size_t k = 0; k < ra.size(); ++k) {
    for (const char* key : {"step", "loss", "flips", "grad_norm", "eval_loss", "gov_lr_mult", "sensitivity", "seq"})
      EXPECT_EQ(ra[k].value(key, nlohmann::json()), rb[k].value(key, nlohmann::json())) << "row " << k << " " << key;
    flips += ra[k].value("flips", int64_t(0));
    sealing += ra[k].value("sealing", false);
  }
  EXPECT_GT(flips, 0);
  EXPECT_EQ(sealing, 6);
  EXPECT_TRUE(slurp(final_model_path(a)) == slurp(final_model_path(b))) << "final models differ";
}

TEST(TrainRun, KilledDuringACheckpointWriteLeavesThePreviousOneLoadable) {
  // A checkpoint at step 5; then a resumed process whose file-size limit kills it (SIGXFSZ) in
  // the middle of writing the step-10 checkpoint. The step-5 checkpoint must still load, and
  // resuming from it must end exactly where an uninterrupted run ends.
  const std::string base = test::temp_dir() + "/kill";
  const std::string a = base + "_a", b = base + "_b";
  TrainConfig c = tiny(a, Rule::Momentum, 15);
  c.checkpoint_every = 5;
  run_training(c, TrainRunOptions{});
  c.out = b;
  TrainRunOptions stop;
  stop.stop_after = 5;
  run_training(c, stop);
  const uint64_t size = fs::file_size(checkpoint_path(b));
  const std::string before = slurp(checkpoint_path(b));
  const std::string cmd = "ulimit -f " + std::to_string(size / 2 / 512) + "; exec " + PRIMAL_BINARY +
                          " train --resume " + b + " -q > /dev/null 2>&1";
  const int status = std::system(("bash -c '" + cmd + "'").c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGXFSZ) << "the writer was expected to be killed by the size limit";
  // The interrupted write left its temporary file; the checkpoint itself is untouched.
  bool tmp = false;
  for (const auto& e : fs::directory_iterator(b)) tmp |= e.path().filename().string().rfind("checkpoint.gguf.tmp.", 0) == 0;
  EXPECT_TRUE(tmp);
  EXPECT_EQ(slurp(checkpoint_path(b)), before);
  const GgufFile f(checkpoint_path(b));
  EXPECT_EQ(read_checkpoint_state(f).step, 5);
  // Resume (cleans the temporary up) and finish: same end as the uninterrupted run.
  TrainRunOptions resume;
  resume.resume = true;
  TrainConfig rc;
  rc.out = b;
  run_training(rc, resume);
  for (const auto& e : fs::directory_iterator(b))
    EXPECT_NE(e.path().filename().string().rfind("checkpoint.gguf.tmp.", 0), 0u) << e.path();
  EXPECT_TRUE(slurp(final_model_path(a)) == slurp(final_model_path(b))) << "final models differ";
  const auto ra = rows(a), rb = rows(b);
  ASSERT_EQ(ra.size(), rb.size());
  for (size_t k = 0; k < ra.size(); ++k)
    for (const char* key : {"step", "loss", "flips", "grad_norm", "eval_loss"})
      EXPECT_EQ(ra[k].value(key, nlohmann::json()), rb[k].value(key, nlohmann::json())) << "row " << k << " " << key;
}
