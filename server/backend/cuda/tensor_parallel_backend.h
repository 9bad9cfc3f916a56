// Tensor parallelism in one process (docs/tensor-parallel.md): a Backend over N CUDA backends,
// rank r on GPU r with its slices of the weights and its KV heads, joined by NCCL
// (backend/cuda/collectives.h). The engine sees one backend: every step goes to every rank,
// and rank 0's sampled tokens (the same on every rank) come back.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "model/checkpoint.h"

namespace gqa {

// options.backend.tensor_parallel_size ranks over GPUs 0..N-1 (N = 1 runs the runtime over one
// GPU with a one-rank communicator: tests). `options` as for CreateCudaBackend; its shard,
// collectives and cuda.device_index are set per rank here. The ranks are made at once, each on
// its own thread; the first failure is returned, naming its rank.
absl::StatusOr<std::unique_ptr<Backend>> CreateTensorParallelBackend(
    const CudaBackendOptions& options, std::shared_ptr<const Checkpoint> checkpoint);

// Same, random weights (each rank its own random slice: not the single GPU's model).
absl::StatusOr<std::unique_ptr<Backend>> CreateTensorParallelBackendWithRandomWeights(
    const CudaBackendOptions& options, const ModelConfig& config);

}  // namespace gqa
