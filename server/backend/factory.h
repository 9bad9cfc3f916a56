// The one place that knows which backends exist: picks one (--backend auto|cpu|cuda), sizes its
// KV pool from a byte budget in its own dtype, and builds it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "backend/backend.h"
#include "model/checkpoint.h"

namespace gqa {

enum class BackendKind { kAuto, kCpu, kCuda };

absl::StatusOr<BackendKind> ParseBackendKind(std::string_view name);  // "auto", "cpu", "cuda"
std::string_view BackendKindName(BackendKind kind);

// auto: CUDA when this build has it and a GPU is visible, else CPU. cuda: an error saying why
// when it cannot be used. `device` receives the device's name.
absl::StatusOr<BackendKind> ResolveBackendKind(BackendKind kind, std::string* device);

struct BackendOptions {
  BackendKind kind = BackendKind::kAuto;
  std::string dtype = "auto";  // CUDA: auto (the checkpoint's 16-bit type), bfloat16, float16
  // auto (the compute dtype: fp32 on the CPU, --dtype on a GPU), that dtype's name, or fp8_e4m3
  std::string kv_cache_dtype = "auto";
  int block_size = 16;
  uint64_t kv_cache_bytes = 0;  // 0: 1 GiB on the CPU, gpu_memory_utilization on a GPU
  int num_kv_blocks = 0;        // > 0: exactly this many blocks
  double gpu_memory_utilization = 0.9;
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 4096;
  bool enforce_eager = false;
  bool deterministic = false;
  bool step_profiling = true;  // CUDA: also capture decode graphs with timing events
  int cpu_threads = 0;
};

// The CUDA serving dtype for `option` ("auto", "bfloat16", "float16") and a checkpoint stored
// as `stored`: auto keeps a 16-bit checkpoint's type and takes bfloat16 for float32.
absl::StatusOr<DType> ServingDType(std::string_view option, DType stored);

// Builds the backend `options.kind` names (resolved: not kAuto).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(
    const BackendOptions& options, std::shared_ptr<const Checkpoint> checkpoint);

}  // namespace gqa
