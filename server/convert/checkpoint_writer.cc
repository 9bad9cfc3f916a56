#include "convert/checkpoint_writer.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/json_file.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace gqa {
namespace {

using nlohmann::json;

// Splits tensor indices into consecutive groups of at most max_bytes (a bigger tensor gets its
// own group).
std::vector<std::vector<size_t>> SplitShards(const std::vector<TensorHeader>& tensors,
                                             uint64_t max_bytes) {
  std::vector<std::vector<size_t>> shards(1);
  uint64_t current = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = tensors[i].nbytes();
    if (max_bytes > 0 && current > 0 && current + n > max_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += n;
  }
  return shards;
}

std::string ShardName(size_t index, size_t count) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index + 1, count);
  return name;
}

absl::Status WriteShard(const std::filesystem::path& path, const std::vector<TensorHeader>& all,
                        const std::vector<size_t>& indices, const TensorBytes& bytes_of,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<TensorHeader> headers;
  for (size_t i : indices) headers.push_back(all[i]);
  ASSIGN_OR_RETURN(auto writer, SafetensorsStreamWriter::Create(path, headers, metadata));
  for (size_t i : indices) {
    ASSIGN_OR_RETURN(std::span<const std::byte> bytes, bytes_of(i));
    RETURN_IF_ERROR(writer->Append(bytes.data(), bytes.size()));
  }
  return writer->Close();
}

}  // namespace

absl::Status WriteWeights(const std::filesystem::path& dir,
                          const std::vector<TensorHeader>& tensors, const TensorBytes& bytes_of,
                          const CheckpointWriteOptions& options) {
  auto metadata = options.metadata;
  metadata["format"] = "pt";
  const auto shards = SplitShards(tensors, options.max_shard_bytes);
  if (shards.size() == 1) {
    return WriteShard(dir / "model.safetensors", tensors, shards[0], bytes_of, metadata);
  }
  json weight_map = json::object();
  uint64_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string name = ShardName(s, shards.size());
    RETURN_IF_ERROR(WriteShard(dir / name, tensors, shards[s], bytes_of, metadata));
    for (size_t i : shards[s]) {
      weight_map[tensors[i].name] = name;
      total += tensors[i].nbytes();
    }
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return WriteJsonFile(dir / "model.safetensors.index.json", index);
}

absl::Status WriteNewDirectory(
    const std::filesystem::path& dst,
    const std::function<absl::Status(const std::filesystem::path&)>& write) {
  if (std::filesystem::exists(dst)) {
    return absl::AlreadyExistsError(absl::StrCat(dst.string(), ": already exists"));
  }
  const std::filesystem::path partial =
      dst.parent_path() / absl::StrCat(dst.filename().string(), ".partial-", ::getpid());
  std::error_code ec;
  std::filesystem::remove_all(partial, ec);
  std::filesystem::create_directories(partial, ec);
  if (ec) return absl::InternalError(absl::StrCat(partial.string(), ": ", ec.message()));
  absl::Status status = write(partial);
  if (status.ok()) {
    std::filesystem::rename(partial, dst, ec);
    if (ec) status = absl::InternalError(absl::StrCat(dst.string(), ": ", ec.message()));
  }
  if (!status.ok()) std::filesystem::remove_all(partial, ec);
  return status;
}

absl::Status WriteCheckpoint(const std::filesystem::path& dir, const ModelConfig& config,
                             const std::vector<TensorToWrite>& tensors,
                             const CheckpointWriteOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message()));
  RETURN_IF_ERROR(WriteJsonFile(dir / "config.json", ModelConfigToJson(config)));
  json gen = {{"_from_model_config", true}};
  if (config.bos_token_id) gen["bos_token_id"] = *config.bos_token_id;
  if (!config.eos_token_ids.empty()) gen["eos_token_id"] = config.eos_token_ids;
  RETURN_IF_ERROR(WriteJsonFile(dir / "generation_config.json", gen));
  std::vector<TensorHeader> headers;
  for (const auto& t : tensors) headers.push_back({t.name, t.dtype, t.shape});
  return WriteWeights(
      dir, headers,
      [&](size_t i) -> absl::StatusOr<std::span<const std::byte>> {
        return std::span<const std::byte>(static_cast<const std::byte*>(tensors[i].data),
                                          tensors[i].nbytes);
      },
      options);
}

}  // namespace gqa
