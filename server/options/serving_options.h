// The options tree: everything gqa-server is told, filled once from the flags
// (options/serving_flags.h) and validated once (ValidateServingOptions). Each component takes its
// part by const reference: the scheduler and cache parts the backend factory and the engine, the
// backend and CUDA parts the backends, the service part the front ends. A leaf: it knows no
// engine, backend or service type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gqa {

// The model served and how its weights are made.
struct ModelOptions {
  std::string dir;                   // --model: Hugging Face directory (config.json + safetensors)
  std::string load_format = "auto";  // auto or safetensors (the same), dummy (random weights)
  uint64_t dummy_seed = 0;
};

// What one engine step may hold, and the engine's queue.
struct SchedulerOptions {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  int max_model_len = 0;            // 0: the model's maximum (see ServedMaxModelLen)
  int max_waiting_requests = 1024;  // beyond: RESOURCE_EXHAUSTED (0: no limit)
};

// The paged KV cache: block shape, pool size, element type, prefix reuse.
struct CacheOptions {
  int block_size = 16;
  uint64_t kv_cache_bytes = 0;          // 0: the backend's default (1 GiB on the CPU; on a GPU what
                                        // gpu_memory_utilization leaves)
  int num_kv_blocks = 0;                // > 0: exactly this many blocks (overrides kv_cache_bytes)
  double gpu_memory_utilization = 0.9;  // share of the GPU for weights, activations and cache
  std::string kv_cache_dtype = "auto";  // auto (the compute dtype), bfloat16, float16, fp8_e4m3
  bool enable_prefix_caching = true;
};

enum class BackendKind { kAuto, kCpu, kCuda };

// "auto", "cpu", "cuda"; otherwise an error naming --backend and quoting `name`.
absl::StatusOr<BackendKind> ParseBackendKind(std::string_view name);
std::string_view BackendKindName(BackendKind kind);

// Whether the engine schedules step n+1 while step n runs (docs/step-protocol.md).
enum class AsyncScheduling { kAuto, kOn, kOff };  // auto: on for the CUDA backend only

// "auto", "on"/"true", "off"/"false"; otherwise an error naming --async_scheduling.
absl::StatusOr<AsyncScheduling> ParseAsyncScheduling(std::string_view value);

// Which backend computes, in what type, and what both backends honour.
struct BackendOptions {
  BackendKind kind = BackendKind::kAuto;  // auto: CUDA when a GPU is visible
  std::string dtype = "auto";      // GPU: auto (the checkpoint's 16-bit type), bfloat16, float16
  bool deterministic = false;      // GPU: a request's output does not depend on its batch
  int cpu_threads = 0;             // CPU backend threads (0: all cores)
  int step_profile_interval = 16;  // one step in this many timed on the device (0: never)
  AsyncScheduling async_scheduling = AsyncScheduling::kAuto;
  // GPUs the model is split across (docs/tensor-parallel.md): rank r on GPU r, one engine over
  // them. 1: the single-GPU backend. More needs the CUDA backend, a split the model's shape
  // allows (CheckTensorParallelSize) and that many visible GPUs, checked when the backend is made.
  int tensor_parallel_size = 1;
  // The engine's watchdog (engine/step_watchdog.h): a step call still running after this many
  // seconds is hung, and the server exits. -1: auto (StepTimeoutSeconds); 0: none.
  int step_timeout_seconds = -1;
};

// The watchdog's limit in seconds (0: none) over the backend named `backend_name`: auto is 120
// on the GPU (a step takes milliseconds to a few seconds there) and none on the CPU (a large
// model's prefill chunk may take minutes).
int StepTimeoutSeconds(const BackendOptions& backend, std::string_view backend_name);

// Whether the engine over the backend named `backend_name` ("cpu", "cuda") schedules ahead:
// auto is on for the GPU, whose steps run while the host works, and off for the CPU backend,
// which computes its step on the engine thread (nothing to overlap).
bool UsesAsyncScheduling(const BackendOptions& backend, std::string_view backend_name);

// Which attention kernels the CUDA backend runs. kAuto and kWarpgroup: the Hopper wgmma kernels
// (kernels/cuda/prefill_warpgroup*.cu, decode_warpgroup*.cu) wherever they apply (compute
// capability 9.0 and an sm_90a build; 16-bit caches; unsplit prefill keys; decode at head_dim 64
// or 128), the mma.sync kernels elsewhere: what measured faster on an H100 (kernels/BENCHMARKS.md
// steps 24-29). kAuto leaves the prefill choice to the kernels' own dispatch; kWarpgroup forces
// it. kMmaSync: the mma.sync kernels only (every GPU).
enum class AttentionKernels { kAuto, kMmaSync, kWarpgroup };

// "auto", "mma_sync" or "warpgroup"; otherwise an error naming --attention_kernels.
absl::StatusOr<AttentionKernels> ParseAttentionKernels(std::string_view value);

// The CUDA backend alone.
struct CudaOptions {
  int device_index = 0;
  bool enforce_eager = false;  // no CUDA graphs
  // Products of up to this many rows run our skinny GEMM kernel instead of cuBLAS (not in
  // deterministic mode, where every product goes through one cuBLAS algorithm per shape).
  int skinny_gemm_max_rows = 1;
  // Steps of up to skinny_gemm_max_rows tokens run each layer as five kernels plus attention:
  // the skinny products with the RMSNorms, the residual adds, RoPE and the KV append folded
  // into them (bitwise the unfused values); off: separate norm and RoPE/append kernels.
  bool skinny_fusion = true;
  // In those steps, launch the decode attention kernel with programmatic serialization after
  // the QKV product (its prologue overlaps the product's end).
  bool programmatic_attention = true;
  // Decode products of up to this many rows (at most 64) also time the tensor-core skinny
  // kernel against cuBLASLt's candidates at startup and run it where it is faster (not in
  // deterministic mode); 0: cuBLASLt only. Off: on an H200 it lost to cuBLASLt on every 1B
  // product (docs/BENCHMARKS.md, step 6).
  int tensor_core_gemm_max_rows = 0;
  // Steps of up to this many tokens (at most 64) run each layer's four products on the
  // tensor-core skinny kernel with the RMSNorms and SiLU folded into them, instead of separate
  // norm and SiLU kernels (not in deterministic mode); 0: never. Off: slower than the unfused
  // step on an H200 until the kernel itself is (docs/BENCHMARKS.md, step 6).
  int fused_norm_max_rows = 0;
  AttentionKernels attention_kernels = AttentionKernels::kAuto;
  // Tests only (no flag): with tensor_parallel_size 1, serve through the tensor-parallel runtime
  // anyway (TensorParallelBackend over one rank with a one-rank NCCL communicator), so that the
  // runtime can run on a machine of one GPU.
  bool tensor_parallel_runtime_at_one_rank = false;
};

// The front ends (gRPC, OpenAI-compatible HTTP, /metrics): ports, TLS, tokens, limits.
struct ServiceOptions {
  std::string host = "0.0.0.0";
  int port = 50051;
  int metrics_port = 50052;
  std::string metrics_host;       // empty: `host`
  int http_port = 8000;           // 0: off; -1: any free port
  int http_connections = 256;     // HTTP connections served at once (beyond: 503)
  std::string served_model_name;  // /v1/models' id (empty: the model directory's name)
  std::string port_file;  // written once serving: "<grpc port> <metrics port> <http port or 0>"
  std::string tls_cert_file, tls_key_file;  // PEM; both or neither: TLS
  std::string tls_client_ca_file;           // PEM; clients must present a certificate it signed
  std::string auth_token_file;              // calls must send "authorization: Bearer <token>"
  bool expose_model_path = false;           // GetModelInfo reports the model directory
  uint64_t max_request_bytes = 4 << 20;     // a request's size (compressed requests: refused)
  int max_streams_per_connection = 256;
  int default_max_new_tokens = 256;
  int drain_grace_seconds = 30;
};

struct ServingOptions {
  ModelOptions model;
  SchedulerOptions scheduler;
  CacheOptions cache;
  BackendOptions backend;
  CudaOptions cuda;
  ServiceOptions service;
};

// Every check of the options that needs no model or device, in one place: the first refusal,
// naming its flag (INVALID_ARGUMENT), or OK.
absl::Status ValidateServingOptions(const ServingOptions& options);

}  // namespace gqa
