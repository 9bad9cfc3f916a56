#include "backend/factory.h"

#include "absl/strings/str_cat.h"
#include "backend/cpu/cpu_backend.h"
#include "common/status_macros.h"
#include "gqa/kernels/cpu_ops.h"
#include "model/tensor_parallel.h"
#include "spdlog/spdlog.h"
#if GQA_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/tensor_parallel_backend.h"
#endif

namespace gqa {
namespace {

constexpr uint64_t kDefaultCpuKvBytes = 1ull << 30;

absl::StatusOr<std::unique_ptr<Backend>> CreateCpu(const ServingOptions& o,
                                                   std::shared_ptr<const Checkpoint> ckpt) {
  kernels::cpu::SetNumThreads(o.backend.cpu_threads);
  const ModelConfig& c = ckpt->config();
  const CacheOptions& cache = o.cache;
  // The CPU backend computes in fp32 and keeps its cache in fp32 or FP8.
  absl::StatusOr<KvCacheDType> cache_dtype = ParseKvCacheDType(cache.kv_cache_dtype, DType::kF32);
  if (!cache_dtype.ok()) return cache_dtype.status();
  const KvCacheSpec probe{cache.block_size, 0,           c.num_kv_heads, c.head_dim,
                          c.num_layers,     DType::kF32, *cache_dtype};
  const uint64_t bytes = cache.kv_cache_bytes > 0 ? cache.kv_cache_bytes : kDefaultCpuKvBytes;
  const int blocks =
      cache.num_kv_blocks > 0
          ? cache.num_kv_blocks
          : static_cast<int>(std::min<uint64_t>(bytes / probe.bytes_per_block(), 1u << 30));
  if (blocks < 1) return absl::InvalidArgumentError("--kv_cache_memory holds not even one block");
  auto backend = CpuBackend::Create(std::move(ckpt), cache.block_size, blocks, *cache_dtype,
                                    o.scheduler.max_num_seqs, ServedMaxModelLen(o.scheduler, c));
  if (!backend.ok()) return backend.status();
  return std::unique_ptr<Backend>(std::move(*backend));
}

}  // namespace

absl::StatusOr<BackendKind> ResolveBackendKind(BackendKind kind, std::string* device) {
  *device = "cpu";
  if (kind == BackendKind::kCpu) return kind;
#if GQA_WITH_CUDA
  absl::StatusOr<std::string> gpu = CudaDeviceName();
  if (gpu.ok()) {
    *device = *gpu;
    return BackendKind::kCuda;
  }
  if (kind == BackendKind::kCuda) {
    return absl::FailedPreconditionError(absl::StrCat("--backend=cuda: ", gpu.status().message()));
  }
  spdlog::debug("--backend=auto: the CPU backend ({})", std::string(gpu.status().message()));
#else
  if (kind == BackendKind::kCuda) {
    return absl::FailedPreconditionError(
        "--backend=cuda: this build has no CUDA (configure with a CUDA toolkit installed)");
  }
#endif
  return BackendKind::kCpu;
}

absl::StatusOr<DType> ServingDType(std::string_view option, DType stored) {
  if (option == "auto") return stored == DType::kF16 ? DType::kF16 : DType::kBF16;
  if (option == "bfloat16" || option == "bf16") return DType::kBF16;
  if (option == "float16" || option == "fp16" || option == "half") return DType::kF16;
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype=", std::string(option), ": expected auto, bfloat16 or float16"));
}

int ServedMaxModelLen(const SchedulerOptions& scheduler, const ModelConfig& c) {
  int len = scheduler.max_model_len > 0 ? scheduler.max_model_len : c.max_position_embeddings;
  const bool window_applied = c.attention_window() > 0;
  if (c.sliding_window && !window_applied && *c.sliding_window < len) len = *c.sliding_window;
  return len;
}

absl::Status CheckTensorParallelPlacement(int world_size, BackendKind kind,
                                          const ModelConfig& config, int visible_gpus) {
  if (world_size == 1) return absl::OkStatus();
  const std::string flag = absl::StrCat("--tensor_parallel_size ", world_size);
  if (kind != BackendKind::kCuda) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": the CPU backend runs one rank (tensor parallelism needs the CUDA ",
                     "backend and as many GPUs)"));
  }
  if (absl::Status s = CheckTensorParallelSize(config, world_size); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--", s.message()));
  }
  if (world_size > visible_gpus) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": only ", visible_gpus, visible_gpus == 1 ? " GPU" : " GPUs", " visible"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const ServingOptions& o, BackendKind kind,
                                                       std::shared_ptr<const Checkpoint> ckpt) {
  const int world_size = o.backend.tensor_parallel_size;
  switch (kind) {
    case BackendKind::kCpu:
      RETURN_IF_ERROR(CheckTensorParallelPlacement(world_size, kind, ckpt->config(), 0));
      return CreateCpu(o, std::move(ckpt));
    case BackendKind::kCuda: {
#if GQA_WITH_CUDA
      if (world_size > 1) {
        ASSIGN_OR_RETURN(const int visible, CudaDeviceCount());
        RETURN_IF_ERROR(CheckTensorParallelPlacement(world_size, kind, ckpt->config(), visible));
      }
      CudaBackendOptions c;
      c.scheduler = o.scheduler;
      c.cache = o.cache;
      c.backend = o.backend;
      c.cuda = o.cuda;
      ASSIGN_OR_RETURN(c.dtype, ServingDType(o.backend.dtype, ckpt->config().dtype));
      ASSIGN_OR_RETURN(c.kv_cache_dtype, ParseKvCacheDType(o.cache.kv_cache_dtype, c.dtype));
      c.max_model_len = ServedMaxModelLen(o.scheduler, ckpt->config());
      if (world_size > 1 || o.cuda.tensor_parallel_runtime_at_one_rank) {
        return CreateTensorParallelBackend(c, std::move(ckpt));
      }
      return CreateCudaBackend(c, std::move(ckpt));
#else
      break;
#endif
    }
    case BackendKind::kAuto:
      break;
  }
  return absl::InvalidArgumentError("CreateBackend needs a resolved backend kind");
}

}  // namespace gqa
