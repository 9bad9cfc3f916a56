#include "common/test_checkpoint.h"

#include <random>
#include <stdexcept>

#include "convert/checkpoint_writer.h"
#include "model/checkpoint.h"

namespace gqa::testing {

TempDir::TempDir() {
  std::random_device rd;
  path_ = std::filesystem::temp_directory_path() /
          ("gqa-test-" + std::to_string(rd()) + std::to_string(rd()));
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ModelConfig TinyConfig(int num_kv_heads, DType dtype) {
  ModelConfig c;
  c.architecture_name = "LlamaForCausalLM";
  c.architecture = Architecture::kLlama;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = 8;
  c.num_kv_heads = num_kv_heads;
  c.head_dim = 8;
  c.vocab_size = 128;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = 1e-5f;
  c.dtype = dtype;
  c.bos_token_id = 0;
  c.eos_token_ids = {1};
  return c;
}

void WriteRandomCheckpoint(const std::filesystem::path& dir, const ModelConfig& config,
                           uint64_t seed, uint64_t max_shard_bytes) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<TensorToWrite> tensors;
  for (const TensorSpec& spec : ExpectedTensors(config)) {
    storage.push_back(RandomTensorBytes(spec, config, config.dtype, seed));
    tensors.push_back(
        {spec.name, config.dtype, spec.shape, storage.back().data(), storage.back().size()});
  }
  CheckpointWriteOptions options;
  options.max_shard_bytes = max_shard_bytes;
  if (!WriteCheckpoint(dir, config, tensors, options).ok()) {
    throw std::runtime_error("cannot write test checkpoint");
  }
}

}  // namespace gqa::testing
