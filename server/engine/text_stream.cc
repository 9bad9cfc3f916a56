#include "engine/text_stream.h"

#include <algorithm>

namespace gqa {

std::string TextStream::Add(int32_t token, std::optional<int>* matched) {
  if (!tokenizer_->IsSpecial(token)) held_ += detokenizer_.Add({token});
  return Release(matched, /*final=*/false);
}

std::string TextStream::Flush(std::optional<int>* matched) {
  held_ += detokenizer_.Flush();
  return Release(matched, /*final=*/true);
}

std::string TextStream::Release(std::optional<int>* matched, bool final) {
  size_t first = std::string::npos;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t pos = held_.find(stops_[i]);
    if (pos < first) {  // earliest match; the first listed on a tie
      first = pos;
      *matched = static_cast<int>(i);
    }
  }
  if (first != std::string::npos) {
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Keep the longest tail that a stop string could still complete.
  size_t keep = 0;
  if (!final) {
    for (const std::string& stop : stops_) {
      for (size_t n = std::min(stop.size() - 1, held_.size()); n > keep; --n) {
        if (held_.compare(held_.size() - n, n, stop, 0, n) == 0) {
          keep = n;
          break;
        }
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

}  // namespace gqa
