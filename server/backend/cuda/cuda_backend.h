// The CUDA backend: the whole decoder on one GPU with the kernels/ CUDA kernels and cuBLASLt,
// bf16 or fp16 weights, activations and paged KV cache, decode steps replayed from CUDA graphs.
//
// Parts: device.h (stream, handles, memory owners), weights.h (upload, fusion), gemm.h
// (cuBLASLt plans), step_inputs.h (pinned + device step arrays). The engine knows only Backend.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "backend/cuda/shard.h"
#include "model/checkpoint.h"
#include "options/serving_options.h"

namespace gqa {

namespace cuda {
class RankCollectives;
}

// The options tree's parts the GPU uses, and what the factory resolves from them and the model.
struct CudaBackendOptions {
  SchedulerOptions scheduler;  // max_num_seqs, max_num_batched_tokens
  CacheOptions cache;          // block_size, kv_cache_bytes, num_kv_blocks, gpu_memory_utilization
  BackendOptions backend;      // deterministic, step_profile_interval (> 0: profiled graphs too)
  CudaOptions cuda;            // device, eager, skinny and tensor-core GEMM row limits
  // Resolved: backend.dtype (bf16 or fp16); cache.kv_cache_dtype (K/V in `dtype`, or FP8 E4M3
  // with per-(layer, KV head) scales, compute capability 8.9+); scheduler.max_model_len.
  DType dtype = DType::kBF16;
  KvCacheDType kv_cache_dtype = KvCacheDType::kCompute;
  int max_model_len = 4096;
  uint64_t random_seed = 0;  // CreateCudaBackendWithRandomWeights
  // Tensor parallelism: this backend's rank of shard.world_size (its GPU is
  // cuda.device_index), with its slices of the weights and its heads' KV pool; collectives is
  // its rank's communicator (backend/cuda/collectives.h), not owned. Null (the default, and
  // always at world size 1 outside TensorParallelBackend): the single-GPU backend, unchanged.
  // Set (also at world size 1, through the runtime): the unfused layers with the partial sums
  // of O and down all-reduced before they meet the residual, the vocabulary split, and the
  // logits gathered whole before sampling.
  cuda::Shard shard;
  cuda::RankCollectives* collectives = nullptr;
};

// Loads `checkpoint` onto GPU `options.cuda.device_index`. Fails with one clear message when no GPU
// is visible, the model's shape is unsupported, or it does not fit.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const CudaBackendOptions& options, std::shared_ptr<const Checkpoint> checkpoint);

// Same, for a config alone: random weights made on the GPU (benchmarks).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackendWithRandomWeights(
    const CudaBackendOptions& options, const ModelConfig& config);

// The name of the GPU the backend would use, or why there is none.
absl::StatusOr<std::string> CudaDeviceName(int device_index = 0);

// How many GPUs this process sees (CUDA_VISIBLE_DEVICES applied), or why it cannot tell.
absl::StatusOr<int> CudaDeviceCount();

}  // namespace gqa
