#include "convert/gguf_tokenizer.h"

#include <algorithm>
#include <map>
#include <string>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "tokenizer/utf8.h"

namespace gqa {
namespace {

using nlohmann::json;

// llama.cpp's token types (llama_token_type / gguf TokenType).
constexpr int64_t kUnknown = 2;
constexpr int64_t kControl = 3;
constexpr int64_t kUserDefined = 4;

// The split regexes of the Hugging Face tokenizer.json files of these families.
constexpr const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

json ByteLevel(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

json SplitIsolated(const char* regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", regex}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

// The normalizer, pre-tokenizer and ignore_merges of a `tokenizer.ggml.pre` family.
struct Family {
  json normalizer;
  json pre_tokenizer;
  bool ignore_merges = false;
};

std::optional<Family> FamilyOf(const std::string& pre) {
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    return Family{nullptr, ByteLevel(true), false};
  }
  if (pre == "smollm" || pre == "starcoder") {
    return Family{
        nullptr,
        {{"type", "Sequence"},
         {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, ByteLevel(true)}}},
        false};
  }
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
    return Family{
        nullptr,
        {{"type", "Sequence"}, {"pretokenizers", {SplitIsolated(kLlama3Split), ByteLevel(false)}}},
        true};
  }
  if (pre == "qwen2") {
    return Family{
        {{"type", "NFC"}},
        {{"type", "Sequence"}, {"pretokenizers", {SplitIsolated(kQwen2Split), ByteLevel(false)}}},
        false};
  }
  return std::nullopt;
}

absl::Status Invalid(const GgufFile& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file.path().string(), ": ", what));
}

absl::StatusOr<std::vector<std::string>> StringArray(const GgufFile& file, const std::string& key) {
  const GgufValue* value = file.Find(key);
  const GgufValue::Array* array = value != nullptr ? value->AsArray() : nullptr;
  if (array == nullptr) return Invalid(file, absl::StrCat(key, " is missing or not an array"));
  std::vector<std::string> out;
  out.reserve(array->size());
  for (const auto& element : *array) {
    const std::string* text = std::get_if<std::string>(&element);
    if (text == nullptr) return Invalid(file, absl::StrCat(key, " holds a non-string"));
    out.push_back(*text);
  }
  return out;
}

// A token id from `key`, checked against the vocabulary; nullopt when absent.
absl::StatusOr<std::optional<int>> TokenIdAt(const GgufFile& file, const std::string& key,
                                             int vocab_size) {
  const GgufValue* value = file.Find(key);
  if (value == nullptr) return std::optional<int>();
  const std::optional<int64_t> id = value->AsInt();
  if (!id || *id < 0 || *id >= vocab_size) {
    return Invalid(file, absl::StrCat(key, " is not a token id of the vocabulary"));
  }
  return std::optional<int>(static_cast<int>(*id));
}

// What tokenizer.json holds besides the vocabulary, for one kind of GGUF vocabulary.
struct Pipeline {
  json normalizer, pre_tokenizer, decoder;
  json merges;  // [[left, right], ...] in rank order
  bool ignore_merges = false;
  bool sentencepiece = false;  // byte fallback, fused unknowns, BOS by default
};

json MergePairs(const std::vector<std::string>& merges) {
  json pairs = json::array();
  for (const std::string& merge : merges) {
    const size_t space = merge.find(' ', 1);
    pairs.push_back(space == std::string::npos
                        ? json::array({merge, ""})
                        : json::array({merge.substr(0, space), merge.substr(space + 1)}));
  }
  return pairs;
}

absl::StatusOr<Pipeline> ByteLevelPipeline(const GgufFile& file) {
  const GgufValue* pre_value = file.Find("tokenizer.ggml.pre");
  const std::string pre = pre_value != nullptr && pre_value->AsString() != nullptr
                              ? *pre_value->AsString()
                              : std::string("default");
  std::optional<Family> family = FamilyOf(pre);
  if (!family) {
    return Invalid(file, absl::StrCat("tokenizer.ggml.pre \"", pre,
                                      "\" is not supported (supported: default, gpt-2, smollm, "
                                      "starcoder, llama-bpe, qwen2)"));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> merges, StringArray(file, "tokenizer.ggml.merges"));
  for (const std::string& merge : merges) {
    if (merge.find(' ', 1) == std::string::npos) {
      return Invalid(file, absl::StrCat("tokenizer.ggml.merges holds \"", merge,
                                        "\", not two tokens separated by a space"));
    }
  }
  Pipeline pipeline;
  pipeline.normalizer = family->normalizer;
  pipeline.pre_tokenizer = family->pre_tokenizer;
  pipeline.decoder = ByteLevel(true);
  pipeline.merges = MergePairs(merges);
  pipeline.ignore_merges = family->ignore_merges;
  return pipeline;
}

// SentencePiece BPE merges from piece scores, as transformers' GGUF converter builds them: every
// split of every piece into two pieces of the vocabulary is a merge, ranked by the whole piece's
// score (highest first), splits of one piece by their own pieces' scores (highest first).
json MergesFromScores(const std::vector<std::string>& tokens, const std::vector<double>& scores) {
  std::unordered_map<std::string, double> score_of;
  for (size_t i = 0; i < tokens.size(); ++i) score_of.emplace(tokens[i], scores[i]);
  struct Merge {
    const std::string* left;
    std::string right;
    double score;
  };
  std::vector<Merge> merges;
  std::vector<std::pair<std::string, std::string>> local;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& piece = tokens[i];
    std::vector<Merge> splits;
    for (size_t cut = Utf8Length(piece, 0); cut < piece.size(); cut += Utf8Length(piece, cut)) {
      auto left = score_of.find(piece.substr(0, cut));
      auto right = score_of.find(piece.substr(cut));
      if (left == score_of.end() || right == score_of.end()) continue;
      splits.push_back({&left->first, right->first, scores[i]});
    }
    std::stable_sort(splits.begin(), splits.end(), [&](const Merge& a, const Merge& b) {
      const double al = score_of[*a.left], bl = score_of[*b.left];
      return al != bl ? al > bl : score_of[a.right] > score_of[b.right];
    });
    merges.insert(merges.end(), splits.begin(), splits.end());
  }
  std::stable_sort(merges.begin(), merges.end(),
                   [](const Merge& a, const Merge& b) { return a.score > b.score; });
  json pairs = json::array();
  for (const Merge& m : merges) pairs.push_back(json::array({*m.left, m.right}));
  return pairs;
}

// Llama 2 / Mistral / TinyLlama vocabularies, laid out as their Hugging Face tokenizer.json:
// spaces become U+2581 (with one in front when add_space_prefix), byte fallback, and a decoder
// that undoes both.
absl::StatusOr<Pipeline> SentencePiecePipeline(const GgufFile& file,
                                               const std::vector<std::string>& tokens) {
  const GgufValue* scores_value = file.Find("tokenizer.ggml.scores");
  const GgufValue::Array* array = scores_value != nullptr ? scores_value->AsArray() : nullptr;
  if (array == nullptr || array->size() != tokens.size()) {
    return Invalid(file, "tokenizer.ggml.scores is missing or not one score per token");
  }
  std::vector<double> scores;
  for (const auto& element : *array) {
    const double* score = std::get_if<double>(&element);
    if (score == nullptr) return Invalid(file, "tokenizer.ggml.scores holds a non-float");
    scores.push_back(*score);
  }
  const GgufValue* prefix_value = file.Find("tokenizer.ggml.add_space_prefix");
  const bool add_prefix = prefix_value == nullptr || prefix_value->AsBool().value_or(true);
  const std::string space = "\xE2\x96\x81";  // U+2581
  const json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}};
  Pipeline pipeline;
  pipeline.sentencepiece = true;
  pipeline.normalizer =
      add_prefix ? json({{"type", "Sequence"},
                         {"normalizers", {{{"type", "Prepend"}, {"prepend", space}}, replace}}})
                 : replace;
  pipeline.pre_tokenizer = nullptr;
  json decoders = {{{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}},
                   {{"type", "ByteFallback"}},
                   {{"type", "Fuse"}}};
  if (add_prefix) {
    decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }
  pipeline.decoder = {{"type", "Sequence"}, {"decoders", std::move(decoders)}};
  pipeline.merges = MergesFromScores(tokens, scores);
  return pipeline;
}

json AddedTokens(const std::vector<std::string>& tokens, const GgufValue::Array* types) {
  json added = json::array();
  if (types == nullptr) return added;
  for (size_t id = 0; id < types->size() && id < tokens.size(); ++id) {
    const int64_t* type = std::get_if<int64_t>(&(*types)[id]);
    if (type == nullptr || (*type != kUnknown && *type != kControl && *type != kUserDefined)) {
      continue;
    }
    added.push_back({{"id", id},
                     {"content", tokens[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", *type == kUserDefined},
                     {"special", *type != kUserDefined}});
  }
  return added;
}

json TemplateWithBos(const std::string& bos, int bos_id) {
  return {{"type", "TemplateProcessing"},
          {"single",
           {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair",
           {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
            {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
            {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
}

}  // namespace

absl::StatusOr<GgufTokenizerFiles> GgufTokenizerToJson(const GgufFile& file, int context_length) {
  const GgufValue* model_value = file.Find("tokenizer.ggml.model");
  const std::string* model = model_value != nullptr ? model_value->AsString() : nullptr;
  if (model == nullptr) return Invalid(file, "tokenizer.ggml.model is missing");
  if (*model != "gpt2" && *model != "llama") {
    return Invalid(file, absl::StrCat("tokenizer.ggml.model \"", *model,
                                      "\" is not supported (byte-level BPE \"gpt2\" and "
                                      "SentencePiece BPE \"llama\")"));
  }
  ASSIGN_OR_RETURN(std::vector<std::string> tokens, StringArray(file, "tokenizer.ggml.tokens"));
  const int vocab_size = static_cast<int>(tokens.size());
  const GgufValue* types_value = file.Find("tokenizer.ggml.token_type");
  const GgufValue::Array* types = types_value != nullptr ? types_value->AsArray() : nullptr;
  if (types != nullptr && types->size() != tokens.size()) {
    return Invalid(file, "tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length");
  }
  json vocab = json::object();
  for (int id = 0; id < vocab_size; ++id) {
    if (vocab.contains(tokens[id])) {
      return Invalid(file, absl::StrCat("tokenizer.ggml.tokens repeats token ", id));
    }
    vocab[tokens[id]] = id;
  }
  ASSIGN_OR_RETURN(std::optional<int> unk_id,
                   TokenIdAt(file, "tokenizer.ggml.unknown_token_id", vocab_size));
  ASSIGN_OR_RETURN(Pipeline pipeline, *model == "gpt2" ? ByteLevelPipeline(file)
                                                       : SentencePiecePipeline(file, tokens));
  json bpe = {{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", nullptr},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", pipeline.sentencepiece},
              {"byte_fallback", pipeline.sentencepiece},
              {"ignore_merges", pipeline.ignore_merges},
              {"vocab", std::move(vocab)},
              {"merges", std::move(pipeline.merges)}};
  if (pipeline.sentencepiece && unk_id) bpe["unk_token"] = tokens[*unk_id];

  GgufTokenizerFiles files;
  files.vocab_size = vocab_size;
  files.tokenizer = {{"version", "1.0"},
                     {"truncation", nullptr},
                     {"padding", nullptr},
                     {"added_tokens", AddedTokens(tokens, types)},
                     {"normalizer", std::move(pipeline.normalizer)},
                     {"pre_tokenizer", std::move(pipeline.pre_tokenizer)},
                     {"post_processor", nullptr},
                     {"decoder", std::move(pipeline.decoder)},
                     {"model", std::move(bpe)}};

  ASSIGN_OR_RETURN(files.bos_token_id, TokenIdAt(file, "tokenizer.ggml.bos_token_id", vocab_size));
  ASSIGN_OR_RETURN(std::optional<int> eos,
                   TokenIdAt(file, "tokenizer.ggml.eos_token_id", vocab_size));
  if (eos) files.eos_token_ids.push_back(*eos);
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    ASSIGN_OR_RETURN(std::optional<int> id, TokenIdAt(file, key, vocab_size));
    if (id && std::find(files.eos_token_ids.begin(), files.eos_token_ids.end(), *id) ==
                  files.eos_token_ids.end()) {
      files.eos_token_ids.push_back(*id);
    }
  }
  // llama.cpp adds BOS to SentencePiece prompts unless the file says otherwise.
  const GgufValue* add_bos_value = file.Find("tokenizer.ggml.add_bos_token");
  const bool add_bos = (add_bos_value != nullptr ? add_bos_value->AsBool().value_or(false)
                                                 : pipeline.sentencepiece) &&
                       files.bos_token_id.has_value();
  if (add_bos) {
    files.tokenizer["post_processor"] =
        TemplateWithBos(tokens[*files.bos_token_id], *files.bos_token_id);
  }

  json& config = files.tokenizer_config;
  config = {{"add_bos_token", add_bos},
            {"add_eos_token", false},
            {"clean_up_tokenization_spaces", false},
            {"model_max_length", context_length},
            {"tokenizer_class", "PreTrainedTokenizerFast"}};
  if (files.bos_token_id) config["bos_token"] = tokens[*files.bos_token_id];
  if (eos) config["eos_token"] = tokens[*eos];
  if (unk_id) config["unk_token"] = tokens[*unk_id];
  ASSIGN_OR_RETURN(std::optional<int> pad_id,
                   TokenIdAt(file, "tokenizer.ggml.padding_token_id", vocab_size));
  if (pad_id) config["pad_token"] = tokens[*pad_id];
  if (const GgufValue* chat = file.Find("tokenizer.chat_template");
      chat != nullptr && chat->AsString() != nullptr) {
    config["chat_template"] = *chat->AsString();
  }
  return files;
}

}  // namespace gqa
