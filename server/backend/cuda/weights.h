// The decoder's weights on the GPU, in one allocation, in the serving dtype (bf16 or fp16):
// Q|K|V fused into one [q + 2 kv, hidden] matrix and gate|up into one [2 inter, hidden], so each
// layer runs one product for each; tied embeddings share the embedding table.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "backend/cuda/device.h"
#include "backend/cuda/shard.h"
#include "model/checkpoint.h"
#include "model/tensor_parallel.h"

namespace gqa::cuda {

// A Shard's upload (Upload below) takes only its rank's rows of Q, K, V, gate, up, embedding and
// lm_head, its columns of O and down, and the row-parallel biases on rank 0 only (zeros
// elsewhere), so that the all-reduce after O and down adds them once.

// Pointers into DeviceWeights' allocation, elements of the serving dtype.
struct LayerWeights {
  const void* input_norm = nullptr;    // [hidden]
  const void* qkv = nullptr;           // [q_size + 2 * kv_size, hidden]
  const void* qkv_bias = nullptr;      // [q_size + 2 * kv_size] or null
  const void* o = nullptr;             // [hidden, q_size]
  const void* o_bias = nullptr;        // [hidden] or null
  const void* post_norm = nullptr;     // [hidden]
  const void* gate_up = nullptr;       // [2 * intermediate, hidden]
  const void* gate_up_bias = nullptr;  // [2 * intermediate] or null
  const void* down = nullptr;          // [hidden, intermediate]
  const void* down_bias = nullptr;     // [hidden] or null
};

// The shapes one rank's weights have: `config` with its query heads, KV heads, intermediate
// columns and vocabulary rows.
ModelConfig ShardConfig(const ModelConfig& config, const TensorParallelShard& shard);

class DeviceWeights {
 public:
  // Converts and uploads `shard`'s part of every tensor of `checkpoint` (pointers and sizes
  // below are then those of ShardConfig); logs progress for big models.
  static absl::StatusOr<DeviceWeights> Upload(const Checkpoint& checkpoint, DType dtype,
                                              Shard shard, const CudaDevice& device);
  // Random weights generated on the GPU (benchmarks of big shapes): matrices uniform in
  // +-0.02, norms 1, biases 0.
  static absl::StatusOr<DeviceWeights> Random(const ModelConfig& config, DType dtype, uint64_t seed,
                                              const CudaDevice& device);

  uint64_t bytes() const { return memory_.bytes(); }
  DType dtype() const { return dtype_; }
  const LayerWeights& layer(int l) const { return layers_[l]; }
  const void* embed() const { return embed_; }      // [vocab, hidden]
  const void* final_norm() const { return norm_; }  // [hidden]
  const void* lm_head() const { return lm_head_; }  // [vocab, hidden], embed() when tied

 private:
  // The allocation for `config`'s weights, with every pointer carved out of it.
  static absl::StatusOr<DeviceWeights> Allocate(const ModelConfig& config, DType dtype);
  // Carves the pointers for `config` out of base (null: sizing pass); returns the bytes.
  size_t Carve(const ModelConfig& config, void* base);

  DeviceMemory memory_;
  DType dtype_ = DType::kBF16;
  std::vector<LayerWeights> layers_;
  const void* embed_ = nullptr;
  const void* norm_ = nullptr;
  const void* lm_head_ = nullptr;
};

}  // namespace gqa::cuda
