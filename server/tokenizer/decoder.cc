// Decoding: token strings through the decoder steps (ByteLevel, Replace, ByteFallback, Fuse,
// Strip, Metaspace) to text, and the incremental detokenizer that streams it.
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/utf8.h"

namespace gqa {

using tokenizer_internal::DecodeStep;
using tokenizer_internal::ReplaceAll;

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
