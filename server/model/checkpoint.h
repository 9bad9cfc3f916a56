// A loaded checkpoint: its config and a view of every weight tensor, memory-mapped from
// safetensors files or, for --load-format=dummy, random values held in memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/safetensors.h"

namespace gqa {

enum class LoadFormat {
  kSafetensors,  // model.safetensors or model.safetensors.index.json
  kDummy,        // random weights from config.json alone (benchmarks of big shapes)
};

// A tensor the architecture needs: its Hugging Face name and shape.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor a checkpoint of this config must hold, in a stable order.
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config);

// "model.layers.<layer>.<suffix>"
std::string LayerTensorName(int layer, const char* suffix);

class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Load(const std::filesystem::path& dir,
                                                          LoadFormat format, uint64_t seed = 0);

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& dir() const { return dir_; }
  // The tensor, which Load guaranteed to exist with the expected shape.
  const TensorView& Get(const std::string& name) const { return tensors_.at(name); }
  bool Has(const std::string& name) const { return tensors_.contains(name); }
  // Total bytes of all weights as stored.
  uint64_t weight_bytes() const;

 private:
  Checkpoint() = default;
  absl::Status LoadSafetensors();
  absl::Status LoadShards(const std::filesystem::path& index_path);
  absl::Status AddFileTensors(const SafetensorsFile& file);
  absl::Status CheckTensors() const;
  bool IsKvCacheScale(const std::string& name) const;
  void FillRandom(uint64_t seed);

  ModelConfig config_;
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::vector<std::byte>> owned_;  // dummy weights
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> tensor_file_;  // for error messages
};

// Random values for a tensor, scaled by its role so that activations stay O(1) and logits are
// spread enough for greedy decoding to be stable across implementations.
std::vector<std::byte> RandomTensorBytes(const TensorSpec& spec, const ModelConfig& config,
                                         DType dtype, uint64_t seed);

}  // namespace gqa
