// The training commands through the primal binary: tokenize-data -> train -> plot, metrics rows,
// clear errors for bad flags and bad files (exit 1, "primal: error: ..."), and a run killed with
// SIGKILL at several moments (checkpoint every step) that always resumes to the end.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "testing.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "train_fixture.h"

using namespace primal;
namespace fs = std::filesystem;

namespace {

std::string vocab() {
  static const std::string p = [] {
    const std::string v = test::temp_dir() + "/bytes.gguf";
    test::write_byte_vocab(v);
    return v;
  }();
  return p;
}

std::string tiny_args(const std::string& out) {
  return "train --init random --shape layers=2,embd=32,heads=4,kv_heads=2,ff=64 --tokenizer " + vocab() +
         " --seq 32 --batch 4 --lr 3e-3 --lut-lr 3e-3 --out " + out;
}

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void expect_error(const test::RunResult& r, const std::string& fragment) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("primal: error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

}  // namespace

TEST(CliTrain, TokenizeTrainPlot) {
  const std::string d = test::temp_dir() + "/cli_pipeline";
  fs::create_directories(d);
  const std::string bin = d + "/shakespeare.tok";
  auto r = test::run_primal("tokenize-data " + test::data_path("text/tinyshakespeare.txt") + " --tokenizer " +
                            vocab() + " -o " + bin + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(fs::file_size(bin), 32 + 2 * (fs::file_size(test::data_path("text/tinyshakespeare.txt")) + 1));
  const std::string out = d + "/run";
  r = test::run_primal(tiny_args(out) + " --data " + bin + " --steps 30 --eval-every 10 --sample-every 15 -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("trained 30 steps, 3840 tokens"), std::string::npos) << r.out;
  // One row per step with the required fields, evaluation rows at 0, 10, 20, 30.
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  int train_rows = 0;
  std::vector<int64_t> evals;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) {
      evals.push_back(j["step"]);
      continue;
    }
    ++train_rows;
    for (const char* k : {"step", "loss", "lr", "flips", "tok_s"}) EXPECT_TRUE(j.contains(k)) << k << " in " << line;
  }
  EXPECT_EQ(train_rows, 30);
  EXPECT_EQ(evals, (std::vector<int64_t>{0, 10, 20, 30}));
  EXPECT_NE(slurp(out + "/samples.txt").find("=== step 30"), std::string::npos);
  // The final model: a GGUF that primal reads back.
  r = test::run_primal("inspect " + out + "/model.gguf");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("LUT4"), std::string::npos) << r.out;
  // Plots.
  r = test::run_primal("plot " + out + "/metrics.jsonl " + d + "/p.svg");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string svg = slurp(d + "/p.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  r = test::run_primal("plot " + out + "/metrics.jsonl " + d + "/p.png");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string png = slurp(d + "/p.png");
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(png.size() - 8, 4), "IEND");
}

TEST(CliTrain, BadFlagsAndFilesAreClearErrors) {
  const std::string d = test::temp_dir() + "/cli_errors";
  fs::create_directories(d);
  const std::string text = test::data_path("text/tinyshakespeare.txt");
  expect_error(test::run_primal(tiny_args(d + "/a") + " --steps 5"), "--data is required");
  expect_error(test::run_primal(tiny_args(d + "/a") + " --data " + text), "--steps must be positive");
  expect_error(test::run_primal("train --init random --shape layers=2,embd=32,heads=4,fff=3 --tokenizer " + vocab() +
                                " --data " + text + " --steps 2 --out " + d + "/b"),
               "--shape: unknown key 'fff'");
  expect_error(test::run_primal("train --resume " + d + "/nothing"), "no checkpoint to resume from");
  expect_error(test::run_primal(tiny_args(d + "/c") + " --data " + d + "/missing.txt --steps 2"), "missing.txt");
  expect_error(test::run_primal(tiny_args(d + "/c") + " --data " + text + " --steps 2 --vote-bits 12"),
               "--vote-bits must be 8 or 16");
  expect_error(test::run_primal(tiny_args(d + "/c") + " --data " + text + " --steps 2 --memory 8GiB"),
               "need --device cuda");
  expect_error(test::run_primal(tiny_args(d + "/c") + " --data " + text + " --steps 2 --device cuda --memory 8XB"),
               "'8XB': unknown unit");
  auto r = test::run_primal(tiny_args(d + "/c") + " --data " + text + " --steps 2 --rule sgd");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--rule"), std::string::npos) << r.err;
  // A damaged token file and a damaged metrics file.
  std::ofstream(d + "/bad.tok", std::ios::binary) << std::string("PRMLTOK1") + std::string(30, '\x01');
  expect_error(test::run_primal(tiny_args(d + "/e") + " --data " + d + "/bad.tok --steps 2"), "bad.tok");
  std::ofstream(d + "/m.jsonl") << "{\"step\": 1, \"loss\": 2}\n{oops\n";
  expect_error(test::run_primal("plot " + d + "/m.jsonl " + d + "/m.svg"), "m.jsonl: line 2");
  expect_error(test::run_primal("plot " + d + "/m.jsonl " + d + "/m.gif"), "must end in .svg or .png");
}

TEST(CliTrain, SigkillAtAnyMomentLeavesAResumableRun) {
  const std::string out = test::temp_dir() + "/cli_kill";
  const std::string args =
      tiny_args(out) + " --data " + test::data_path("text/tinyshakespeare.txt") + " --steps 400 --checkpoint-every 1 -q";
  // Start, then kill -9 at three different moments of the run (counted from when a checkpoint
  // first exists, so that a slow machine still gets that far); every time the checkpoint that
  // exists must load as a whole, and its step must never go backwards.
  int64_t last = 0;
  const std::string ckpt = train::checkpoint_path(out);
  for (const char* delay : {"0.3", "0.7", "1.3"}) {
    const std::string run = std::string(PRIMAL_BINARY) + " " + (last == 0 ? args : "train --resume " + out + " -q");
    const std::string cmd = "bash -c '" + run + " > /dev/null 2>&1 & pid=$!; for i in $(seq 2400); do [ -e " + ckpt +
                            " ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done; sleep " + delay +
                            "; kill -9 $pid 2>/dev/null; wait $pid; exit 0'";
    const int status = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_TRUE(fs::exists(train::checkpoint_path(out))) << "no checkpoint after " << delay << " s";
    const GgufFile f(train::checkpoint_path(out));
    const int64_t step = train::read_checkpoint_state(f).step;
    EXPECT_GE(step, last);
    last = step;
  }
  const auto r = test::run_primal("train --resume " + out + " -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("trained 400 steps"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(train::final_model_path(out)));
}
