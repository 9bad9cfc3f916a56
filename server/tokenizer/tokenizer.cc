// Tokenizer's public surface: added tokens matched before anything else (Encode), BOS
// (EncodePrompt) and lookups. Loading is in tokenizer_load.cc, normalization and
// pre-tokenization in pre_tokenizer.cc, the BPE model in bpe.cc, decoding in decoder.cc.
#include "tokenizer/tokenizer.h"

#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/utf8.h"

namespace gqa {
namespace tokenizer_internal {

absl::Status Unsupported(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": unsupported ", what));
}

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

}  // namespace tokenizer_internal

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

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

}  // namespace gqa
