#include "model/hparams.h"

#include "core/error.h"
#include "io/gguf.h"

namespace primal {

void HParams::validate(const std::string& src) const {
  auto bad = [&](const char* what, int64_t v) { fail("{}: invalid hyper-parameter {} = {}", src, what, v); };
  if (n_vocab <= 0 || n_vocab > (int64_t(1) << 24)) bad("n_vocab", n_vocab);
  if (n_embd <= 0 || n_embd > (1 << 17)) bad("n_embd", n_embd);
  if (n_layer <= 0 || n_layer > 1024) bad("n_layer", n_layer);
  if (n_head <= 0 || n_head > 1024) bad("n_head", n_head);
  if (n_head_kv <= 0 || n_head % n_head_kv != 0) bad("n_head_kv", n_head_kv);
  if (head_dim <= 0 || head_dim > 1024 || head_dim % 2 != 0) bad("head_dim", head_dim);
  if (n_ff <= 0 || n_ff > (1 << 20)) bad("n_ff", n_ff);
  if (rope_dim <= 0 || rope_dim > head_dim || rope_dim % 2 != 0) bad("rope_dim", rope_dim);
  if (!(rms_eps > 0 && rms_eps < 1)) fail("{}: invalid rms_eps {}", src, rms_eps);
  if (!(rope_theta > 0)) fail("{}: invalid rope theta {}", src, rope_theta);
}

HParams hparams_from_gguf(const GgufFile& f) {
  HParams h;
  h.arch = f.get_str("general.architecture");
  if (h.arch != "llama" && h.arch != "qwen2")
    fail("{}: architecture '{}' is not supported (llama, qwen2)", f.path(), h.arch);
  const std::string a = h.arch + ".";
  h.name = f.get_str("general.name", "");
  h.n_embd = f.get_int(a + "embedding_length");
  h.n_layer = f.get_int(a + "block_count");
  h.n_ff = f.get_int(a + "feed_forward_length");
  h.n_head = f.get_int(a + "attention.head_count");
  h.n_head_kv = f.get_int(a + "attention.head_count_kv", h.n_head);
  h.n_ctx_train = f.get_int(a + "context_length", 2048);
  h.head_dim = f.get_int(a + "attention.key_length", h.n_head > 0 ? h.n_embd / h.n_head : 0);
  h.rope_dim = f.get_int(a + "rope.dimension_count", h.head_dim);
  h.rms_eps = float(f.get_float(a + "attention.layer_norm_rms_epsilon", 1e-5));
  h.rope_theta = float(f.get_float(a + "rope.freq_base", 10000.0));
  h.rope_neox = h.arch == "qwen2";
  const std::string scaling = f.get_str(a + "rope.scaling.type", "none");
  if (scaling == "linear") h.rope_scaling = RopeScaling::Linear;
  else if (scaling == "yarn") h.rope_scaling = RopeScaling::Yarn;
  else if (scaling != "none") fail("{}: rope scaling '{}' is not supported", f.path(), scaling);
  h.rope_factor = float(f.get_float(a + "rope.scaling.factor", 1.0));
  h.rope_orig_ctx = f.get_int(a + "rope.scaling.original_context_length", h.n_ctx_train);
  if (f.has("tokenizer.ggml.tokens")) h.n_vocab = int64_t(f.get("tokenizer.ggml.tokens").arr.size());
  h.n_vocab = f.get_int(a + "vocab_size", h.n_vocab);
  h.bos_id = int32_t(f.get_int("tokenizer.ggml.bos_token_id", -1));
  h.eos_id = int32_t(f.get_int("tokenizer.ggml.eos_token_id", -1));
  return h;
}

}  // namespace primal
