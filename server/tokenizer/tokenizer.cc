#include "tokenizer/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <map>
#include <mutex>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/utf8.h"

namespace gqa {
namespace {

using nlohmann::json;

absl::Status Unsupported(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": unsupported ", what));
}

// A compiled PCRE2 pattern (Unicode properties on), matched to find every match in a string.
class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(const std::string& pattern, bool literal,
                                                        const std::string& source) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     options, &error, &offset, nullptr);
    if (code == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": cannot compile the pre-tokenizer regex at offset ", offset));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if absent
    return std::unique_ptr<Regex>(new Regex(code));
  }
  ~Regex() { pcre2_code_free(code_); }

  // [begin, end) byte ranges of successive non-overlapping matches.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const {
    std::vector<std::pair<size_t, size_t>> matches;
    pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t start = 0;
    while (start <= text.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                                 start, PCRE2_NO_UTF_CHECK, data, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
      if (ovector[1] == ovector[0]) {  // empty match: step one character
        start = ovector[1] + Utf8Length(text, ovector[1]);
        continue;
      }
      matches.emplace_back(ovector[0], ovector[1]);
      start = ovector[1];
    }
    pcre2_match_data_free(data);
    return matches;
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// Ids beyond this are refused (a vocab id of 2^31 - 1 would otherwise size a table of 2^31).
constexpr int32_t kMaxVocabSize = 1 << 24;

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext };

// One normalizer or pre-tokenizer step.
struct Step {
  enum class Kind { kPrepend, kReplace, kUnicode, kSplit, kDigits, kByteLevel, kMetaspace } kind;
  int unicode_options = 0;       // kUnicode: utf8proc flags for NFC, NFD, NFKC or NFKD
  std::string a, b;              // Prepend: a; Replace: a -> b; Metaspace: a = replacement
  std::shared_ptr<Regex> regex;  // Replace (regex pattern), Split, ByteLevel (use_regex)
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool flag = false;  // ByteLevel: add_prefix_space; Metaspace: split; Digits: individual
  std::string scheme = "always";  // Metaspace prepend_scheme
};

// One decoder step, over the list of token strings.
struct DecodeStep {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string a, b;
  int start = 0, stop = 0;
  std::string scheme = "always";
};

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos)).append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// NFC/NFD/NFKC/NFKD through utf8proc; invalid UTF-8 is left as it is.
std::string UnicodeNormalize(const std::string& text, int options) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) return text;
  std::string result(reinterpret_cast<char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

// Splits pieces around the regex's matches.
std::vector<std::string> SplitPieces(const std::vector<std::string>& pieces, const Regex& regex,
                                     SplitBehavior behavior) {
  std::vector<std::string> out;
  for (const std::string& piece : pieces) {
    size_t last = 0;
    std::string pending;  // MergedWithNext: a match waiting for what follows
    auto emit_gap = [&](size_t begin, size_t end) {
      if (begin >= end) return;
      std::string gap = piece.substr(begin, end - begin);
      if (behavior == SplitBehavior::kMergedWithNext) {
        out.push_back(pending + gap);
        pending.clear();
      } else {
        out.push_back(std::move(gap));
      }
    };
    for (auto [begin, end] : regex.FindAll(piece)) {
      emit_gap(last, begin);
      std::string match = piece.substr(begin, end - begin);
      switch (behavior) {
        case SplitBehavior::kIsolated:
          out.push_back(std::move(match));
          break;
        case SplitBehavior::kRemoved:
          break;
        case SplitBehavior::kMergedWithPrevious:
          if (!out.empty() && last == begin && begin > 0) {
            out.back() += match;
          } else {
            out.push_back(std::move(match));
          }
          break;
        case SplitBehavior::kMergedWithNext:
          if (!pending.empty()) out.push_back(std::move(pending));
          pending = std::move(match);
          break;
      }
      last = end;
    }
    emit_gap(last, piece.size());
    if (!pending.empty()) out.push_back(std::move(pending));
  }
  return out;
}

// `tokenizers`' Digits pre-tokenizer: numeric characters (Rust's char::is_numeric, the Unicode
// categories Nd, Nl and No, as utf8proc classifies them; PCRE2's \p{N} follows an older Unicode)
// isolated one by one (individual) or run by run, the text between kept whole.
std::vector<std::string> SplitDigits(const std::vector<std::string>& pieces, bool individual) {
  std::vector<std::string> out;
  for (const std::string& piece : pieces) {
    std::string current;
    bool current_numeric = false;
    for (size_t pos = 0; pos < piece.size();) {
      utf8proc_int32_t cp = -1;
      utf8proc_ssize_t length =
          utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(piece.data() + pos),
                           static_cast<utf8proc_ssize_t>(piece.size() - pos), &cp);
      if (length <= 0) length = 1, cp = -1;  // invalid UTF-8: one byte, not a digit
      const utf8proc_category_t category = cp < 0 ? UTF8PROC_CATEGORY_CN : utf8proc_category(cp);
      const bool numeric = category == UTF8PROC_CATEGORY_ND || category == UTF8PROC_CATEGORY_NL ||
                           category == UTF8PROC_CATEGORY_NO;
      if (!current.empty() && (numeric != current_numeric || (numeric && individual))) {
        out.push_back(std::move(current));
        current.clear();
      }
      current.append(piece, pos, static_cast<size_t>(length));
      current_numeric = numeric;
      pos += static_cast<size_t>(length);
    }
    if (!current.empty()) out.push_back(std::move(current));
  }
  return out;
}

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  std::optional<int32_t> unk_id;
  std::vector<int32_t> byte_ids;  // <0xXX> -> id, or -1
  struct Added {
    std::string content;
    int32_t id;
  };
  std::vector<Added> added;                                    // longest first
  std::array<std::vector<uint32_t>, 256> added_by_first_byte;  // indices into added
  std::vector<bool> special;                                   // by id
  std::vector<Step> normalizer, pre_tokenizer;
  std::vector<DecodeStep> decoder;
  std::optional<int32_t> bos_id;  // prepended by EncodePrompt
  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  absl::Status LoadModel(const json& model);
  absl::Status LoadSteps(const json& spec, bool normalizer_side, std::vector<Step>& out);
  absl::Status LoadDecoder(const json& spec);
  absl::Status LoadAddedTokens(const json& tokens);
  void LoadPostProcessor(const json& spec);

  void EncodeSegment(std::string_view segment, bool first, std::vector<int32_t>& ids) const;
  std::vector<std::string> PreTokenize(std::string text, bool first) const;
  void EncodeWord(const std::string& word, std::vector<int32_t>& ids) const;
  std::vector<int32_t> BpeWord(const std::string& word) const;
};

absl::Status Tokenizer::Impl::LoadModel(const json& model) {
  if (!model.is_object() || model.value("type", "") != "BPE") {
    return Unsupported(
        source, absl::StrCat("model type ", model.is_object() ? model.value("type", "?") : "?",
                             " (only BPE)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return Unsupported(source, absl::StrCat("BPE option ", key));
    }
  }
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"] != 0) {
    return Unsupported(source, "BPE dropout");
  }
  byte_fallback = model.value("byte_fallback", false);
  fuse_unk = model.value("fuse_unk", false);
  ignore_merges = model.value("ignore_merges", false);
  for (const auto& [token, id] : model.at("vocab").items()) {
    const int64_t i = id.is_number_integer() ? id.get<int64_t>() : -1;  // a float would be UB
    if (i < 0 || i >= kMaxVocabSize) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": vocab id ", id.dump(), " is not an integer in [0, ", kMaxVocabSize, ")"));
    }
    vocab[token] = i;
    if (i >= static_cast<int32_t>(id_to_token.size())) id_to_token.resize(i + 1);
    id_to_token[i] = token;
  }
  int32_t rank = 0;
  for (const auto& merge : model.at("merges")) {
    std::string left, right;
    if (merge.is_array() && merge.size() == 2) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ', 1);
      if (space == std::string::npos) return Unsupported(source, "merge format");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    }
    auto l = vocab.find(left), r = vocab.find(right), m = vocab.find(left + right);
    if (l == vocab.end() || r == vocab.end() || m == vocab.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": merge \"", left, " ", right, "\" uses a token not in vocab"));
    }
    merges.emplace(PairKey(l->second, r->second), std::make_pair(rank++, m->second));
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = vocab.find(model["unk_token"].get<std::string>());
    if (it != vocab.end()) unk_id = it->second;
  }
  byte_ids.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (auto it = vocab.find(name); it != vocab.end()) byte_ids[b] = it->second;
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadSteps(const json& spec, bool normalizer_side,
                                        std::vector<Step>& out) {
  if (spec.is_null()) return absl::OkStatus();
  const std::string type = spec.value("type", "");
  const char* side = normalizer_side ? "normalizer" : "pre_tokenizer";
  if (type == "Sequence") {
    for (const auto& sub : spec.at(normalizer_side ? "normalizers" : "pretokenizers")) {
      RETURN_IF_ERROR(LoadSteps(sub, normalizer_side, out));
    }
    return absl::OkStatus();
  }
  Step step;
  if (normalizer_side && type == "Prepend") {
    step.kind = Step::Kind::kPrepend;
    step.a = spec.at("prepend").get<std::string>();
  } else if (normalizer_side && type == "Replace") {
    step.kind = Step::Kind::kReplace;
    const json& pattern = spec.at("pattern");
    step.b = spec.at("content").get<std::string>();
    if (pattern.contains("String")) {
      step.a = pattern["String"].get<std::string>();
    } else {
      ASSIGN_OR_RETURN(step.regex,
                       Regex::Compile(pattern.at("Regex").get<std::string>(), false, source));
    }
  } else if (normalizer_side &&
             (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD")) {
    step.kind = Step::Kind::kUnicode;
    step.unicode_options = UTF8PROC_STABLE | (type[2] == 'K' ? UTF8PROC_COMPAT : 0) |
                           (type.back() == 'C' ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
  } else if (!normalizer_side && type == "Split") {
    step.kind = Step::Kind::kSplit;
    if (spec.value("invert", false)) return Unsupported(source, "Split with invert");
    const std::string behavior = spec.value("behavior", "Isolated");
    static const std::map<std::string, SplitBehavior> kBehaviors = {
        {"Isolated", SplitBehavior::kIsolated},
        {"Removed", SplitBehavior::kRemoved},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext}};
    if (!kBehaviors.contains(behavior)) return Unsupported(source, "Split behavior " + behavior);
    step.behavior = kBehaviors.at(behavior);
    const json& pattern = spec.at("pattern");
    const bool literal = pattern.contains("String");
    ASSIGN_OR_RETURN(step.regex,
                     Regex::Compile(pattern.at(literal ? "String" : "Regex").get<std::string>(),
                                    literal, source));
  } else if (!normalizer_side && type == "Digits") {
    step.kind = Step::Kind::kDigits;
    step.flag = spec.value("individual_digits", false);
  } else if (!normalizer_side && type == "ByteLevel") {
    step.kind = Step::Kind::kByteLevel;
    step.flag = spec.value("add_prefix_space", false);
    if (spec.value("use_regex", true)) {
      ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2Pattern, false, source));
    }
  } else if (!normalizer_side && type == "Metaspace") {
    step.kind = Step::Kind::kMetaspace;
    step.a = spec.value("replacement", "\xE2\x96\x81");
    step.flag = spec.value("split", true);
    step.scheme = spec.value("prepend_scheme", "always");
  } else {
    return Unsupported(source, absl::StrCat(side, " ", type.empty() ? spec.dump() : type));
  }
  out.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadDecoder(const json& spec) {
  if (spec.is_null()) return absl::OkStatus();
  const std::string type = spec.value("type", "");
  DecodeStep step;
  if (type == "Sequence") {
    for (const auto& sub : spec.at("decoders")) RETURN_IF_ERROR(LoadDecoder(sub));
    return absl::OkStatus();
  } else if (type == "ByteLevel") {
    step.kind = DecodeStep::Kind::kByteLevel;
  } else if (type == "Replace") {
    step.kind = DecodeStep::Kind::kReplace;
    if (!spec.at("pattern").contains("String")) return Unsupported(source, "Replace decoder regex");
    step.a = spec["pattern"]["String"].get<std::string>();
    step.b = spec.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    step.kind = DecodeStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecodeStep::Kind::kFuse;
  } else if (type == "Strip") {
    step.kind = DecodeStep::Kind::kStrip;
    step.a = spec.at("content").get<std::string>();
    for (auto [key, field] : {std::pair{"start", &step.start}, std::pair{"stop", &step.stop}}) {
      const json value = spec.value(key, json(0));
      if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > 1024) {
        return Unsupported(source, absl::StrCat("Strip decoder ", key, " ", value.dump()));
      }
      *field = value.get<int>();
    }
  } else if (type == "Metaspace") {
    step.kind = DecodeStep::Kind::kMetaspace;
    step.a = spec.value("replacement", "\xE2\x96\x81");
    step.scheme = spec.value("prepend_scheme", "always");
  } else {
    return Unsupported(source, "decoder " + type);
  }
  decoder.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadAddedTokens(const json& tokens) {
  if (!tokens.is_array()) return absl::OkStatus();
  for (const auto& t : tokens) {
    if (t.value("single_word", false) || t.value("lstrip", false) || t.value("rstrip", false)) {
      return Unsupported(source, "added token options single_word/lstrip/rstrip (token " +
                                     t.value("content", std::string()) + ")");
    }
    const std::string content = t.at("content").get<std::string>();
    const json& id_value = t.at("id");
    const int32_t id = id_value.is_number_integer() && id_value.get<int64_t>() >= 0 &&
                               id_value.get<int64_t>() < kMaxVocabSize
                           ? static_cast<int32_t>(id_value.get<int64_t>())
                           : -1;  // get<int32_t> of a float would be undefined behaviour
    if (id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": added token id ", id_value.dump(),
                                                     " is not an integer in [0, ", kMaxVocabSize,
                                                     ")"));
    }
    added.push_back({content, id});
    if (id >= static_cast<int32_t>(id_to_token.size())) id_to_token.resize(id + 1);
    id_to_token[id] = content;
    if (t.value("special", false)) {
      if (id >= static_cast<int32_t>(special.size())) special.resize(id + 1);
      special[id] = true;
    }
  }
  std::stable_sort(added.begin(), added.end(), [](const Added& a, const Added& b) {
    return a.content.size() > b.content.size();
  });
  for (uint32_t i = 0; i < added.size(); ++i) {
    if (!added[i].content.empty()) added_by_first_byte[uint8_t(added[i].content[0])].push_back(i);
  }
  return absl::OkStatus();
}

void Tokenizer::Impl::LoadPostProcessor(const json& spec) {
  // TemplateProcessing whose single-sequence template starts with a special token: BOS. Llama 3
  // nests it in a Sequence after a ByteLevel processor.
  if (spec.is_object() && spec.value("type", "") == "Sequence" && spec.contains("processors")) {
    for (const json& processor : spec["processors"]) LoadPostProcessor(processor);
    return;
  }
  if (!spec.is_object() || spec.value("type", "") != "TemplateProcessing") return;
  const json& single = spec.value("single", json::array());
  if (single.empty() || !single[0].contains("SpecialToken")) return;
  const std::string name = single[0]["SpecialToken"].value("id", "");
  for (const Added& a : added) {
    if (a.content == name) bos_id = a.id;
  }
}

std::vector<std::string> Tokenizer::Impl::PreTokenize(std::string text, bool first) const {
  for (const Step& s : normalizer) {
    if (text.empty()) break;
    if (s.kind == Step::Kind::kPrepend) {
      text = s.a + text;
    } else if (s.kind == Step::Kind::kUnicode) {
      text = UnicodeNormalize(text, s.unicode_options);
    } else if (s.regex) {
      std::string out;
      size_t last = 0;
      for (auto [b, e] : s.regex->FindAll(text))
        out.append(text, last, b - last).append(s.b), last = e;
      text = out + text.substr(last);
    } else {
      text = ReplaceAll(text, s.a, s.b);
    }
  }
  std::vector<std::string> pieces = {std::move(text)};
  for (const Step& s : pre_tokenizer) {
    switch (s.kind) {
      case Step::Kind::kSplit:
        pieces = SplitPieces(pieces, *s.regex, s.behavior);
        break;
      case Step::Kind::kDigits:
        pieces = SplitDigits(pieces, s.flag);
        break;
      case Step::Kind::kByteLevel:
        if (s.flag && !pieces.empty() && !pieces[0].empty() && pieces[0][0] != ' ') {
          pieces[0] = " " + pieces[0];
        }
        if (s.regex) pieces = SplitPieces(pieces, *s.regex, SplitBehavior::kIsolated);
        for (std::string& p : pieces) p = BytesToByteLevel(p);
        break;
      case Step::Kind::kMetaspace: {
        for (std::string& p : pieces) p = ReplaceAll(p, " ", s.a);
        const bool prepend = s.scheme == "always" || (s.scheme == "first" && first);
        if (prepend && !pieces.empty() && !pieces[0].empty() && pieces[0].rfind(s.a, 0) != 0) {
          pieces[0] = s.a + pieces[0];
        }
        if (s.flag) {
          std::vector<std::string> split;
          for (const std::string& p : pieces) {
            size_t begin = 0;
            for (size_t pos = p.find(s.a, 1); pos != std::string::npos;
                 pos = p.find(s.a, pos + 1)) {
              split.push_back(p.substr(begin, pos - begin));
              begin = pos;
            }
            split.push_back(p.substr(begin));
          }
          pieces = std::move(split);
        }
        break;
      }
      default:
        break;
    }
  }
  std::erase_if(pieces, [](const std::string& p) { return p.empty(); });
  return pieces;
}

std::vector<int32_t> Tokenizer::Impl::BpeWord(const std::string& word) const {
  std::vector<int32_t> symbols;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = Utf8Length(word, pos);
    auto it = vocab.find(word.substr(pos, len));
    if (it != vocab.end()) {
      symbols.push_back(it->second);
    } else {
      bool all_bytes = byte_fallback;
      for (size_t i = 0; all_bytes && i < len; ++i)
        all_bytes = byte_ids[uint8_t(word[pos + i])] >= 0;
      if (all_bytes) {
        for (size_t i = 0; i < len; ++i) symbols.push_back(byte_ids[uint8_t(word[pos + i])]);
      } else if (unk_id) {
        if (!(fuse_unk && !symbols.empty() && symbols.back() == *unk_id))
          symbols.push_back(*unk_id);
      }
    }
    pos += len;
  }
  // Merge the lowest-ranked adjacent pair, leftmost on ties, until no pair is in the merges:
  // a min-heap of candidate pairs over a linked list of symbols, O(n log n) for long words.
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return symbols;
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int left;  // position of the left symbol; smaller = further left
    int32_t left_id, right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int left) {
    const int right = left >= 0 ? next[left] : -1;
    if (left < 0 || right < 0) return;
    auto it = merges.find(PairKey(symbols[left], symbols[right]));
    if (it != merges.end()) heap.push({it->second.first, left, symbols[left], symbols[right]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int right = next[c.left];
    // Stale: either symbol changed since this pair was queued.
    if (symbols[c.left] != c.left_id || right < 0 || symbols[right] != c.right_id ||
        symbols[c.left] == -1) {
      continue;
    }
    symbols[c.left] = merges.at(PairKey(c.left_id, c.right_id)).second;
    symbols[right] = -1;
    next[c.left] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  std::vector<int32_t> merged;
  for (int i = 0; i >= 0; i = next[i]) merged.push_back(symbols[i]);
  return merged;
}

void Tokenizer::Impl::EncodeWord(const std::string& word, std::vector<int32_t>& ids) const {
  if (ignore_merges) {
    if (auto it = vocab.find(word); it != vocab.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  {
    std::lock_guard lock(cache_mu);
    if (auto it = cache.find(word); it != cache.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> word_ids = BpeWord(word);
  ids.insert(ids.end(), word_ids.begin(), word_ids.end());
  std::lock_guard lock(cache_mu);
  if (cache.size() > 100000) cache.clear();
  cache.emplace(word, std::move(word_ids));
}

void Tokenizer::Impl::EncodeSegment(std::string_view segment, bool first,
                                    std::vector<int32_t>& ids) const {
  for (const std::string& piece : PreTokenize(std::string(segment), first)) EncodeWord(piece, ids);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text,
                                                               const std::string& source) {
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  if (!doc.contains("model")) return absl::InvalidArgumentError(source + ": no \"model\"");
  try {  // a field of the wrong JSON type throws from nlohmann's accessors
    RETURN_IF_ERROR(impl->LoadModel(doc["model"]));
    RETURN_IF_ERROR(impl->LoadAddedTokens(doc.value("added_tokens", json::array())));
    RETURN_IF_ERROR(impl->LoadSteps(doc.value("normalizer", json()), true, impl->normalizer));
    RETURN_IF_ERROR(
        impl->LoadSteps(doc.value("pre_tokenizer", json()), false, impl->pre_tokenizer));
    RETURN_IF_ERROR(impl->LoadDecoder(doc.value("decoder", json())));
    impl->LoadPostProcessor(doc.value("post_processor", json()));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::filesystem::path& dir) {
  const auto path = dir / "tokenizer.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(auto tokenizer, FromJson(text.str(), path.string()));
  std::ifstream config_in(dir / "tokenizer_config.json");
  if (config_in) {
    std::stringstream config_text;
    config_text << config_in.rdbuf();
    json config = json::parse(config_text.str(), nullptr, false);
    if (config.is_object() && config.contains("add_bos_token")) {
      tokenizer->impl_->bos_id.reset();
      if (config["add_bos_token"] == true && config.contains("bos_token")) {
        const json& bos = config["bos_token"];
        std::string name;  // "<s>" or {"content": "<s>", ...}
        if (bos.is_string()) name = bos.get<std::string>();
        if (bos.is_object() && bos.contains("content") && bos["content"].is_string()) {
          name = bos["content"].get<std::string>();
        }
        tokenizer->impl_->bos_id = tokenizer->TokenId(name);
      }
    }
  }
  return tokenizer;
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  // `tokenizers` only ever sees valid UTF-8 (a Rust str), and PCRE2 is run without its UTF
  // check: invalid bytes become U+FFFD first, as Python's errors="replace" would make them.
  if (!IsValidUtf8(text)) return Encode(Utf8Lossy(text));
  std::vector<int32_t> ids;
  const auto& added = impl_->added;
  size_t segment_start = 0, pos = 0;
  bool first = true;
  while (pos < text.size()) {
    const Impl::Added* hit = nullptr;
    for (uint32_t i : impl_->added_by_first_byte[uint8_t(text[pos])]) {  // longest first
      if (text.compare(pos, added[i].content.size(), added[i].content) == 0) {
        hit = &added[i];
        break;
      }
    }
    if (hit == nullptr) {
      pos += Utf8Length(text, pos);
      continue;
    }
    if (pos > segment_start) {
      impl_->EncodeSegment(text.substr(segment_start, pos - segment_start), first, ids);
    }
    first = false;
    ids.push_back(hit->id);
    pos += hit->content.size();
    segment_start = pos;
  }
  if (segment_start < text.size()) {
    impl_->EncodeSegment(text.substr(segment_start), first, ids);
  }
  return ids;
}

std::vector<int32_t> Tokenizer::EncodePrompt(std::string_view text) const {
  std::vector<int32_t> ids;
  if (impl_->bos_id) ids.push_back(*impl_->bos_id);
  std::vector<int32_t> body = Encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  for (int32_t id : ids) {
    if (id >= 0 && id < static_cast<int32_t>(impl_->id_to_token.size())) {
      tokens.push_back(impl_->id_to_token[id]);
    }
  }
  for (const DecodeStep& s : impl_->decoder) {
    switch (s.kind) {
      case DecodeStep::Kind::kByteLevel: {
        std::string bytes;
        for (const std::string& t : tokens) bytes += ByteLevelToBytes(t);
        tokens = {Utf8Lossy(bytes)};
        break;
      }
      case DecodeStep::Kind::kReplace:
        for (std::string& t : tokens) t = ReplaceAll(t, s.a, s.b);
        break;
      case DecodeStep::Kind::kByteFallback:
        tokens = ByteFallbackTokens(tokens);
        break;
      case DecodeStep::Kind::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case DecodeStep::Kind::kStrip:
        for (std::string& t : tokens) {
          for (int i = 0; i < s.start && t.rfind(s.a, 0) == 0; ++i) t.erase(0, s.a.size());
          for (int i = 0; i < s.stop && t.size() >= s.a.size() &&
                          t.compare(t.size() - s.a.size(), s.a.size(), s.a) == 0;
               ++i) {
            t.erase(t.size() - s.a.size());
          }
        }
        break;
      case DecodeStep::Kind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = ReplaceAll(tokens[i], s.a, " ");
          if (i == 0 && s.scheme != "never" && tokens[i].rfind(' ', 0) == 0) tokens[i].erase(0, 1);
        }
        break;
    }
  }
  std::string text;
  for (const std::string& t : tokens) text += t;
  return text;
}

std::optional<int32_t> Tokenizer::TokenId(std::string_view token) const {
  for (const auto& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  if (auto it = impl_->vocab.find(std::string(token)); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < static_cast<int32_t>(impl_->special.size()) && impl_->special[id];
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->id_to_token.size()); }

std::string IncrementalDetokenizer::Add(const std::vector<int32_t>& new_ids) {
  ids_.insert(ids_.end(), new_ids.begin(), new_ids.end());
  const std::vector<int32_t> window(ids_.begin() + prefix_, ids_.begin() + read_);
  const std::vector<int32_t> extended(ids_.begin() + prefix_, ids_.end());
  const std::string before = tokenizer_->Decode(window);
  const std::string after = tokenizer_->Decode(extended);
  // Hold back while the new text ends inside a character (decoded as U+FFFD for now).
  if (after.size() <= before.size() || EndsWithReplacement(after)) return "";
  std::string fresh = after.substr(before.size());
  prefix_ = read_;
  read_ = ids_.size();
  return fresh;
}

std::string IncrementalDetokenizer::Flush() {
  const std::string before =
      tokenizer_->Decode(std::vector<int32_t>(ids_.begin() + prefix_, ids_.begin() + read_));
  const std::string after =
      tokenizer_->Decode(std::vector<int32_t>(ids_.begin() + prefix_, ids_.end()));
  read_ = ids_.size();
  prefix_ = read_;
  if (after.compare(0, before.size(), before) != 0) {
    // A trailing incomplete byte-fallback character turned its whole byte run into U+FFFD;
    // what was sent stands, and the unfinished tail shows as one replacement character.
    return "\xEF\xBF\xBD";
  }
  return after.substr(before.size());
}

}  // namespace gqa
