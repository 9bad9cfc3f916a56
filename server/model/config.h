// A Llama-family decoder's shape, parsed from a Hugging Face config.json (and
// generation_config.json for the EOS tokens).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gqa/kernels/rope.h"
#include "model/dtype.h"
#include "nlohmann/json_fwd.hpp"

namespace gqa {

enum class Architecture { kLlama, kMistral, kQwen2 };

struct ModelConfig {
  std::string architecture_name;  // as in config.json, e.g. "LlamaForCausalLM"
  Architecture architecture = Architecture::kLlama;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rope_theta = 10000.0f;
  kernels::RopeScaling rope_scaling;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;              // Qwen2, or Llama's attention_bias
  bool o_bias = false;                // Llama's attention_bias
  bool mlp_bias = false;              // Llama's mlp_bias
  std::optional<int> sliding_window;  // Mistral, or Qwen2 with use_sliding_window
  DType dtype = DType::kBF16;         // torch_dtype
  std::optional<int> bos_token_id;
  std::vector<int> eos_token_ids;
  // Set by gqa-convert: the KV heads of the checkpoint it was converted from.
  std::optional<int> converted_from_kv_heads;

  int group_size() const { return num_heads / num_kv_heads; }
  // Keys before the query that attention sees, in every layer (0: all). Mistral's sliding window
  // applies to every layer. Qwen2's (only in layers from max_window_layers up) is not
  // implemented: the server caps such a model's max_model_len at the window instead.
  int attention_window() const {
    return architecture == Architecture::kMistral && sliding_window ? *sliding_window : 0;
  }
  int q_size() const { return num_heads * head_dim; }
  int kv_size() const { return num_kv_heads * head_dim; }
};

// Parses and validates a config.json document. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const nlohmann::json& doc, const std::string& source);

// Reads <dir>/config.json and, when present, <dir>/generation_config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir);

// The config.json that ParseModelConfig reads back to an equal config.
nlohmann::json ModelConfigToJson(const ModelConfig& config);

}  // namespace gqa
