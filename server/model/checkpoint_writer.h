// Writes a Hugging Face-format model directory: config.json, generation_config.json and
// model.safetensors, or shards with model.safetensors.index.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace gqa {

struct CheckpointWriteOptions {
  uint64_t max_shard_bytes = 0;                 // 0: one model.safetensors
  std::map<std::string, std::string> metadata;  // safetensors __metadata__ (format=pt is added)
};

absl::Status WriteCheckpoint(const std::filesystem::path& dir, const ModelConfig& config,
                             const std::vector<TensorToWrite>& tensors,
                             const CheckpointWriteOptions& options);

}  // namespace gqa
