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
#include "model/checkpoint.h"

namespace gqa {

struct CudaBackendOptions {
  int device_index = 0;
  DType dtype = DType::kBF16;  // bf16 or fp16
  // K/V in `dtype`, or FP8 E4M3 with per-(layer, KV head) scales (compute capability 8.9+)
  KvCacheDType kv_cache_dtype = KvCacheDType::kCompute;
  int block_size = 16;
  uint64_t kv_cache_bytes = 0;          // > 0: exactly this much KV cache
  int num_kv_blocks = 0;                // > 0: exactly this many blocks (overrides bytes)
  double gpu_memory_utilization = 0.9;  // otherwise: this share of the card, minus the rest
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 4096;
  bool enforce_eager = false;  // no CUDA graphs
  bool deterministic = false;  // a sequence's results do not depend on its batch
  // Products of up to this many rows run our skinny GEMM kernel instead of cuBLAS (not in
  // deterministic mode, where every product goes through one cuBLAS algorithm per shape).
  int skinny_gemm_max_rows = 1;
  // Also capture each decode graph with timing events (ProfileNextStep replays that copy).
  bool step_profiling = true;
  uint64_t random_seed = 0;  // CreateCudaBackendWithRandomWeights
};

// Loads `checkpoint` onto GPU `options.device_index`. Fails with one clear message when no GPU
// is visible, the model's shape is unsupported, or it does not fit.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(
    const CudaBackendOptions& options, std::shared_ptr<const Checkpoint> checkpoint);

// Same, for a config alone: random weights made on the GPU (benchmarks).
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackendWithRandomWeights(
    const CudaBackendOptions& options, const ModelConfig& config);

// The name of the GPU the backend would use, or why there is none.
absl::StatusOr<std::string> CudaDeviceName(int device_index = 0);

}  // namespace gqa
