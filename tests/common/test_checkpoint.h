// Helpers that write tiny random checkpoints into fresh temporary directories.
#pragma once

#include <filesystem>
#include <string>

#include "model/config.h"

namespace gqa::testing {

// A fresh, empty directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A small Llama-style config: 2 layers, hidden 64, 8 heads, the given KV heads, vocab 128.
ModelConfig TinyConfig(int num_kv_heads = 2, DType dtype = DType::kF32);

// Writes config.json, generation_config.json and model.safetensors (or shards) with random
// weights for `config`.
void WriteRandomCheckpoint(const std::filesystem::path& dir, const ModelConfig& config,
                           uint64_t seed = 1, uint64_t max_shard_bytes = 0);

}  // namespace gqa::testing
