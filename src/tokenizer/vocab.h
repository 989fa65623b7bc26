// The vocabulary every tokenizer kind shares: token texts, scores, attributes, special ids, and the
// rules llama.cpp applies on top of the metadata (end-of-generation tokens found by their text,
// the special-token cache that is matched in raw text before any model runs).
#pragma once
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace primal {

// Token attributes (llama.cpp's llama_token_attr bits).
namespace tok_attr {
constexpr uint32_t kUndefined = 0;
constexpr uint32_t kUnknown = 1u << 0;
constexpr uint32_t kUnused = 1u << 1;
constexpr uint32_t kNormal = 1u << 2;
constexpr uint32_t kControl = 1u << 3;      // never produced from text unless parse_special
constexpr uint32_t kUserDefined = 1u << 4;  // always matched in text first (HF added tokens)
constexpr uint32_t kByte = 1u << 5;         // <0xXX> byte fallback
constexpr uint32_t kLstrip = 1u << 7;       // swallow whitespace to the left when matched
constexpr uint32_t kRstrip = 1u << 8;       // ... and to the right
// From GGUF tokenizer.ggml.token_type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
// 6 byte; anything else undefined).
uint32_t from_gguf_type(int64_t type);
}  // namespace tok_attr

enum class VocabKind { SPM, BPE, WPM };

// Hash for string-keyed maps that can be probed with a string_view (no temporary std::string).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

struct Vocab {
  VocabKind kind = VocabKind::BPE;
  std::vector<std::string> text;  // (n_vocab) entries as stored ("Ġthe", "▁the", "<0x0A>")
  std::vector<float> score;       // (n_vocab) SPM merge priority; 0 when the file has none
  std::vector<uint32_t> attr;     // (n_vocab) tok_attr bits
  StringMap<int32_t> id_of;

  int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, sep = -1, pad = -1, mask = -1;
  int32_t fim_pre = -1, fim_suf = -1, fim_mid = -1, fim_pad = -1, fim_rep = -1, fim_sep = -1;
  bool add_bos = false, add_eos = false, add_sep = false;
  bool add_space_prefix = false;  // SPM: a space before the text (and after each special token)
  std::set<int32_t> eog;          // end-of-generation ids
  // Control, user-defined and unknown tokens, longest text first: tried in this order on raw text.
  std::vector<int32_t> special_cache;
  size_t max_token_len = 0;

  int32_t n() const { return int32_t(text.size()); }
  bool valid(int32_t id) const { return id >= 0 && id < n(); }
  int32_t find(std::string_view s) const;  // -1 when absent

  // Append a token; throws on a duplicate text (`origin` names the file). Empty texts get
  // llama.cpp's placeholder "[EMPTY_<id>]".
  void add(std::string t, float s, uint32_t a, const std::string& origin);
  // After ids and flags are set: llama.cpp's text-based detection of eot/eom/fim tokens and of the
  // end-of-generation set, the Phi-3 rstrip rule (`general_name` is general.name), the special
  // cache; checks that add_bos/add_eos have a token. Throws naming `origin`.
  void finalize(const std::string& general_name, const std::string& origin);
};

// A piece of the input after special tokens are cut out: a token id, or raw text [offset, +length).
struct Fragment {
  int32_t token = -1;
  size_t offset = 0, length = 0;
};
// llama.cpp's tokenizer_st_partition: every special-cache token (control and unknown ones only when
// parse_special) is found in the raw text, longest first, and cut out; lstrip/rstrip tokens take
// the ASCII whitespace next to them.
std::vector<Fragment> partition_special(const Vocab& v, std::string_view text, bool parse_special);

}  // namespace primal
