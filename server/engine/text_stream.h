// Generated tokens to text for one request: incremental detokenization (no chunk ends inside a
// UTF-8 character, special tokens leave no text) and stop strings matched across chunk
// boundaries. Text that could be the start of a stop string is held back until it is clear.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace gqa {

class TextStream {
 public:
  TextStream(const Tokenizer* tokenizer, std::vector<std::string> stops)
      : tokenizer_(tokenizer), detokenizer_(tokenizer), stops_(std::move(stops)) {}

  // The text to send after `token`. When a stop string completes, *matched gets its index and
  // the text ends right before it (the stop string itself is never sent).
  std::string Add(int32_t token, std::optional<int>* matched);
  // Everything held back, for a sequence that finishes for another reason.
  std::string Flush(std::optional<int>* matched);

 private:
  std::string Release(std::optional<int>* matched, bool final);

  const Tokenizer* tokenizer_;
  IncrementalDetokenizer detokenizer_;
  std::vector<std::string> stops_;
  std::string held_;  // decoded, not yet sent
};

}  // namespace gqa
