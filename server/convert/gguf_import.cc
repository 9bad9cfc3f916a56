#include "convert/gguf_import.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json_file.h"
#include "common/status_macros.h"
#include "convert/checkpoint_writer.h"
#include "convert/gguf.h"
#include "convert/gguf_tokenizer.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/tensor_names.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;
namespace names = tensor_names;

constexpr char kRopeFreqs[] = "rope_freqs.weight";

absl::Status Invalid(const GgufFile& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file.path().string(), ": ", what));
}

// Reads `<arch>.<key>` as an integer (required unless a fallback is given).
absl::StatusOr<int> ArchInt(const GgufFile& file, const std::string& arch, const std::string& key,
                            std::optional<int> fallback = std::nullopt) {
  const std::string full = absl::StrCat(arch, ".", key);
  const GgufValue* value = file.Find(full);
  if (value == nullptr) {
    if (fallback) return *fallback;
    return Invalid(file, absl::StrCat("metadata ", full, " is missing"));
  }
  const std::optional<int64_t> number = value->AsInt();
  if (!number || *number <= 0 || *number > (1 << 30)) {
    return Invalid(file, absl::StrCat("metadata ", full, " is not a positive integer"));
  }
  return static_cast<int>(*number);
}

absl::StatusOr<double> ArchFloat(const GgufFile& file, const std::string& arch,
                                 const std::string& key, std::optional<double> fallback) {
  const std::string full = absl::StrCat(arch, ".", key);
  const GgufValue* value = file.Find(full);
  if (value == nullptr) {
    if (fallback) return *fallback;
    return Invalid(file, absl::StrCat("metadata ", full, " is missing"));
  }
  const std::optional<double> number = value->AsDouble();
  if (!number || !std::isfinite(*number) || *number <= 0) {
    return Invalid(file, absl::StrCat("metadata ", full, " is not a positive number"));
  }
  return *number;
}

// The shortest decimal that reads back as the same float (1e-05 rather than 9.99999974e-06), so
// config.json says what the model's authors wrote.
double ShortestFloatDecimal(double value) {
  const float target = static_cast<float>(value);
  char text[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, static_cast<double>(target));
    if (std::strtof(text, nullptr) == target) return std::strtod(text, nullptr);
  }
  return target;
}

// The GGUF name of a Hugging Face tensor name of a Llama-family decoder.
std::string GgufTensorName(const std::string& hf_name) {
  static const std::map<std::string, std::string> kTopLevel = {
      {names::kEmbed, "token_embd.weight"},
      {names::kFinalNorm, "output_norm.weight"},
      {names::kLmHead, "output.weight"}};
  static const std::map<std::string, std::string> kPerLayer = {
      {names::kInputNorm, "attn_norm.weight"},
      {names::kQ, "attn_q.weight"},
      {names::kK, "attn_k.weight"},
      {names::kV, "attn_v.weight"},
      {names::kO, "attn_output.weight"},
      {names::kQBias, "attn_q.bias"},
      {names::kKBias, "attn_k.bias"},
      {names::kVBias, "attn_v.bias"},
      {names::kOBias, "attn_output.bias"},
      {names::kPostNorm, "ffn_norm.weight"},
      {names::kGate, "ffn_gate.weight"},
      {names::kUp, "ffn_up.weight"},
      {names::kDown, "ffn_down.weight"},
      {names::kGateBias, "ffn_gate.bias"},
      {names::kUpBias, "ffn_up.bias"},
      {names::kDownBias, "ffn_down.bias"}};
  if (auto it = kTopLevel.find(hf_name); it != kTopLevel.end()) return it->second;
  // "model.layers.<layer>.<suffix>"
  const std::vector<std::string> parts = absl::StrSplit(hf_name, absl::MaxSplits('.', 3));
  if (parts.size() == 4) {
    if (auto it = kPerLayer.find(parts[3]); it != kPerLayer.end()) {
      return absl::StrCat("blk.", parts[2], ".", it->second);
    }
  }
  return hf_name;
}

// Q and K (weights and biases), whose rows llama.cpp's converter permuted for its rotary layout.
bool IsRotaryPermuted(const std::string& hf_name) {
  for (const char* suffix : {names::kQ, names::kK, names::kQBias, names::kKBias}) {
    if (hf_name.ends_with(suffix)) return true;
  }
  return false;
}

std::vector<float> Dequantized(const GgufTensor& tensor) {
  std::vector<float> values(static_cast<size_t>(tensor.numel()));
  DequantizeToFloat(tensor.type, tensor.data, tensor.numel(), values.data());
  return values;
}

// Llama 3.1/3.2 files carry rope scaling as per-frequency divisors (rope_freqs.weight) rather than
// its parameters. Recovers them: the factor is the largest divisor; the rest are the values every
// Llama 3 release uses, accepted only if they reproduce every divisor.
absl::Status ReadLlama3RopeScaling(const GgufFile& file, const std::string& arch,
                                   ModelConfig& config) {
  const GgufTensor* freqs = file.FindTensor(kRopeFreqs);
  if (freqs == nullptr) return absl::OkStatus();
  if (!DequantizableLayout(static_cast<uint32_t>(freqs->type)) ||
      freqs->numel() != config.head_dim / 2) {
    return Invalid(file, "rope_freqs.weight has an unexpected type or size");
  }
  const std::vector<float> divisors = Dequantized(*freqs);
  kernels::RopeScaling scaling;
  scaling.type = kernels::RopeScalingType::kLlama3;
  scaling.factor = *std::max_element(divisors.begin(), divisors.end());
  ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                   ArchInt(file, arch, "rope.scaling.original_context_length", 8192));
  const std::vector<float> plain =
      kernels::RopeInverseFrequencies(config.rope_theta, config.head_dim, {});
  const std::vector<float> scaled =
      kernels::RopeInverseFrequencies(config.rope_theta, config.head_dim, scaling);
  for (size_t i = 0; i < divisors.size(); ++i) {
    const float expected = plain[i] / scaled[i];
    if (std::fabs(expected - divisors[i]) > 1e-3f * expected) {
      return Invalid(file, absl::StrCat("rope_freqs.weight[", i, "] = ", divisors[i],
                                        " is not Llama 3 rope scaling (expected ", expected, ")"));
    }
  }
  config.rope_scaling = scaling;
  return absl::OkStatus();
}

absl::Status ReadRopeScaling(const GgufFile& file, const std::string& arch, ModelConfig& config) {
  const GgufValue* type = file.Find(arch + ".rope.scaling.type");
  const std::string kind =
      type != nullptr && type->AsString() != nullptr ? *type->AsString() : "none";
  if (kind == "linear") {
    ASSIGN_OR_RETURN(const double factor,
                     ArchFloat(file, arch, "rope.scaling.factor", std::nullopt));
    config.rope_scaling.type = kernels::RopeScalingType::kLinear;
    config.rope_scaling.factor = static_cast<float>(factor);
  } else if (kind != "none") {
    return Invalid(file, absl::StrCat(arch, ".rope.scaling.type \"", kind,
                                      "\" is not supported (none, linear, or Llama 3's)"));
  }
  return ReadLlama3RopeScaling(file, arch, config);
}

absl::StatusOr<ModelConfig> ConfigFromMetadata(const GgufFile& file, const std::string& arch,
                                               const GgufTokenizerFiles& tokenizer, DType dtype) {
  ModelConfig c;
  c.architecture = arch == "qwen2" ? Architecture::kQwen2 : Architecture::kLlama;
  c.architecture_name = arch == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  ASSIGN_OR_RETURN(c.hidden_size, ArchInt(file, arch, "embedding_length"));
  ASSIGN_OR_RETURN(c.intermediate_size, ArchInt(file, arch, "feed_forward_length"));
  ASSIGN_OR_RETURN(c.num_layers, ArchInt(file, arch, "block_count"));
  ASSIGN_OR_RETURN(c.num_heads, ArchInt(file, arch, "attention.head_count"));
  ASSIGN_OR_RETURN(c.num_kv_heads, ArchInt(file, arch, "attention.head_count_kv", c.num_heads));
  ASSIGN_OR_RETURN(c.head_dim,
                   ArchInt(file, arch, "attention.key_length", c.hidden_size / c.num_heads));
  ASSIGN_OR_RETURN(const int value_dim, ArchInt(file, arch, "attention.value_length", c.head_dim));
  ASSIGN_OR_RETURN(const int rotary_dim, ArchInt(file, arch, "rope.dimension_count", c.head_dim));
  if (value_dim != c.head_dim || rotary_dim != c.head_dim) {
    return Invalid(file, absl::StrCat("key, value and rotary head sizes differ (", c.head_dim, ", ",
                                      value_dim, ", ", rotary_dim, "): not supported"));
  }
  ASSIGN_OR_RETURN(c.max_position_embeddings, ArchInt(file, arch, "context_length", 4096));
  ASSIGN_OR_RETURN(const double eps,
                   ArchFloat(file, arch, "attention.layer_norm_rms_epsilon", std::nullopt));
  ASSIGN_OR_RETURN(const double theta, ArchFloat(file, arch, "rope.freq_base", 10000.0));
  c.rms_norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  RETURN_IF_ERROR(ReadRopeScaling(file, arch, c));
  c.vocab_size = tokenizer.vocab_size;
  c.tie_word_embeddings = file.FindTensor("output.weight") == nullptr;
  c.qkv_bias = arch == "qwen2" || file.FindTensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = arch == "llama" && c.qkv_bias;
  c.mlp_bias = file.FindTensor("blk.0.ffn_down.bias") != nullptr;
  c.dtype = dtype;
  c.bos_token_id = tokenizer.bos_token_id;
  c.eos_token_ids = tokenizer.eos_token_ids;
  // Validate the whole as the server will read it.
  json doc = ModelConfigToJson(c);
  ASSIGN_OR_RETURN(ModelConfig parsed, ParseModelConfig(doc, file.path().string()));
  return parsed;
}

json ConfigJson(const ModelConfig& config) {
  json doc = ModelConfigToJson(config);
  doc["rms_norm_eps"] = ShortestFloatDecimal(config.rms_norm_eps);
  doc["rope_theta"] = ShortestFloatDecimal(config.rope_theta);
  return doc;
}

// Checks that the file holds exactly the tensors `expected` needs, with matching shapes and types
// we can dequantize; returns them in the same order.
absl::StatusOr<std::vector<const GgufTensor*>> MatchTensors(
    const GgufFile& file, const std::vector<TensorSpec>& expected) {
  std::vector<const GgufTensor*> sources;
  std::set<std::string> used = {kRopeFreqs};
  for (const TensorSpec& spec : expected) {
    const std::string gguf_name = GgufTensorName(spec.name);
    const GgufTensor* tensor = file.FindTensor(gguf_name);
    if (tensor == nullptr) {
      return Invalid(file, absl::StrCat("tensor ", gguf_name, " (", spec.name, ") is missing"));
    }
    if (tensor->torch_shape() != spec.shape) {
      return Invalid(file, absl::StrCat("tensor ", gguf_name, " has shape ",
                                        ShapeToString(tensor->torch_shape()), ", expected ",
                                        ShapeToString(spec.shape), " from the metadata"));
    }
    if (!DequantizableLayout(static_cast<uint32_t>(tensor->type))) {
      return Invalid(
          file, absl::StrCat("tensor ", gguf_name, " has type ",
                             GgmlTypeName(static_cast<uint32_t>(tensor->type)),
                             ", which the importer cannot dequantize (supported: F32, F16, BF16, "
                             "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"));
    }
    sources.push_back(tensor);
    used.insert(gguf_name);
  }
  for (const GgufTensor& tensor : file.tensors()) {
    if (!used.contains(tensor.name)) {
      return Invalid(file, absl::StrCat("unexpected tensor ", tensor.name,
                                        " (not part of a supported Llama-family decoder)"));
    }
  }
  return sources;
}

// Writes `values` ([rows, cols] in GGUF row order) as `dtype`, undoing llama.cpp's rotary
// permutation when asked: within each head of `head_dim` rows, GGUF row 2i + half holds Hugging
// Face row half * head_dim / 2 + i.
void WriteRows(const std::vector<float>& values, int64_t rows, int head_dim, bool unpermute,
               DType dtype, std::vector<std::byte>& out) {
  const int64_t cols = static_cast<int64_t>(values.size()) / rows;
  const size_t row_bytes = static_cast<size_t>(cols) * DTypeSize(dtype);
  out.resize(static_cast<size_t>(rows) * row_bytes);
  const int half_dim = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t source = r;
    if (unpermute) {
      const int64_t within = r % head_dim;
      source = r - within + 2 * (within % half_dim) + within / half_dim;
    }
    ConvertFromFloat(dtype, values.data() + source * cols, static_cast<size_t>(cols),
                     out.data() + r * row_bytes);
  }
}

absl::Status WriteImported(const GgufFile& file, const std::filesystem::path& out,
                           const GgufImportOptions& options) {
  const GgufValue* arch_value = file.Find("general.architecture");
  const std::string arch = arch_value != nullptr && arch_value->AsString() != nullptr
                               ? *arch_value->AsString()
                               : std::string();
  if (arch != "llama" && arch != "qwen2") {
    return Invalid(
        file, absl::StrCat("general.architecture \"", arch, "\" is not supported (llama, qwen2)"));
  }
  ASSIGN_OR_RETURN(const int context_length, ArchInt(file, arch, "context_length", 4096));
  ASSIGN_OR_RETURN(GgufTokenizerFiles tokenizer, GgufTokenizerToJson(file, context_length));
  ASSIGN_OR_RETURN(ModelConfig config, ConfigFromMetadata(file, arch, tokenizer, options.dtype));
  const std::vector<TensorSpec> expected = ExpectedTensors(config);
  ASSIGN_OR_RETURN(std::vector<const GgufTensor*> sources, MatchTensors(file, expected));

  std::vector<TensorHeader> headers;
  for (const TensorSpec& spec : expected) headers.push_back({spec.name, options.dtype, spec.shape});
  std::vector<std::byte> buffer;
  const GgufTensor* previous = nullptr;
  CheckpointWriteOptions write_options;
  write_options.max_shard_bytes = options.max_shard_bytes;
  write_options.metadata["gqa_import"] =
      json({{"format", "gguf"}, {"source", file.path().filename().string()}}).dump();
  RETURN_IF_ERROR(WriteWeights(
      out, headers,
      [&](size_t i) -> absl::StatusOr<std::span<const std::byte>> {
        if (previous != nullptr) ReleaseMappedPages({{}, {}, previous->data, previous->nbytes});
        const GgufTensor& source = *sources[i];
        previous = &source;
        const bool unpermute = arch == "llama" && IsRotaryPermuted(headers[i].name);
        WriteRows(Dequantized(source), headers[i].shape[0], config.head_dim, unpermute,
                  options.dtype, buffer);
        return std::span<const std::byte>(buffer);
      },
      write_options));

  RETURN_IF_ERROR(WriteJsonFile(out / "config.json", ConfigJson(config)));
  json generation = {{"eos_token_id", config.eos_token_ids}};
  if (config.bos_token_id) generation["bos_token_id"] = *config.bos_token_id;
  RETURN_IF_ERROR(WriteJsonFile(out / "generation_config.json", generation));
  RETURN_IF_ERROR(WriteJsonFile(out / "tokenizer.json", tokenizer.tokenizer));
  return WriteJsonFile(out / "tokenizer_config.json", tokenizer.tokenizer_config);
}

}  // namespace

absl::Status ImportGguf(const std::filesystem::path& gguf, const std::filesystem::path& dst,
                        const GgufImportOptions& options) {
  if (std::filesystem::exists(dst)) {
    return absl::AlreadyExistsError(absl::StrCat(dst.string(), ": already exists"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(gguf));
  return WriteNewDirectory(dst, [&](const std::filesystem::path& partial) {
    return WriteImported(*file, partial, options);
  });
}

}  // namespace gqa
