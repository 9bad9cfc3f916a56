#include "tokenizer/train_bpe.h"

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json_file.h"
#include "nlohmann/json.hpp"
#include "tokenizer/utf8.h"

namespace gqa {
namespace {

using nlohmann::json;

constexpr const char* kCorpus =
    "Grouped-query attention lets several query heads share one key and value head. "
    "The model reads each key and value once for the whole group, so decoding is faster "
    "and the cache holds more tokens. Multi-query attention is the extreme case: every "
    "query head shares a single key and value head. The server batches requests, streams "
    "tokens as they are generated, and reports how long each step takes. Hello, world! "
    "The quick brown fox jumps over the lazy dog. Once upon a time, there was a small "
    "model that liked to tell stories about the sea, the stars and the long road home. "
    "Every night it would count the waves and listen to the wind. In the morning the "
    "sun came up over the hills, and the birds sang in the trees near the river. "
    "People walked to the market to buy bread, fruit, milk and fresh fish. Children "
    "played games in the park while their parents talked about work and the weather. "
    "Servers answer requests; kernels read memory; tokens stream back to the client. "
    "def main():\n    print(\"hello\")\n    return 0\n"
    "for i in range(10): total += i * i  # squares\n"
    "Numbers like 1, 2, 3, 42, 100 and 2024 appear in text too.";

using Word = std::vector<std::string>;  // byte-level symbols

std::vector<Word> SplitWords(const std::string& text) {
  std::vector<Word> words;
  Word current;
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = Utf8Length(text, pos);
    if (text[pos] == ' ' && !current.empty()) words.push_back(std::move(current)), current = {};
    const std::string bytes = BytesToByteLevel(text.substr(pos, len));
    for (size_t i = 0; i < bytes.size();) {
      const size_t n = Utf8Length(bytes, i);
      current.push_back(bytes.substr(i, n));
      i += n;
    }
    pos += len;
  }
  if (!current.empty()) words.push_back(std::move(current));
  return words;
}

}  // namespace

absl::Status WriteTrainedTokenizer(const std::filesystem::path& dir, int vocab_size,
                                   const std::string& corpus) {
  json vocab = json::object();
  vocab["<s>"] = 0;
  vocab["</s>"] = 1;
  int next_id = 2;
  for (int b = 0; b < 256; ++b) vocab[BytesToByteLevel(std::string(1, char(b)))] = next_id++;
  std::vector<Word> words = SplitWords(corpus.empty() ? kCorpus : corpus);
  json merges = json::array();
  while (next_id < vocab_size) {
    std::map<std::pair<std::string, std::string>, int> counts;  // ordered: ties break by pair
    for (const Word& w : words) {
      for (size_t i = 0; i + 1 < w.size(); ++i) ++counts[{w[i], w[i + 1]}];
    }
    const std::pair<std::string, std::string>* best = nullptr;
    int best_count = 0;
    for (const auto& [pair, count] : counts) {
      if (count > best_count && !vocab.contains(pair.first + pair.second)) {
        best = &pair;
        best_count = count;
      }
    }
    if (best == nullptr) break;
    const auto [a, b] = *best;
    merges.push_back({a, b});
    vocab[a + b] = next_id++;
    for (Word& w : words) {
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        if (w[i] == a && w[i + 1] == b) {
          w[i] = a + b;
          w.erase(w.begin() + i + 1);
        }
      }
    }
  }
  auto special = [](int id, const char* content) {
    return json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
  };
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  const json tokenizer = {{"version", "1.0"},
                          {"truncation", nullptr},
                          {"padding", nullptr},
                          {"added_tokens", {special(0, "<s>"), special(1, "</s>")}},
                          {"normalizer", nullptr},
                          {"pre_tokenizer", byte_level},
                          {"post_processor", nullptr},
                          {"decoder", byte_level},
                          {"model",
                           {{"type", "BPE"},
                            {"dropout", nullptr},
                            {"unk_token", nullptr},
                            {"continuing_subword_prefix", nullptr},
                            {"end_of_word_suffix", nullptr},
                            {"fuse_unk", false},
                            {"byte_fallback", false},
                            {"ignore_merges", false},
                            {"vocab", vocab},
                            {"merges", merges}}}};
  if (auto st = WriteJsonFile(dir / "tokenizer.json", tokenizer); !st.ok()) return st;
  return WriteJsonFile(dir / "tokenizer_config.json",
                       {{"add_bos_token", true}, {"bos_token", "<s>"}, {"eos_token", "</s>"}});
}

}  // namespace gqa
