// The trainer's model pieces: LUT index packing in the file layout (LUT4 low nibble first,
// LUT16 base byte then fine byte), the quantizer (values on the grid come back exactly, errors
// bounded by half a bucket), GGUF round trips of a model (LUT, shared grids, shared layers,
// qwen2 biases, tied head), a model trained from the LUT file another run wrote, LUT8 and LUT16
// training, and the shape parser.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "core/half.h"
#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "hf_fixture.h"
#include "infer/perplexity.h"
#include "io/model_source.h"
#include "model/weights.h"
#include "quant/dequant.h"
#include "quant/lut_export.h"
#include "quant/lut_model.h"
#include "quant/lut_grid.h"
#include "quant/lut_pack.h"
#include "testing.h"
#include "train/eval.h"
#include "train/model_io.h"
#include "train/trainer.h"
#include "train_fixture.h"

using namespace primal;
using namespace primal::train;

TEST(LutWeight, PackingMatchesTheFileLayout) {
  LutWeight a = LutWeight::make(DType::LUT4, 2, 4, 4, uniform_grid(16), "a");
  a.set(0, 0, 0x3);
  a.set(0, 1, 0xA);
  a.set(1, 3, 0xF);
  EXPECT_EQ(a.idx, (std::vector<uint8_t>{0xA3, 0x00, 0x00, 0xF0}));
  EXPECT_EQ(a.get(0, 1), 0xAu);
  LutWeight b = LutWeight::make(DType::LUT16, 1, 2, 2, uniform_grid(65536), "b");
  b.set(0, 1, 0x1234);
  EXPECT_EQ(b.idx, (std::vector<uint8_t>{0, 0, 0x12, 0x34}));
  EXPECT_EQ(b.get(0, 1), 0x1234u);
  LutWeight c = LutWeight::make(DType::LUT8, 1, 2, 1, uniform_grid(256), "c");
  c.set(0, 0, 200);
  EXPECT_EQ(c.idx, (std::vector<uint8_t>{200, 0}));
  EXPECT_THROW(LutWeight::make(DType::LUT4, 1, 6, 4, uniform_grid(16), "g"), Error);  // 4 does not divide 6
  EXPECT_THROW(LutWeight::make(DType::LUT8, 1, 4, 4, uniform_grid(16), "k"), Error);  // 16 entries for LUT8
  std::vector<float> unsorted = iq4nl_grid();
  std::swap(unsorted[3], unsorted[4]);
  EXPECT_THROW(LutWeight::make(DType::LUT4, 1, 4, 4, unsorted, "s"), Error);
  EXPECT_THROW(LutWeight::make(DType::Q4_0, 1, 32, 32, uniform_grid(16), "t"), Error);
}

// get/set of single indices agree with quant/lut_pack's row packing for every LUT type, both ways.
TEST(LutWeight, SingleIndicesAgreeWithTheRowPackingOfEveryType) {
  std::mt19937 rng(5);
  for (DType t : {DType::LUT2, DType::LUT3, DType::LUT4, DType::LUT5, DType::LUT6, DType::LUT8, DType::LUT16}) {
    const int64_t K = lut_entries(t), I = 64, O = 3;
    LutWeight w = LutWeight::make(t, O, I, 32, uniform_grid(K), "w");
    std::vector<uint16_t> want(static_cast<size_t>(O * I)), got(static_cast<size_t>(I));
    for (auto& v : want) v = uint16_t(rng() % uint32_t(K));
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) w.set(o, i, want[size_t(o * I + i)]);
    std::vector<uint8_t> packed(size_t(w.row_bytes()));
    for (int64_t o = 0; o < O; ++o) {
      unpack_lut_row(t, w.idx.data() + o * w.row_bytes(), got.data(), I);
      EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin() + o * I)) << dtype_name(t) << " row " << o;
      pack_lut_row(t, want.data() + o * I, packed.data(), I);
      EXPECT_TRUE(std::equal(packed.begin(), packed.end(), w.idx.begin() + o * w.row_bytes())) << dtype_name(t);
      for (int64_t i = 0; i < I; ++i) ASSERT_EQ(w.get(o, i), want[size_t(o * I + i)]) << dtype_name(t);
    }
    // Whole rows (each width has its own fast path) equal scale x grid[index], exactly.
    for (size_t k = 0; k < w.scale.size(); ++k) w.scale[k] = 0.5f + float(k);
    std::vector<float> rows(size_t(O * I));
    w.dequantize_rows(0, O, rows.data());
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i)
        ASSERT_EQ(rows[size_t(o * I + i)], w.scale[size_t(o * (I / 32) + i / 32)] * w.grid[w.get(o, i)])
            << dtype_name(t) << " " << o << "," << i;
  }
}

TEST(LutWeight, QuantizerIsExactOnTheGridAndWithinHalfABucketElsewhere) {
  const auto grid = iq4nl_grid();
  // A row that is exactly 0.25 * grid values, with the extreme at the top of the grid: exact.
  std::vector<float> w(32);
  for (int i = 0; i < 32; ++i) w[size_t(i)] = 0.25f * grid[size_t((i * 7) % 16)];
  w[5] = 0.25f * grid[15];
  LutWeight q = quantize_to_lut(w.data(), 1, 32, DType::LUT4, 32, grid, "exact");
  std::vector<float> back(32);
  q.dequantize_rows(0, 1, back.data());
  for (int i = 0; i < 32; ++i) EXPECT_FLOAT_EQ(back[size_t(i)], w[size_t(i)]) << i;
  // Random rows: every value within half of the widest bucket (times the scale) of its original.
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0, 0.05f);
  std::vector<float> r(64 * 128);
  for (auto& x : r) x = d(rng);
  LutWeight g = quantize_to_lut(r.data(), 64, 128, DType::LUT4, 32, grid, "random");
  std::vector<float> rb(r.size());
  g.dequantize_rows(0, 64, rb.data());
  double widest = 0;
  for (size_t k = 1; k < grid.size(); ++k) widest = std::max(widest, double(grid[k] - grid[k - 1]));
  for (int64_t o = 0; o < 64; ++o)
    for (int64_t i = 0; i < 128; ++i) {
      const double s = g.scale[size_t(o * 4 + i / 32)];  // either sign: the grids are asymmetric
      const double x = r[size_t(o * 128 + i)], y = rb[size_t(o * 128 + i)];
      // Clipped values (beyond the scaled grid's ends) may be further off; the rest are close.
      if (x / s < grid.front() || x / s > grid.back()) continue;
      EXPECT_LE(std::fabs(x - y), 0.5 * widest * std::fabs(s) * (1 + 1e-5)) << o << "," << i;
    }
}

namespace {

HParams small(bool qwen, bool tied) {
  HParams hp = parse_shape("layers=3,embd=32,heads=4,kv_heads=2,ff=48,ctx=128");
  hp.n_vocab = 50;
  if (qwen) hp.arch = "qwen2", hp.rope_neox = true, hp.qkv_bias = true;
  hp.tied_embeddings = tied;
  return hp;
}

TrainModel roundtrip(const TrainModel& m, const std::string& path, int64_t share) {
  GgufWriter w;
  KvList kv = {{"tokenizer.ggml.model", GgufValue::string("gpt2")}};
  add_model(w, m, kv, SaveOptions{});
  w.write(path);
  LutSpec spec;
  return load_train_model(*ModelSource::open(path), spec, share);
}

}  // namespace

TEST(ModelIo, RoundTripKeepsIndicesAndFp16ScalesForEveryVariant) {
  for (int variant = 0; variant < 3; ++variant) {
    const bool qwen = variant == 1, tied = variant == 2;
    const int64_t share = variant == 0 ? 2 : 0;  // 3 logical layers over 2 physical ones
    LutSpec spec;
    spec.group = 16;
    TrainModel m = init_random_model(small(qwen, tied), spec, share, 7);
    if (qwen)
      for (auto& l : m.layers) l.bq[3] = 0.5f;
    const std::string p = test::temp_dir() + "/rt" + std::to_string(variant) + ".gguf";
    const TrainModel r = roundtrip(m, p, share);
    EXPECT_EQ(r.hp.arch, m.hp.arch);
    EXPECT_EQ(r.hp.tied_embeddings, tied);
    EXPECT_EQ(r.hp.qkv_bias, qwen);
    EXPECT_EQ(r.hp.rope_neox, qwen);
    ASSERT_EQ(r.n_physical(), m.n_physical());
    EXPECT_EQ(r.layer_of, m.layer_of);
    for (size_t p2 = 0; p2 < m.layers.size(); ++p2) {
      EXPECT_EQ(r.layers[p2].attn_norm, m.layers[p2].attn_norm);
      EXPECT_EQ(r.layers[p2].bq, m.layers[p2].bq);
      const auto a = m.layers[p2].matrices();
      const auto b = r.layers[p2].matrices();
      for (size_t k = 0; k < a.size(); ++k) {
        ASSERT_TRUE(b[k]->is_lut());
        EXPECT_EQ(b[k]->lut->idx, a[k]->lut->idx) << a[k]->name;
        EXPECT_EQ(b[k]->lut->grid, a[k]->lut->grid);
        for (size_t s = 0; s < a[k]->lut->scale.size(); ++s)
          EXPECT_EQ(b[k]->lut->scale[s], f16_to_f32(f32_to_f16(a[k]->lut->scale[s])));
      }
    }
    // Dense embeddings are F16 in the final model.
    for (size_t k = 0; k < m.tok_embd.dense.size(); k += 37)
      EXPECT_EQ(r.tok_embd.dense[k], f16_to_f32(f32_to_f16(m.tok_embd.dense[k])));
    const GgufFile f(p);
    EXPECT_TRUE(f.find_tensor("lut_grid.LUT4") != nullptr);  // one grid shared by all matrices
    EXPECT_TRUE(f.find_tensor("blk.2.attn_q.weight") != nullptr);  // shared layers written per logical layer
    EXPECT_EQ(f.get_str("primal.lut.format"), "lut4");
  }
}

TEST(ModelIo, ReaderRefusesMissingAndMisshapenTensors) {
  LutSpec spec;
  spec.group = 16;
  TrainModel m = init_random_model(small(false, false), spec, 0, 7);
  const std::string p = test::temp_dir() + "/bad.gguf";
  GgufWriter w;
  add_model(w, m, {}, SaveOptions{});
  w.write(p);
  // Rewrite without one scale tensor.
  const GgufFile f(p);
  GgufWriter w2;
  for (const auto& [k, v] : f.kv()) w2.add_kv(k, v);
  for (const auto& t : f.tensors())
    if (t.name != "blk.1.ffn_up.weight.scale") w2.add_tensor(t.name, t.type, t.ne, t.data, t.nbytes);
  const std::string p2 = test::temp_dir() + "/bad2.gguf";
  w2.write(p2);
  try {
    load_train_model(*ModelSource::open(p2), spec, 0);
    FAIL() << "a LUT matrix without scales must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.1.ffn_up.weight.scale"), std::string::npos) << e.what();
  }
}

TEST(ModelIo, TrainingContinuesFromALutFileAndLut8Lut16Train) {
  const std::string vocab = test::temp_dir() + "/bytes.gguf";
  test::write_byte_vocab(vocab);
  auto run = [&](const std::string& out, DType type, const std::string& grid, const std::string& model) {
    TrainConfig c;
    c.init_random = model.empty();
    c.model = model;
    c.shape = c.init_random ? "layers=2,embd=32,heads=4,kv_heads=2,ff=64" : "";
    c.tokenizer = vocab;
    c.data = {test::data_path("text/tinyshakespeare.txt")};
    c.lut.type = type;
    c.lut.grid = grid;
    c.sched.steps = 40;
    c.sched.warmup = 4;
    c.sched.seq = 32;
    c.sched.batch = 8;
    c.adam.lr = 3e-3;
    c.votes.lr = 3e-3;
    c.train_embd = c.train_head = 1;
    c.out = test::temp_dir() + "/" + out;
    c.eval_every = 0;
    return run_training(c, TrainRunOptions{});
  };
  const TrainSummary a = run("lut8", DType::LUT8, "uniform", "");
  EXPECT_LT(a.last_eval, a.first_eval - 0.5);
  const TrainSummary b = run("lut16", DType::LUT16, "uniform", "");
  EXPECT_LT(b.last_eval, b.first_eval - 0.5);
  // Continue from the LUT8 model file: it starts where the first run ended (F16 rounding of the
  // scales and dense matrices aside) and keeps going down.
  const TrainSummary c = run("cont", DType::LUT4, "iq4nl", final_model_path(test::temp_dir() + "/lut8"));
  EXPECT_NEAR(c.first_eval, a.last_eval, 0.01);
  EXPECT_LT(c.last_eval, c.first_eval);
  const GgufFile f(final_model_path(test::temp_dir() + "/cont"));
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight").type, DType::LUT8);  // LUT tensors stay what they were
}

TEST(Shape, ParsesKeysAndRefusesTheRest) {
  const HParams hp = parse_shape("layers=4,embd=64,heads=4,kv_heads=2,ff=172,ctx=256,theta=500000");
  EXPECT_EQ(hp.n_layer, 4);
  EXPECT_EQ(hp.head_dim, 16);
  EXPECT_EQ(hp.rope_dim, 16);
  EXPECT_EQ(hp.n_head_kv, 2);
  EXPECT_EQ(hp.n_ctx_train, 256);
  EXPECT_FLOAT_EQ(hp.rope_theta, 500000.0f);
  EXPECT_THROW(parse_shape("layers=4,embd=64"), Error);
  EXPECT_THROW(parse_shape("layers=4,embd=64,heads=5,ff=8"), Error);
  EXPECT_THROW(parse_shape("layers=x,embd=64,heads=4,ff=8"), Error);
  EXPECT_THROW(parse_shape("layers=2.5,embd=64,heads=4,ff=8"), Error);
  EXPECT_THROW(parse_shape("layers"), Error);
}

// The trainer and `primal quantize` / `run` / `ppl` / `export` share one LUT file layout: a model
// quantized by quant/lut_model (LUT embeddings and head included) loads into the trainer with
// exactly the values the inference loader dequantizes; after flips and scale changes the trainer's
// file is read by the inference forward (same perplexity as the trainer's own forward) and exports
// to IQ4_NL with every matrix carried over exactly.
TEST(ModelIo, SharesTheLayoutOfPrimalQuantizeRunPplAndExport) {
  const std::string dir = test::temp_dir() + "/interop";
  test::write_tiny_model(dir + "/hf", test::TinyModel{});
  const std::string q = dir + "/q.gguf";
  LutQuantOptions qo;  // LUT4, iq4nl, group 32
  quantize_model(dir + "/hf", q, qo);
  const auto src = ModelSource::open(q);
  TrainModel m = load_train_model(*src, LutSpec{}, 0);
  std::vector<Matrix*> mats = m.lut_matrices();
  ASSERT_EQ(mats.size(), 2u + 7 * 2);  // embedding and head are LUT too
  std::vector<float> want, got;
  for (const Matrix* mt : mats) {
    const TensorRef& t = src->tensor(mt->name);
    EXPECT_EQ(mt->lut->type, DType::LUT4);
    EXPECT_EQ(mt->lut->G, 32);
    EXPECT_EQ(mt->lut->grid_name, "iq4nl");
    want.resize(size_t(mt->I));
    got.resize(size_t(mt->I));
    for (int64_t o = 0; o < mt->O; ++o) {
      dequantize_tensor_row(t, o, want.data());
      mt->lut->dequantize_rows(o, 1, got.data());
      ASSERT_EQ(got, want) << mt->name << " row " << o;
    }
  }
  // Training-like changes: flips and scales (fp16-exact, so the file holds them unchanged).
  for (Matrix* mt : mats) {
    LutWeight& L = *mt->lut;
    for (int64_t k = 0; k < mt->O; ++k) L.set(k, (k * 7) % mt->I, (L.get(k, (k * 7) % mt->I) + 1) % 16);
    L.scale[0] = f16_to_f32(f32_to_f16(L.scale[0] * 1.25f));
  }
  const std::string out = dir + "/trained.gguf";
  {
    GgufWriter w;
    add_model(w, m, tokenizer_metadata(q), SaveOptions{});
    w.write(out);
  }
  std::vector<int32_t> ids(400);
  std::mt19937 rng(9);
  for (auto& x : ids) x = int32_t(rng() % 14);  // not BOS/EOS
  const PplResult mine = perplexity(m, ids, 64, 14);
  const auto model = Model::open(out);
  PerplexityOptions po;
  po.n_ctx = 64;
  po.bos_id = 14;
  const PerplexityResult theirs = primal::perplexity(model->w, ids, po);
  EXPECT_EQ(theirs.n_scored, mine.scored);
  EXPECT_NEAR(theirs.nll_mean, mine.nll, 1e-5);
  EXPECT_GT(std::fabs(mine.ppl - primal::perplexity(Model::open(q)->w, ids, po).ppl), 1e-4);  // the changes count
  ExportOptions eo;  // IQ4_NL
  const ExportReport rep = export_model(out, dir + "/iq4nl.gguf", eo);
  EXPECT_EQ(rep.exact, int64_t(mats.size()));
  EXPECT_EQ(rep.requantized, 0);
  EXPECT_NEAR(primal::perplexity(Model::open(dir + "/iq4nl.gguf")->w, ids, po).nll_mean, mine.nll, 1e-5);
}
