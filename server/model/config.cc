#include "model/config.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;

// No decoder has more (Llama 3.1 405B has 126); beyond it a config.json is refused, since every
// layer is a row of tensor descriptions to allocate.
constexpr int kMaxLayers = 4096;

absl::Status Invalid(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

// Reads a required positive integer field.
absl::StatusOr<int> PositiveInt(const json& doc, const char* key, const std::string& source) {
  auto it = doc.find(key);
  if (it == doc.end()) return Invalid(source, absl::StrCat("missing \"", key, "\""));
  if (!it->is_number_integer() || it->get<int64_t>() <= 0 || it->get<int64_t>() > (1 << 30)) {
    return Invalid(source, absl::StrCat("\"", key, "\" must be a positive integer"));
  }
  return it->get<int>();
}

absl::StatusOr<float> OptionalFloat(const json& doc, const char* key, float fallback,
                                    const std::string& source) {
  auto it = doc.find(key);
  if (it == doc.end() || it->is_null()) return fallback;
  if (!it->is_number()) return Invalid(source, absl::StrCat("\"", key, "\" must be a number"));
  return it->get<float>();
}

bool OptionalBool(const json& doc, const char* key, bool fallback) {
  auto it = doc.find(key);
  return (it != doc.end() && it->is_boolean()) ? it->get<bool>() : fallback;
}

absl::StatusOr<std::vector<int>> TokenIdList(const json& value, const std::string& source,
                                             const char* key) {
  std::vector<int> ids;
  if (value.is_null()) return ids;
  if (value.is_number_integer()) return std::vector<int>{value.get<int>()};
  if (value.is_array()) {
    for (const auto& v : value) {
      if (!v.is_number_integer()) break;
      ids.push_back(v.get<int>());
    }
    if (ids.size() == value.size()) return ids;
  }
  return Invalid(source, absl::StrCat("\"", key, "\" must be an integer or a list of integers"));
}

absl::StatusOr<Architecture> ParseArchitecture(const json& doc, const std::string& source,
                                               std::string* name) {
  auto it = doc.find("architectures");
  if (it == doc.end() || !it->is_array() || it->empty() || !(*it)[0].is_string()) {
    return Invalid(source, "missing \"architectures\"");
  }
  *name = (*it)[0].get<std::string>();
  if (*name == "LlamaForCausalLM") return Architecture::kLlama;
  if (*name == "MistralForCausalLM") return Architecture::kMistral;
  if (*name == "Qwen2ForCausalLM") return Architecture::kQwen2;
  return Invalid(source, absl::StrCat("unsupported architecture \"", *name,
                                      "\" (supported: LlamaForCausalLM, MistralForCausalLM, "
                                      "Qwen2ForCausalLM)"));
}

absl::StatusOr<kernels::RopeScaling> ParseRopeScaling(const json& doc, const std::string& source) {
  kernels::RopeScaling scaling;
  auto it = doc.find("rope_scaling");
  if (it == doc.end() || it->is_null()) return scaling;
  if (!it->is_object()) return Invalid(source, "\"rope_scaling\" must be an object");
  const json& rs = *it;
  std::string type = rs.value("rope_type", rs.value("type", std::string("default")));
  ASSIGN_OR_RETURN(scaling.factor, OptionalFloat(rs, "factor", 1.0f, source));
  if (type == "default") {
    scaling.type = kernels::RopeScalingType::kNone;
  } else if (type == "linear") {
    scaling.type = kernels::RopeScalingType::kLinear;
  } else if (type == "llama3") {
    scaling.type = kernels::RopeScalingType::kLlama3;
    ASSIGN_OR_RETURN(scaling.low_freq_factor, OptionalFloat(rs, "low_freq_factor", 1.0f, source));
    ASSIGN_OR_RETURN(scaling.high_freq_factor, OptionalFloat(rs, "high_freq_factor", 4.0f, source));
    if (auto it = rs.find("original_max_position_embeddings"); it != rs.end()) {
      if (!it->is_number_integer() || it->get<int64_t>() <= 0 || it->get<int64_t>() > (1 << 30)) {
        return Invalid(source,
                       "rope_scaling: original_max_position_embeddings must be a positive integer");
      }
      scaling.original_max_position_embeddings = it->get<int>();
    }
    if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
      return Invalid(source, "rope_scaling: high_freq_factor must exceed low_freq_factor");
    }
  } else {
    return Invalid(source, absl::StrCat("unsupported rope_scaling type \"", type,
                                        "\" (supported: default, linear, llama3)"));
  }
  if (!(scaling.factor > 0.0f)) return Invalid(source, "rope_scaling.factor must be positive");
  return scaling;
}

absl::Status ParseShape(const json& doc, const std::string& source, ModelConfig& c) {
  ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(doc, "hidden_size", source));
  ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(doc, "intermediate_size", source));
  ASSIGN_OR_RETURN(c.num_layers, PositiveInt(doc, "num_hidden_layers", source));
  if (c.num_layers > kMaxLayers) {  // each layer is a row of tensor descriptions to allocate
    return Invalid(
        source, absl::StrCat("\"num_hidden_layers\" ", c.num_layers, " is more than ", kMaxLayers));
  }
  ASSIGN_OR_RETURN(c.num_heads, PositiveInt(doc, "num_attention_heads", source));
  ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(doc, "vocab_size", source));
  c.num_kv_heads = c.num_heads;
  if (doc.contains("num_key_value_heads") && !doc["num_key_value_heads"].is_null()) {
    ASSIGN_OR_RETURN(c.num_kv_heads, PositiveInt(doc, "num_key_value_heads", source));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return Invalid(
        source, absl::StrCat("num_attention_heads (", c.num_heads,
                             ") is not divisible by num_key_value_heads (", c.num_kv_heads, ")"));
  }
  if (doc.contains("head_dim") && !doc["head_dim"].is_null()) {
    ASSIGN_OR_RETURN(c.head_dim, PositiveInt(doc, "head_dim", source));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return Invalid(source, "hidden_size is not divisible by num_attention_heads");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) return Invalid(source, "head_dim must be even for rotary embeddings");
  c.max_position_embeddings = 2048;
  if (doc.contains("max_position_embeddings")) {
    ASSIGN_OR_RETURN(c.max_position_embeddings,
                     PositiveInt(doc, "max_position_embeddings", source));
  }
  return absl::OkStatus();
}

absl::Status ParseVariant(const json& doc, const std::string& source, ModelConfig& c) {
  const std::string act = doc.value("hidden_act", std::string("silu"));
  if (act != "silu") {
    return Invalid(source, absl::StrCat("unsupported hidden_act \"", act, "\" (only silu)"));
  }
  ASSIGN_OR_RETURN(c.rope_theta, OptionalFloat(doc, "rope_theta", 10000.0f, source));
  ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(doc, source));
  ASSIGN_OR_RETURN(c.rms_norm_eps, OptionalFloat(doc, "rms_norm_eps", 1e-6f, source));
  c.tie_word_embeddings = OptionalBool(doc, "tie_word_embeddings", false);
  const bool attention_bias = OptionalBool(doc, "attention_bias", false);
  c.qkv_bias = c.architecture == Architecture::kQwen2 || attention_bias;
  c.o_bias = c.architecture != Architecture::kQwen2 && attention_bias;
  c.mlp_bias = OptionalBool(doc, "mlp_bias", false);
  const bool uses_window =
      c.architecture == Architecture::kMistral || OptionalBool(doc, "use_sliding_window", false);
  if (uses_window && doc.contains("sliding_window") && doc["sliding_window"].is_number_integer()) {
    c.sliding_window = doc["sliding_window"].get<int>();
  }
  const std::string dtype = doc.value("torch_dtype", std::string("bfloat16"));
  auto parsed = ParseDTypeName(dtype);
  if (!parsed) return Invalid(source, absl::StrCat("unsupported torch_dtype \"", dtype, "\""));
  c.dtype = *parsed;
  if (doc.contains("bos_token_id") && doc["bos_token_id"].is_number_integer()) {
    c.bos_token_id = doc["bos_token_id"].get<int>();
  }
  if (doc.contains("eos_token_id")) {
    ASSIGN_OR_RETURN(c.eos_token_ids, TokenIdList(doc["eos_token_id"], source, "eos_token_id"));
  }
  if (doc.contains("gqa_conversion") && doc["gqa_conversion"].is_object()) {
    const json from = doc["gqa_conversion"].value("source_num_key_value_heads", json(0));
    if (from.is_number_integer() && from.get<int64_t>() > 0 && from.get<int64_t>() < (1 << 20)) {
      c.converted_from_kv_heads = from.get<int>();
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<json> ReadJsonFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  json doc = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a JSON object"));
  }
  return doc;
}

}  // namespace

static absl::StatusOr<ModelConfig> ParseModelConfigFields(const json& doc,
                                                          const std::string& source);

absl::StatusOr<ModelConfig> ParseModelConfig(const json& doc, const std::string& source) {
  try {  // a field of an unexpected JSON type throws from nlohmann's accessors
    return ParseModelConfigFields(doc, source);
  } catch (const json::exception& e) {
    return Invalid(source, e.what());
  }
}

static absl::StatusOr<ModelConfig> ParseModelConfigFields(const json& doc,
                                                          const std::string& source) {
  if (!doc.is_object()) return Invalid(source, "not a JSON object");
  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, ParseArchitecture(doc, source, &c.architecture_name));
  RETURN_IF_ERROR(ParseShape(doc, source, c));
  RETURN_IF_ERROR(ParseVariant(doc, source, c));
  for (int id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return Invalid(source, absl::StrCat("eos_token_id ", id, " is outside the vocabulary"));
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir) {
  const auto config_path = dir / "config.json";
  ASSIGN_OR_RETURN(json doc, ReadJsonFile(config_path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(doc, config_path.string()));
  const auto gen_path = dir / "generation_config.json";
  if (std::filesystem::exists(gen_path)) {
    ASSIGN_OR_RETURN(json gen, ReadJsonFile(gen_path));
    if (gen.contains("eos_token_id")) {
      ASSIGN_OR_RETURN(auto eos,
                       TokenIdList(gen["eos_token_id"], gen_path.string(), "eos_token_id"));
      if (!eos.empty()) config.eos_token_ids = eos;
    }
  }
  for (int id : config.eos_token_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return Invalid(gen_path.string(),
                     absl::StrCat("eos_token_id ", id, " is outside the vocabulary"));
    }
  }
  return config;
}

json ModelConfigToJson(const ModelConfig& c) {
  json doc = {
      {"architectures", {c.architecture_name}},
      {"model_type", c.architecture == Architecture::kQwen2     ? "qwen2"
                     : c.architecture == Architecture::kMistral ? "mistral"
                                                                : "llama"},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rope_theta", c.rope_theta},
      {"rms_norm_eps", c.rms_norm_eps},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"hidden_act", "silu"},
      {"torch_dtype", std::string(DTypeTorchName(c.dtype))},
  };
  if (c.architecture == Architecture::kLlama) {
    doc["attention_bias"] = c.qkv_bias;
    doc["mlp_bias"] = c.mlp_bias;
  }
  if (c.sliding_window) doc["sliding_window"] = *c.sliding_window;
  if (c.bos_token_id) doc["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1) doc["eos_token_id"] = c.eos_token_ids[0];
  if (c.eos_token_ids.size() > 1) doc["eos_token_id"] = c.eos_token_ids;
  const auto& rs = c.rope_scaling;
  if (rs.type == kernels::RopeScalingType::kLinear) {
    doc["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rs.factor}};
  } else if (rs.type == kernels::RopeScalingType::kLlama3) {
    doc["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", rs.factor},
        {"low_freq_factor", rs.low_freq_factor},
        {"high_freq_factor", rs.high_freq_factor},
        {"original_max_position_embeddings", rs.original_max_position_embeddings}};
  }
  return doc;
}

}  // namespace gqa
