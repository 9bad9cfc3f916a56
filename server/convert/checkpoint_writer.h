// Writes Hugging Face-format model directories: config.json, generation_config.json and
// model.safetensors, or shards of at most a given size with model.safetensors.index.json.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "nlohmann/json_fwd.hpp"

namespace gqa {

struct CheckpointWriteOptions {
  uint64_t max_shard_bytes = 0;                 // 0: one model.safetensors
  std::map<std::string, std::string> metadata;  // safetensors __metadata__ (format=pt is added)
};

// Returns tensor i's bytes; they must stay valid until the next call. Called once per tensor,
// in order, so a producer can compute each tensor into one reused buffer.
using TensorBytes = std::function<absl::StatusOr<std::span<const std::byte>>(size_t index)>;

// Writes the weights only, streaming: one tensor in memory at a time.
absl::Status WriteWeights(const std::filesystem::path& dir,
                          const std::vector<TensorHeader>& tensors, const TensorBytes& bytes_of,
                          const CheckpointWriteOptions& options);

// Creates directory `dst` (which must not exist) with what `write` puts in a sibling
// "<dst>.partial-<pid>" directory, renamed to dst only when `write` succeeds; on any error nothing
// is left at either path.
absl::Status WriteNewDirectory(
    const std::filesystem::path& dst,
    const std::function<absl::Status(const std::filesystem::path&)>& write);

// A whole directory from tensors in memory (random checkpoints for tests and the demo).
absl::Status WriteCheckpoint(const std::filesystem::path& dir, const ModelConfig& config,
                             const std::vector<TensorToWrite>& tensors,
                             const CheckpointWriteOptions& options);

}  // namespace gqa
