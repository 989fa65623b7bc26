#include "model/synth.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "core/error.h"
#include "io/gguf_writer.h"
#include "quant/dequant.h"

namespace primal {
namespace {

// splitmix64: a fast, well-mixed 64-bit stream; one per chunk of rows so that the values do not
// depend on the thread count.
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

uint64_t hash_name(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The standard normal's quantile function at k / 65536 (k = 1 .. 65535), with the two ends put
// at the quantiles of 0.5 / 65536 and 1 - 0.5 / 65536 (+-4.17): a table that turns 32 random
// bits into a normal value by linear interpolation, ten times faster than Box-Muller. Values
// beyond 4.17 standard deviations (2.7e-5 of a true normal's) do not occur.
const std::vector<float>& normal_quantiles() {
  static const std::vector<float> t = [] {
    constexpr int N = 65536;
    std::vector<float> q(N + 1);
    auto inv = [](double p) {  // Phi^-1(p) by bisection on Phi(x) = erfc(-x / sqrt 2) / 2
      double lo = -10, hi = 10;
      for (int i = 0; i < 80; ++i) {
        const double mid = 0.5 * (lo + hi);
        (0.5 * std::erfc(-mid / std::numbers::sqrt2) < p ? lo : hi) = mid;
      }
      return 0.5 * (lo + hi);
    };
    for (int k = 1; k < N; ++k) q[size_t(k)] = float(inv(double(k) / N));
    q[0] = float(inv(0.5 / N));
    q[N] = -q[0];
    return q;
  }();
  return t;
}

// n values of mean + sd * (approximately) normal.
void fill_normal(float* out, int64_t n, uint64_t seed, float mean, float sd) {
  const float* q = normal_quantiles().data();
  SplitMix r{seed};
  auto one = [&](uint32_t u) {
    const uint32_t k = u >> 16;
    const float f = float(u & 0xFFFFu) * (1.0f / 65536.0f);
    return mean + sd * (q[k] + f * (q[k + 1] - q[k]));
  };
  for (int64_t i = 0; i < n; i += 2) {
    const uint64_t b = r.next();
    out[i] = one(uint32_t(b));
    if (i + 1 < n) out[i + 1] = one(uint32_t(b >> 32));
  }
}

// GPT-2's byte -> printable character map (bytes_to_unicode), as UTF-8 strings.
std::vector<std::string> byte_tokens() {
  std::vector<std::string> out(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : 256 + extra++;
    std::string s;
    if (cp < 0x80) {
      s += char(cp);
    } else {
      s += char(0xC0 | (cp >> 6));
      s += char(0x80 | (cp & 0x3F));
    }
    out[size_t(b)] = s;
  }
  return out;
}

uint32_t llama_ftype(DType t) {  // llama_ftype values (general.file_type)
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q8_0: return 7;
    case DType::Q5_0: return 8;
    case DType::Q5_1: return 9;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 11;  // Q3_K_S
    case DType::Q4_K: return 14;  // Q4_K_S
    case DType::Q5_K: return 16;  // Q5_K_S
    case DType::Q6_K: return 18;
    case DType::IQ4_NL: return 25;
    case DType::BF16: return 32;
    default: fail("synth: cannot write type {}", dtype_name(t));
  }
}

bool is_kquant(DType t) {
  return t == DType::Q2_K || t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K;
}

DType fallback(DType t, int64_t row_len) {
  if (!is_kquant(t) || row_len % 256 == 0) return t;
  switch (t) {
    case DType::Q2_K: case DType::Q3_K: return DType::Q4_0;
    case DType::Q4_K: return DType::Q5_0;
    case DType::Q5_K: return DType::Q5_1;
    default: return DType::Q8_0;
  }
}

}  // namespace

SynthShape synth_shape(const std::string& name) {
  SynthShape s;
  s.name = name;
  if (name == "qwen2.5-0.5b" || name == "qwen2.5-1.5b") {
    s.arch = "qwen2", s.pre = "qwen2", s.n_vocab = 151936, s.tied = true, s.qkv_bias = true;
    s.rope_theta = 1e6f, s.rms_eps = 1e-6f, s.n_ctx = 32768;
    if (name == "qwen2.5-0.5b") {
      s.n_embd = 896, s.n_layer = 24, s.n_head = 14, s.n_head_kv = 2, s.head_dim = 64, s.n_ff = 4864;
    } else {
      s.n_embd = 1536, s.n_layer = 28, s.n_head = 12, s.n_head_kv = 2, s.head_dim = 128, s.n_ff = 8960;
    }
  } else if (name == "llama2-7b") {
    s.arch = "llama", s.pre = "default", s.n_vocab = 32000, s.n_embd = 4096, s.n_layer = 32, s.n_head = 32;
    s.n_head_kv = 32, s.head_dim = 128, s.n_ff = 11008, s.rope_theta = 1e4f, s.rms_eps = 1e-5f, s.n_ctx = 4096;
  } else if (name == "llama3-8b") {
    s.arch = "llama", s.pre = "llama-bpe", s.n_vocab = 128256, s.n_embd = 4096, s.n_layer = 32, s.n_head = 32;
    s.n_head_kv = 8, s.head_dim = 128, s.n_ff = 14336, s.rope_theta = 5e5f, s.rms_eps = 1e-5f, s.n_ctx = 8192;
  } else if (name == "seed-500m") {
    // The seed documents' 500M training config (dim 1280, 24 layers, 20 heads, GPT-2 vocabulary);
    // they give no FFN width: SwiGLU 8/3 x 1280 rounded up to 128, as bench/train_pytorch.py.
    s.arch = "llama", s.pre = "gpt-2", s.n_vocab = 50257, s.n_embd = 1280, s.n_layer = 24, s.n_head = 20;
    s.n_head_kv = 20, s.head_dim = 64, s.n_ff = 3456, s.rope_theta = 1e4f, s.rms_eps = 1e-5f, s.n_ctx = 2048;
  } else {
    fail("unknown shape '{}' (known: {})", name, synth_shape_names());
  }
  return s;
}

std::string synth_shape_names() { return "qwen2.5-0.5b, qwen2.5-1.5b, llama2-7b, llama3-8b, seed-500m"; }

DType synth_tensor_type(const SynthShape& s, DType type, const std::string& name, int64_t row_len) {
  const bool head = name == "output.weight" || (s.tied && name == "token_embd.weight");
  if (type == DType::F32 || type == DType::F16 || type == DType::BF16) return type;
  if (head) return (type == DType::Q8_0 || row_len % 256 != 0) ? DType::Q8_0 : DType::Q6_K;
  return fallback(type, row_len);
}

void write_synth_gguf(const SynthShape& s, const SynthOptions& o, const std::string& path) {
  PRIMAL_CHECK(can_quantize(o.type), "synth: cannot write weights of type {}", dtype_name(o.type));
  PRIMAL_CHECK(s.n_vocab > 257 && s.n_embd > 0 && s.n_layer > 0 && s.n_head > 0 && s.n_head_kv > 0 &&
                   s.n_head % s.n_head_kv == 0 && s.head_dim > 0 && s.n_ff > 0,
               "synth: inconsistent shape '{}'", s.name);
  const int64_t C = s.n_embd, Q = s.n_head * s.head_dim, KV = s.n_head_kv * s.head_dim, F = s.n_ff, V = s.n_vocab;
  const std::string a = s.arch + ".";
  GgufWriter w;
  w.add_kv("general.architecture", GgufValue::string(s.arch));
  w.add_kv("general.name", GgufValue::string("synthetic " + s.name));
  w.add_kv("general.file_type", GgufValue::u32(llama_ftype(o.type)));
  w.add_kv("general.quantization_version", GgufValue::u32(2));
  w.add_kv(a + "vocab_size", GgufValue::u32(uint32_t(V)));
  w.add_kv(a + "context_length", GgufValue::u32(uint32_t(s.n_ctx)));
  w.add_kv(a + "embedding_length", GgufValue::u32(uint32_t(C)));
  w.add_kv(a + "block_count", GgufValue::u32(uint32_t(s.n_layer)));
  w.add_kv(a + "feed_forward_length", GgufValue::u32(uint32_t(F)));
  w.add_kv(a + "attention.head_count", GgufValue::u32(uint32_t(s.n_head)));
  w.add_kv(a + "attention.head_count_kv", GgufValue::u32(uint32_t(s.n_head_kv)));
  w.add_kv(a + "attention.key_length", GgufValue::u32(uint32_t(s.head_dim)));
  w.add_kv(a + "attention.value_length", GgufValue::u32(uint32_t(s.head_dim)));
  w.add_kv(a + "rope.dimension_count", GgufValue::u32(uint32_t(s.head_dim)));
  w.add_kv(a + "rope.freq_base", GgufValue::f32(s.rope_theta));
  w.add_kv(a + "attention.layer_norm_rms_epsilon", GgufValue::f32(s.rms_eps));

  // Vocabulary: the 256 byte tokens (any text encodes), filler tokens, <|endoftext|> last.
  std::vector<std::string> tokens = byte_tokens();
  for (int64_t i = 256; i < V - 1; ++i) tokens.push_back("<filler" + std::to_string(i) + ">");
  tokens.push_back("<|endoftext|>");
  std::vector<int32_t> types(size_t(V), 1);  // normal
  types.back() = 3;                          // control
  w.add_kv("tokenizer.ggml.model", GgufValue::string("gpt2"));
  w.add_kv("tokenizer.ggml.pre", GgufValue::string(s.pre));
  w.add_kv("tokenizer.ggml.tokens", GgufValue::strings(tokens));
  w.add_kv("tokenizer.ggml.token_type", GgufValue::i32s(types));
  w.add_kv("tokenizer.ggml.merges", GgufValue::strings({}));
  w.add_kv("tokenizer.ggml.bos_token_id", GgufValue::u32(uint32_t(V - 1)));
  w.add_kv("tokenizer.ggml.eos_token_id", GgufValue::u32(uint32_t(V - 1)));
  w.add_kv("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));

  // Tensors: rows of row_len values, generated and quantized a chunk of rows at a time.
  auto matrix = [&](const std::string& name, int64_t rows, int64_t row_len) {
    const DType t = synth_tensor_type(s, o.type, name, row_len);
    const uint64_t seed = hash_name(name, o.seed);
    w.add_tensor(name, t, {row_len, rows}, [=](uint8_t* dst, size_t) {
      const int64_t chunk = std::max<int64_t>(1, 65536 / row_len);
      const size_t rb = row_bytes(t, row_len);
      const int64_t n_chunks = (rows + chunk - 1) / chunk;
#pragma omp parallel
      {
        std::vector<float> buf(size_t(chunk * row_len));
#pragma omp for schedule(dynamic, 4)
        for (int64_t c = 0; c < n_chunks; ++c) {
          const int64_t r0 = c * chunk, n = std::min(chunk, rows - r0);
          fill_normal(buf.data(), n * row_len, seed + uint64_t(c) * 0x632BE59BD9B4E019ull, 0.0f, 0.02f);
          for (int64_t r = 0; r < n; ++r) quantize_row(t, buf.data() + r * row_len, dst + size_t(r0 + r) * rb, row_len);
        }
      }
    });
  };
  auto vector = [&](const std::string& name, int64_t n, float mean) {
    const uint64_t seed = hash_name(name, o.seed);
    w.add_tensor(name, DType::F32, {n}, [=](uint8_t* dst, size_t) {
      fill_normal(reinterpret_cast<float*>(dst), n, seed, mean, 0.02f);
    });
  };
  matrix("token_embd.weight", V, C);
  vector("output_norm.weight", C, 1.0f);
  if (!s.tied) matrix("output.weight", V, C);
  for (int64_t l = 0; l < s.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    vector(b + "attn_norm.weight", C, 1.0f);
    matrix(b + "attn_q.weight", Q, C);
    matrix(b + "attn_k.weight", KV, C);
    matrix(b + "attn_v.weight", KV, C);
    if (s.qkv_bias) {
      vector(b + "attn_q.bias", Q, 0.0f);
      vector(b + "attn_k.bias", KV, 0.0f);
      vector(b + "attn_v.bias", KV, 0.0f);
    }
    matrix(b + "attn_output.weight", C, Q);
    vector(b + "ffn_norm.weight", C, 1.0f);
    matrix(b + "ffn_gate.weight", F, C);
    matrix(b + "ffn_up.weight", F, C);
    matrix(b + "ffn_down.weight", C, F);
  }
  GgufWriter::Progress progress;
  if (o.progress) progress = [&](size_t i, size_t n, const std::string& name) { o.progress(i + 1, n, name); };
  w.write(path, progress);
}

}  // namespace primal
