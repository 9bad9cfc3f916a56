#include "model/gguf_tokenizer.h"

#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace gqa {
namespace {

using nlohmann::json;

// llama.cpp's token types (llama_token_type / gguf TokenType).
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

json AddedTokens(const std::vector<std::string>& tokens, const GgufValue::Array* types) {
  json added = json::array();
  if (types == nullptr) return added;
  for (size_t id = 0; id < types->size() && id < tokens.size(); ++id) {
    const int64_t* type = std::get_if<int64_t>(&(*types)[id]);
    if (type == nullptr || (*type != kControl && *type != kUserDefined)) continue;
    added.push_back({{"id", id},
                     {"content", tokens[id]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", *type == kUserDefined},
                     {"special", *type == kControl}});
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
  if (*model != "gpt2") {
    return Invalid(file, absl::StrCat("tokenizer.ggml.model \"", *model,
                                      "\" is not supported (only byte-level BPE, \"gpt2\")"));
  }
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
  ASSIGN_OR_RETURN(std::vector<std::string> tokens, StringArray(file, "tokenizer.ggml.tokens"));
  ASSIGN_OR_RETURN(std::vector<std::string> merges, StringArray(file, "tokenizer.ggml.merges"));
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
  GgufTokenizerFiles files;
  files.vocab_size = vocab_size;
  files.tokenizer = {{"version", "1.0"},
                     {"truncation", nullptr},
                     {"padding", nullptr},
                     {"added_tokens", AddedTokens(tokens, types)},
                     {"normalizer", family->normalizer},
                     {"pre_tokenizer", family->pre_tokenizer},
                     {"post_processor", nullptr},
                     {"decoder", ByteLevel(true)},
                     {"model",
                      {{"type", "BPE"},
                       {"dropout", nullptr},
                       {"unk_token", nullptr},
                       {"continuing_subword_prefix", nullptr},
                       {"end_of_word_suffix", nullptr},
                       {"fuse_unk", false},
                       {"byte_fallback", false},
                       {"ignore_merges", family->ignore_merges},
                       {"vocab", std::move(vocab)},
                       {"merges", std::move(merges)}}}};

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
  const GgufValue* add_bos_value = file.Find("tokenizer.ggml.add_bos_token");
  const bool add_bos = add_bos_value != nullptr && add_bos_value->AsBool().value_or(false) &&
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
  for (const auto& [key, name] :
       std::map<std::string, std::string>{{"tokenizer.ggml.unknown_token_id", "unk_token"},
                                          {"tokenizer.ggml.padding_token_id", "pad_token"}}) {
    ASSIGN_OR_RETURN(std::optional<int> id, TokenIdAt(file, key, vocab_size));
    if (id) config[name] = tokens[*id];
  }
  if (const GgufValue* chat = file.Find("tokenizer.chat_template");
      chat != nullptr && chat->AsString() != nullptr) {
    config["chat_template"] = *chat->AsString();
  }
  return files;
}

}  // namespace gqa
