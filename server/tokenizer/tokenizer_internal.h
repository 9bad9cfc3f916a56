// What the tokenizer's source files share (tokenizer.cc, tokenizer_load.cc, pre_tokenizer.cc,
// bpe.cc, decoder.cc); not for use outside server/tokenizer/. Tokenizer::Impl is a loaded
// tokenizer.json: the BPE model, the added tokens, and the normalizer, pre-tokenizer and decoder
// steps, run in that order.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace gqa {
namespace tokenizer_internal {

absl::Status Unsupported(const std::string& source, const std::string& what);

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

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to);

}  // namespace tokenizer_internal

struct Tokenizer::Impl {
  using json = nlohmann::json;
  using Step = tokenizer_internal::Step;
  using DecodeStep = tokenizer_internal::DecodeStep;

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

}  // namespace gqa
