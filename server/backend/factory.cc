#include "backend/factory.h"

#include "absl/strings/str_cat.h"
#include "backend/cpu/cpu_backend.h"
#include "gqa/kernels/cpu_ops.h"
#include "spdlog/spdlog.h"
#if GQA_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace gqa {
namespace {

constexpr uint64_t kDefaultCpuKvBytes = 1ull << 30;

absl::StatusOr<std::unique_ptr<Backend>> CreateCpu(const BackendOptions& o,
                                                   std::shared_ptr<const Checkpoint> ckpt) {
  kernels::cpu::SetNumThreads(o.cpu_threads);
  const ModelConfig& c = ckpt->config();
  // The CPU backend computes in fp32 and keeps its cache in fp32 or FP8.
  absl::StatusOr<KvCacheDType> cache_dtype = ParseKvCacheDType(o.kv_cache_dtype, DType::kF32);
  if (!cache_dtype.ok()) return cache_dtype.status();
  const KvCacheSpec probe{o.block_size, 0,           c.num_kv_heads, c.head_dim,
                          c.num_layers, DType::kF32, *cache_dtype};
  const uint64_t bytes = o.kv_cache_bytes > 0 ? o.kv_cache_bytes : kDefaultCpuKvBytes;
  const int blocks =
      o.num_kv_blocks > 0
          ? o.num_kv_blocks
          : static_cast<int>(std::min<uint64_t>(bytes / probe.bytes_per_block(), 1u << 30));
  if (blocks < 1) return absl::InvalidArgumentError("--kv_cache_memory holds not even one block");
  auto backend = CpuBackend::Create(std::move(ckpt), o.block_size, blocks, *cache_dtype,
                                    o.max_num_seqs, o.max_model_len);
  if (!backend.ok()) return backend.status();
  return std::unique_ptr<Backend>(std::move(*backend));
}

}  // namespace

absl::StatusOr<BackendKind> ParseBackendKind(std::string_view name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("--backend=", std::string(name), ": expected auto, cpu or cuda"));
}

std::string_view BackendKindName(BackendKind kind) {
  switch (kind) {
    case BackendKind::kAuto:
      return "auto";
    case BackendKind::kCpu:
      return "cpu";
    case BackendKind::kCuda:
      return "cuda";
  }
  return "auto";
}

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

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& o,
                                                       std::shared_ptr<const Checkpoint> ckpt) {
  if (o.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--block_size=", o.block_size, ": must be positive"));
  }
  switch (o.kind) {
    case BackendKind::kCpu:
      return CreateCpu(o, std::move(ckpt));
    case BackendKind::kCuda: {
#if GQA_WITH_CUDA
      auto dtype = ServingDType(o.dtype, ckpt->config().dtype);
      if (!dtype.ok()) return dtype.status();
      CudaBackendOptions c;
      c.dtype = *dtype;
      auto cache_dtype = ParseKvCacheDType(o.kv_cache_dtype, *dtype);
      if (!cache_dtype.ok()) return cache_dtype.status();
      c.kv_cache_dtype = *cache_dtype;
      c.block_size = o.block_size;
      c.kv_cache_bytes = o.kv_cache_bytes;
      c.num_kv_blocks = o.num_kv_blocks;
      c.gpu_memory_utilization = o.gpu_memory_utilization;
      c.max_num_seqs = o.max_num_seqs;
      c.max_num_batched_tokens = o.max_num_batched_tokens;
      c.max_model_len = o.max_model_len;
      c.enforce_eager = o.enforce_eager;
      c.step_profiling = o.step_profiling;
      c.deterministic = o.deterministic;
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
