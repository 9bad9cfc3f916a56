// Tokenizer::FromJson and Load: tokenizer.json (model, added tokens, normalizer, pre-tokenizer,
// decoder, post-processor) and tokenizer_config.json's add_bos_token.
#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"

namespace gqa {
namespace {

using nlohmann::json;
using tokenizer_internal::DecodeStep;
using tokenizer_internal::kMaxVocabSize;
using tokenizer_internal::Regex;
using tokenizer_internal::SplitBehavior;
using tokenizer_internal::Step;
using tokenizer_internal::Unsupported;

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

absl::Status Tokenizer::Impl::LoadModel(const json& model) {
  if (!model.is_object() || model.value("type", "") != "BPE") {
    return Unsupported(
        source, absl::StrCat("model type ", model.is_object() ? model.value("type", "?") : "?",
                             " (only BPE)"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return Unsupported(source, absl::StrCat("BPE option ", key));
    }
  }
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"] != 0) {
    return Unsupported(source, "BPE dropout");
  }
  byte_fallback = model.value("byte_fallback", false);
  fuse_unk = model.value("fuse_unk", false);
  ignore_merges = model.value("ignore_merges", false);
  for (const auto& [token, id] : model.at("vocab").items()) {
    const int64_t i = id.is_number_integer() ? id.get<int64_t>() : -1;  // a float would be UB
    if (i < 0 || i >= kMaxVocabSize) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": vocab id ", id.dump(), " is not an integer in [0, ", kMaxVocabSize, ")"));
    }
    vocab[token] = i;
    if (i >= static_cast<int32_t>(id_to_token.size())) id_to_token.resize(i + 1);
    id_to_token[i] = token;
  }
  int32_t rank = 0;
  for (const auto& merge : model.at("merges")) {
    std::string left, right;
    if (merge.is_array() && merge.size() == 2) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ', 1);
      if (space == std::string::npos) return Unsupported(source, "merge format");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    }
    auto l = vocab.find(left), r = vocab.find(right), m = vocab.find(left + right);
    if (l == vocab.end() || r == vocab.end() || m == vocab.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": merge \"", left, " ", right, "\" uses a token not in vocab"));
    }
    merges.emplace(PairKey(l->second, r->second), std::make_pair(rank++, m->second));
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = vocab.find(model["unk_token"].get<std::string>());
    if (it != vocab.end()) unk_id = it->second;
  }
  byte_ids.assign(256, -1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (auto it = vocab.find(name); it != vocab.end()) byte_ids[b] = it->second;
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadSteps(const json& spec, bool normalizer_side,
                                        std::vector<Step>& out) {
  if (spec.is_null()) return absl::OkStatus();
  const std::string type = spec.value("type", "");
  const char* side = normalizer_side ? "normalizer" : "pre_tokenizer";
  if (type == "Sequence") {
    for (const auto& sub : spec.at(normalizer_side ? "normalizers" : "pretokenizers")) {
      RETURN_IF_ERROR(LoadSteps(sub, normalizer_side, out));
    }
    return absl::OkStatus();
  }
  Step step;
  if (normalizer_side && type == "Prepend") {
    step.kind = Step::Kind::kPrepend;
    step.a = spec.at("prepend").get<std::string>();
  } else if (normalizer_side && type == "Replace") {
    step.kind = Step::Kind::kReplace;
    const json& pattern = spec.at("pattern");
    step.b = spec.at("content").get<std::string>();
    if (pattern.contains("String")) {
      step.a = pattern["String"].get<std::string>();
    } else {
      ASSIGN_OR_RETURN(step.regex,
                       Regex::Compile(pattern.at("Regex").get<std::string>(), false, source));
    }
  } else if (normalizer_side &&
             (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD")) {
    step.kind = Step::Kind::kUnicode;
    step.unicode_options = UTF8PROC_STABLE | (type[2] == 'K' ? UTF8PROC_COMPAT : 0) |
                           (type.back() == 'C' ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
  } else if (!normalizer_side && type == "Split") {
    step.kind = Step::Kind::kSplit;
    if (spec.value("invert", false)) return Unsupported(source, "Split with invert");
    const std::string behavior = spec.value("behavior", "Isolated");
    static const std::map<std::string, SplitBehavior> kBehaviors = {
        {"Isolated", SplitBehavior::kIsolated},
        {"Removed", SplitBehavior::kRemoved},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext}};
    if (!kBehaviors.contains(behavior)) return Unsupported(source, "Split behavior " + behavior);
    step.behavior = kBehaviors.at(behavior);
    const json& pattern = spec.at("pattern");
    const bool literal = pattern.contains("String");
    ASSIGN_OR_RETURN(step.regex,
                     Regex::Compile(pattern.at(literal ? "String" : "Regex").get<std::string>(),
                                    literal, source));
  } else if (!normalizer_side && type == "Digits") {
    step.kind = Step::Kind::kDigits;
    step.flag = spec.value("individual_digits", false);
  } else if (!normalizer_side && type == "ByteLevel") {
    step.kind = Step::Kind::kByteLevel;
    step.flag = spec.value("add_prefix_space", false);
    if (spec.value("use_regex", true)) {
      ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2Pattern, false, source));
    }
  } else if (!normalizer_side && type == "Metaspace") {
    step.kind = Step::Kind::kMetaspace;
    step.a = spec.value("replacement", "\xE2\x96\x81");
    step.flag = spec.value("split", true);
    step.scheme = spec.value("prepend_scheme", "always");
  } else {
    return Unsupported(source, absl::StrCat(side, " ", type.empty() ? spec.dump() : type));
  }
  out.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadDecoder(const json& spec) {
  if (spec.is_null()) return absl::OkStatus();
  const std::string type = spec.value("type", "");
  DecodeStep step;
  if (type == "Sequence") {
    for (const auto& sub : spec.at("decoders")) RETURN_IF_ERROR(LoadDecoder(sub));
    return absl::OkStatus();
  } else if (type == "ByteLevel") {
    step.kind = DecodeStep::Kind::kByteLevel;
  } else if (type == "Replace") {
    step.kind = DecodeStep::Kind::kReplace;
    if (!spec.at("pattern").contains("String")) return Unsupported(source, "Replace decoder regex");
    step.a = spec["pattern"]["String"].get<std::string>();
    step.b = spec.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    step.kind = DecodeStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step.kind = DecodeStep::Kind::kFuse;
  } else if (type == "Strip") {
    step.kind = DecodeStep::Kind::kStrip;
    step.a = spec.at("content").get<std::string>();
    for (auto [key, field] : {std::pair{"start", &step.start}, std::pair{"stop", &step.stop}}) {
      const json value = spec.value(key, json(0));
      if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > 1024) {
        return Unsupported(source, absl::StrCat("Strip decoder ", key, " ", value.dump()));
      }
      *field = value.get<int>();
    }
  } else if (type == "Metaspace") {
    step.kind = DecodeStep::Kind::kMetaspace;
    step.a = spec.value("replacement", "\xE2\x96\x81");
    step.scheme = spec.value("prepend_scheme", "always");
  } else {
    return Unsupported(source, "decoder " + type);
  }
  decoder.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Tokenizer::Impl::LoadAddedTokens(const json& tokens) {
  if (!tokens.is_array()) return absl::OkStatus();
  for (const auto& t : tokens) {
    if (t.value("single_word", false) || t.value("lstrip", false) || t.value("rstrip", false)) {
      return Unsupported(source, "added token options single_word/lstrip/rstrip (token " +
                                     t.value("content", std::string()) + ")");
    }
    const std::string content = t.at("content").get<std::string>();
    const json& id_value = t.at("id");
    const int32_t id = id_value.is_number_integer() && id_value.get<int64_t>() >= 0 &&
                               id_value.get<int64_t>() < kMaxVocabSize
                           ? static_cast<int32_t>(id_value.get<int64_t>())
                           : -1;  // get<int32_t> of a float would be undefined behaviour
    if (id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": added token id ", id_value.dump(),
                                                     " is not an integer in [0, ", kMaxVocabSize,
                                                     ")"));
    }
    added.push_back({content, id});
    if (id >= static_cast<int32_t>(id_to_token.size())) id_to_token.resize(id + 1);
    id_to_token[id] = content;
    if (t.value("special", false)) {
      if (id >= static_cast<int32_t>(special.size())) special.resize(id + 1);
      special[id] = true;
    }
  }
  std::stable_sort(added.begin(), added.end(), [](const Added& a, const Added& b) {
    return a.content.size() > b.content.size();
  });
  for (uint32_t i = 0; i < added.size(); ++i) {
    if (!added[i].content.empty()) added_by_first_byte[uint8_t(added[i].content[0])].push_back(i);
  }
  return absl::OkStatus();
}

void Tokenizer::Impl::LoadPostProcessor(const json& spec) {
  // TemplateProcessing whose single-sequence template starts with a special token: BOS. Llama 3
  // nests it in a Sequence after a ByteLevel processor.
  if (spec.is_object() && spec.value("type", "") == "Sequence" && spec.contains("processors")) {
    for (const json& processor : spec["processors"]) LoadPostProcessor(processor);
    return;
  }
  if (!spec.is_object() || spec.value("type", "") != "TemplateProcessing") return;
  const json& single = spec.value("single", json::array());
  if (single.empty() || !single[0].contains("SpecialToken")) return;
  const std::string name = single[0]["SpecialToken"].value("id", "");
  for (const Added& a : added) {
    if (a.content == name) bos_id = a.id;
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text,
                                                               const std::string& source) {
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  if (!doc.contains("model")) return absl::InvalidArgumentError(source + ": no \"model\"");
  try {  // a field of the wrong JSON type throws from nlohmann's accessors
    RETURN_IF_ERROR(impl->LoadModel(doc["model"]));
    RETURN_IF_ERROR(impl->LoadAddedTokens(doc.value("added_tokens", json::array())));
    RETURN_IF_ERROR(impl->LoadSteps(doc.value("normalizer", json()), true, impl->normalizer));
    RETURN_IF_ERROR(
        impl->LoadSteps(doc.value("pre_tokenizer", json()), false, impl->pre_tokenizer));
    RETURN_IF_ERROR(impl->LoadDecoder(doc.value("decoder", json())));
    impl->LoadPostProcessor(doc.value("post_processor", json()));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::filesystem::path& dir) {
  const auto path = dir / "tokenizer.json";
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  ASSIGN_OR_RETURN(auto tokenizer, FromJson(text.str(), path.string()));
  std::ifstream config_in(dir / "tokenizer_config.json");
  if (config_in) {
    std::stringstream config_text;
    config_text << config_in.rdbuf();
    json config = json::parse(config_text.str(), nullptr, false);
    if (config.is_object() && config.contains("add_bos_token")) {
      tokenizer->impl_->bos_id.reset();
      if (config["add_bos_token"] == true && config.contains("bos_token")) {
        const json& bos = config["bos_token"];
        std::string name;  // "<s>" or {"content": "<s>", ...}
        if (bos.is_string()) name = bos.get<std::string>();
        if (bos.is_object() && bos.contains("content") && bos["content"].is_string()) {
          name = bos["content"].get<std::string>();
        }
        tokenizer->impl_->bos_id = tokenizer->TokenId(name);
      }
    }
  }
  return tokenizer;
}

}  // namespace gqa
