// The BPE model: a word's symbols (characters, byte fallback, unk) merged by rank, cached per
// word; a segment is pre-tokenized and each word encoded.
#include <functional>
#include <queue>

#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/utf8.h"

namespace gqa {

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

}  // namespace gqa
