#include "model/checkpoint_writer.h"

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;

absl::Status WriteJson(const std::filesystem::path& path, const json& doc) {
  std::ofstream out(path, std::ios::trunc);
  out << doc.dump(2) << "\n";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path.string(), ": write failed"));
  return absl::OkStatus();
}

// Splits tensors into consecutive groups of at most max_bytes (a bigger tensor gets its own).
std::vector<std::vector<TensorToWrite>> SplitShards(const std::vector<TensorToWrite>& tensors,
                                                    uint64_t max_bytes) {
  std::vector<std::vector<TensorToWrite>> shards(1);
  uint64_t current = 0;
  for (const auto& t : tensors) {
    if (max_bytes > 0 && current > 0 && current + t.nbytes > max_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(t);
    current += t.nbytes;
  }
  return shards;
}

std::string ShardName(size_t index, size_t count) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

}  // namespace

absl::Status WriteCheckpoint(const std::filesystem::path& dir, const ModelConfig& config,
                             const std::vector<TensorToWrite>& tensors,
                             const CheckpointWriteOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message()));
  RETURN_IF_ERROR(WriteJson(dir / "config.json", ModelConfigToJson(config)));
  json gen = {{"_from_model_config", true}};
  if (config.bos_token_id) gen["bos_token_id"] = *config.bos_token_id;
  if (!config.eos_token_ids.empty()) gen["eos_token_id"] = config.eos_token_ids;
  RETURN_IF_ERROR(WriteJson(dir / "generation_config.json", gen));

  auto metadata = options.metadata;
  metadata["format"] = "pt";
  const auto shards = SplitShards(tensors, options.max_shard_bytes);
  if (shards.size() == 1) return WriteSafetensors(dir / "model.safetensors", shards[0], metadata);
  json weight_map = json::object();
  uint64_t total = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string name = ShardName(i, shards.size());
    RETURN_IF_ERROR(WriteSafetensors(dir / name, shards[i], metadata));
    for (const auto& t : shards[i]) {
      weight_map[t.name] = name;
      total += t.nbytes;
    }
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return WriteJson(dir / "model.safetensors.index.json", index);
}

}  // namespace gqa
