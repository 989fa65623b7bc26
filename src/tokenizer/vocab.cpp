#include "tokenizer/vocab.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"

namespace primal {

uint32_t tok_attr::from_gguf_type(int64_t type) {
  switch (type) {
    case 1: return kNormal;
    case 2: return kUnknown;
    case 3: return kControl;
    case 4: return kUserDefined;
    case 5: return kUnused;
    case 6: return kByte;
    default: return kUndefined;
  }
}

int32_t Vocab::find(std::string_view s) const {
  auto it = id_of.find(s);
  return it == id_of.end() ? -1 : it->second;
}

void Vocab::add(std::string t, float s, uint32_t a, const std::string& origin) {
  const int32_t id = n();
  if (t.empty()) t = "[EMPTY_" + std::to_string(id) + "]";
  auto [it, inserted] = id_of.emplace(t, id);
  if (!inserted) fail("{}: duplicate token in vocabulary: '{}' has ids {} and {}", origin, t, it->second, id);
  max_token_len = std::max(max_token_len, t.size());
  text.push_back(std::move(t));
  score.push_back(s);
  attr.push_back(a);
}

void Vocab::finalize(const std::string& general_name, const std::string& origin) {
  for (int32_t* id : {&bos, &eos, &eot, &eom, &unk, &sep, &pad, &mask, &fim_pre, &fim_suf, &fim_mid,
                      &fim_pad, &fim_rep, &fim_sep}) {
    if (!valid(*id)) *id = -1;
  }

  // llama.cpp finds these tokens by their text when the metadata does not name them, and makes
  // them control tokens (so that they are only parsed from text when asked to).
  // (llama.cpp takes whichever matching token its hash map yields first; here the first name in the
  // list that is in the vocabulary wins)
  auto detect = [&](int32_t& slot, std::initializer_list<const char*> names) {
    if (slot >= 0) return;
    for (const char* name : names) {
      if (const int32_t id = find(name); id >= 0) {
        slot = id;
        attr[id] |= tok_attr::kControl;
        return;
      }
    }
  };
  detect(eot, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
               "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"});
  detect(eom, {"<|eom_id|>"});
  detect(fim_pre, {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                   "<|code_prefix|>", "<|prefix|>"});
  detect(fim_suf, {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                   "<|code_suffix|>", "<|suffix|>"});
  detect(fim_mid, {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                   "<|code_middle|>", "<|middle|>"});
  detect(fim_pad, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"});
  detect(fim_rep, {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"});
  detect(fim_sep, {"<|file_sep|>"});

  eog.clear();
  for (int32_t id : {fim_pad, fim_rep, fim_sep}) {
    if (id >= 0) eog.insert(id);
  }
  for (const char* name : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
                           "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
                           "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<｜end▁of▁sentence｜>", "<|flush|>",
                           "<|calls|>", "<turn|>", "<|tool_response>", "[e~["}) {
    if (const int32_t id = find(name); id >= 0) {
      eog.insert(id);
      attr[id] |= tok_attr::kControl;
    }
  }
  for (int32_t id : {eos, eot, eom}) {
    if (id >= 0) eog.insert(id);
  }

  special_cache.clear();
  for (int32_t id = 0; id < n(); ++id) {
    if (attr[id] & (tok_attr::kControl | tok_attr::kUserDefined | tok_attr::kUnknown)) special_cache.push_back(id);
  }
  std::stable_sort(special_cache.begin(), special_cache.end(),
                   [&](int32_t a, int32_t b) { return text[a].size() > text[b].size(); });

  // Phi-3's special tokens eat the whitespace after them (llama.cpp keys this on general.name).
  std::string name = general_name;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (int32_t id : special_cache) attr[id] |= tok_attr::kRstrip;
    if (int32_t id = find("</s>"); id >= 0) attr[id] |= tok_attr::kRstrip;
    for (const char* t : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (int32_t id = find(t); id >= 0) attr[id] &= ~tok_attr::kRstrip;
    }
  }

  PRIMAL_CHECK(!add_bos || bos >= 0, "{}: the vocabulary adds a BOS token but has none", origin);
  PRIMAL_CHECK(!add_eos || eos >= 0, "{}: the vocabulary adds an EOS token but has none", origin);
  PRIMAL_CHECK(!add_sep || sep >= 0, "{}: the vocabulary adds a SEP token but has none", origin);
}

std::vector<Fragment> partition_special(const Vocab& v, std::string_view text, bool parse_special) {
  std::vector<Fragment> frags;
  if (text.empty()) return frags;
  frags.push_back({-1, 0, text.size()});
  auto space = [&](size_t i) { return std::isspace(static_cast<unsigned char>(text[i])) != 0; };

  std::vector<Fragment> next;
  for (const int32_t id : v.special_cache) {
    const uint32_t a = v.attr[id];
    if (!parse_special && (a & (tok_attr::kControl | tok_attr::kUnknown))) continue;
    const std::string& t = v.text[id];
    next.clear();
    bool changed = false;
    for (const Fragment& f : frags) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      size_t base = f.offset, len = f.length;
      while (len > 0) {
        const size_t m = std::string_view(text.data(), base + len).find(t, base);
        if (m == std::string_view::npos) break;
        changed = true;
        size_t left = m - base;
        if (a & tok_attr::kLstrip) {
          while (left > 0 && space(base + left - 1)) --left;
        }
        if (left > 0) next.push_back({-1, base, left});
        next.push_back({id, 0, 0});
        size_t r = m + t.size();
        size_t rlen = base + len - r;
        if (a & tok_attr::kRstrip) {
          while (rlen > 0 && space(r)) ++r, --rlen;
        }
        base = r;
        len = rlen;
      }
      if (len > 0) next.push_back({-1, base, len});
    }
    if (changed) frags.swap(next);
  }
  return frags;
}

}  // namespace primal
