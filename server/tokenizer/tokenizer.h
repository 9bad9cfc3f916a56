// A Hugging Face tokenizer.json, encoded and decoded the way the `tokenizers` library does it,
// for the BPE models Llama-class checkpoints use:
//   - byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2, DeepSeek): Split regex, Digits and
//     ByteLevel pre-tokenizers, ByteLevel decoder, ignore_merges;
//   - SentencePiece-style BPE (Llama 2, Mistral): Prepend/Replace normalizers or the Metaspace
//     pre-tokenizer, byte_fallback, Replace/ByteFallback/Fuse/Strip or Metaspace decoders.
// Added and special tokens are matched before normalization and pre-tokenization. A component
// outside this set is refused at load with a message naming it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace gqa {

class Tokenizer {
 public:
  // Reads <dir>/tokenizer.json and, when present, <dir>/tokenizer_config.json (add_bos_token).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::filesystem::path& dir);
  // From tokenizer.json text alone (`source` names it in error messages).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json,
                                                             const std::string& source);
  ~Tokenizer();

  // Token ids of `text`, without special tokens added around it. Invalid UTF-8 is read as U+FFFD.
  std::vector<int32_t> Encode(std::string_view text) const;
  // Encode, plus the BOS token in front when the tokenizer's configuration asks for it.
  std::vector<int32_t> EncodePrompt(std::string_view text) const;
  // The text of `ids` (special tokens included as their content), invalid UTF-8 replaced by
  // U+FFFD the way `tokenizers` does.
  std::string Decode(const std::vector<int32_t>& ids) const;
  std::optional<int32_t> TokenId(std::string_view token) const;
  // Added tokens marked special (BOS, EOS, ...): left out of generated text.
  bool IsSpecial(int32_t id) const;
  int vocab_size() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a growing list of token ids into text chunks that never end inside a UTF-8 character,
// and whose concatenation equals Decode(all ids). Text is decoded over a short window of recent
// tokens, so position-dependent decoders (a stripped leading space) stay right.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer* tokenizer) : tokenizer_(tokenizer) {}
  // Adds tokens; returns the new complete text (possibly empty).
  std::string Add(const std::vector<int32_t>& new_ids);
  // Whatever is held back (an incomplete character at the very end), as Decode would show it.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_ = 0;  // start of the decode window
  size_t read_ = 0;    // tokens whose text has been emitted
};

}  // namespace gqa
