#include "options/serving_flags.h"

#include "absl/flags/flag.h"
#include "common/byte_size.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, model, "", "Hugging Face model directory (config.json + safetensors)");
ABSL_FLAG(std::string, load_format, "auto",
          "auto (safetensors) or dummy (random weights from config.json alone)");
ABSL_FLAG(uint64_t, dummy_seed, 0, "seed of --load_format=dummy weights");
ABSL_FLAG(std::string, backend, "auto",
          "compute backend: auto (cuda when a GPU is visible and the build has CUDA), cpu, cuda");
ABSL_FLAG(std::string, dtype, "auto",
          "GPU weights and activations: auto (the checkpoint's 16-bit type; bfloat16 for F32 "
          "checkpoints), bfloat16, float16");
ABSL_FLAG(std::string, kv_cache_dtype, "auto",
          "how the KV cache stores K/V: auto (the compute dtype: fp32 on the CPU, --dtype on a "
          "GPU), bfloat16 or float16 (that dtype, named), fp8_e4m3 (1 byte per element with "
          "per-layer, per-KV-head scales: twice the tokens; GPUs of compute capability 8.9+)");
ABSL_FLAG(double, gpu_memory_utilization, 0.9,
          "share of the GPU's memory for weights, activations and the KV cache");
ABSL_FLAG(bool, enforce_eager, false, "GPU: launch every step's kernels, no CUDA graphs");
ABSL_FLAG(bool, deterministic, false,
          "GPU: a request's output does not depend on what is batched with it");
ABSL_FLAG(std::string, async_scheduling, "auto",
          "schedule and launch step n+1 while step n runs, its sampled tokens fed on the device "
          "(the host's commit, detokenization, stops and streaming overlap the GPU): auto (on "
          "for the CUDA backend, off for the CPU backend), on, off");
ABSL_FLAG(std::string, attention_kernels, "auto",
          "GPU: auto or warpgroup (Hopper wgmma kernels where they apply, mma.sync elsewhere), "
          "or mma_sync (the mma.sync kernels only, every GPU)");
ABSL_FLAG(int, step_timeout_seconds, -1,
          "a step the backend has not finished in this many seconds is hung: the server stops "
          "serving and exits (-1: 120 on a GPU, none on the CPU; 0: none)");
ABSL_FLAG(int, tensor_parallel_size, 1,
          "GPUs to split the model across (tensor parallelism, one process, rank r on GPU r, "
          "NCCL all-reduces): 1 (one GPU), or a number that divides the attention heads and the "
          "intermediate size and divides or is a multiple of the KV heads. Above 1 it has not "
          "yet run on a machine with several GPUs (docs/tensor-parallel.md)");
ABSL_FLAG(std::string, host, "0.0.0.0", "address to listen on (gRPC and metrics)");
ABSL_FLAG(int, port, 50051, "gRPC port (0 picks a free one)");
ABSL_FLAG(int, metrics_port, 50052, "HTTP port for /metrics and /healthz (0 picks a free one)");
ABSL_FLAG(int, http_port, 8000,
          "OpenAI-compatible HTTP port (/v1/completions, /v1/chat/completions, /v1/models, "
          "/health), with the same TLS and token as gRPC; 0: off; -1: a free one");
ABSL_FLAG(int, http_connections, 256,
          "HTTP connections served at once, each on its own thread for as long as it stays open "
          "(a stream holds one to its end); a connection beyond them gets 503 at once");
ABSL_FLAG(std::string, served_model_name, "",
          "the model's name in the HTTP API (/v1/models, the \"model\" field); default: the "
          "model directory's name");
ABSL_FLAG(std::string, metrics_host, "",
          "address for /metrics and /healthz (empty: --host), e.g. 127.0.0.1");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve gRPC over TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA: clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(std::string, auth_token_file, "",
          "file holding a token: Generation calls must send 'authorization: Bearer <token>' "
          "(health checks stay open)");
ABSL_FLAG(int, max_waiting_requests, 1024,
          "requests waiting to run beyond which Generate answers RESOURCE_EXHAUSTED (0: no limit)");
ABSL_FLAG(std::string, max_request_size, "4MiB",
          "largest request message (larger: RESOURCE_EXHAUSTED; an HTTP body: 413)");
ABSL_FLAG(int, max_streams_per_connection, 256, "concurrent calls on one client connection");
ABSL_FLAG(bool, expose_model_path, false, "GetModelInfo reports the model directory's path");
ABSL_FLAG(std::string, port_file, "",
          "write '<grpc port> <metrics port> <http port>' here once serving (http 0: off)");
ABSL_FLAG(int, block_size, 16, "tokens per KV cache block");
ABSL_FLAG(std::string, kv_cache_memory, "",
          "memory for the KV cache pool, e.g. 512MiB (default: 1GiB on the CPU; on a GPU what "
          "--gpu_memory_utilization leaves)");
ABSL_FLAG(int, num_kv_blocks, 0, "KV blocks in the pool (overrides --kv_cache_memory)");
ABSL_FLAG(int, max_num_seqs, 256, "most sequences in one engine step");
ABSL_FLAG(int, max_num_batched_tokens, 2048, "most tokens computed in one engine step");
ABSL_FLAG(bool, enable_prefix_caching, true,
          "reuse the KV blocks of prompt prefixes already computed (cached full blocks, evicted "
          "least recently used first)");
ABSL_FLAG(int, max_model_len, 0, "longest prompt + generation (0: the model's maximum)");
ABSL_FLAG(int, default_max_new_tokens, 256, "max_new_tokens when a request does not set it");
ABSL_FLAG(int, cpu_threads, 0, "threads of the CPU backend (0: all cores)");
ABSL_FLAG(int, drain_grace_seconds, 30, "on SIGTERM, how long running requests may finish");
ABSL_FLAG(int, step_profile_interval, 16,
          "time one engine step in this many on the device (attention and whole step, the "
          "gqa_step_device_seconds and gqa_step_attention_seconds metrics); 0: never");

namespace gqa {
namespace {

ModelOptions ModelFromFlags() {
  ModelOptions m;
  m.dir = absl::GetFlag(FLAGS_model);
  m.load_format = absl::GetFlag(FLAGS_load_format);
  m.dummy_seed = absl::GetFlag(FLAGS_dummy_seed);
  return m;
}

SchedulerOptions SchedulerFromFlags() {
  SchedulerOptions s;
  s.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  s.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  s.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  s.max_waiting_requests = absl::GetFlag(FLAGS_max_waiting_requests);
  return s;
}

absl::StatusOr<CacheOptions> CacheFromFlags() {
  CacheOptions c;
  c.block_size = absl::GetFlag(FLAGS_block_size);
  if (const std::string kv = absl::GetFlag(FLAGS_kv_cache_memory);
      !kv.empty() && !ParseByteSize(kv, &c.kv_cache_bytes)) {
    return absl::InvalidArgumentError("--kv_cache_memory: expected a size like 512MiB or 2GiB");
  }
  c.num_kv_blocks = absl::GetFlag(FLAGS_num_kv_blocks);
  c.gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
  c.kv_cache_dtype = absl::GetFlag(FLAGS_kv_cache_dtype);
  c.enable_prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching);
  return c;
}

absl::StatusOr<BackendOptions> BackendFromFlags() {
  BackendOptions b;
  ASSIGN_OR_RETURN(b.kind, ParseBackendKind(absl::GetFlag(FLAGS_backend)));
  b.dtype = absl::GetFlag(FLAGS_dtype);
  b.deterministic = absl::GetFlag(FLAGS_deterministic);
  b.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  b.step_profile_interval = absl::GetFlag(FLAGS_step_profile_interval);
  ASSIGN_OR_RETURN(b.async_scheduling, ParseAsyncScheduling(absl::GetFlag(FLAGS_async_scheduling)));
  b.tensor_parallel_size = absl::GetFlag(FLAGS_tensor_parallel_size);
  b.step_timeout_seconds = absl::GetFlag(FLAGS_step_timeout_seconds);
  return b;
}

absl::StatusOr<CudaOptions> CudaFromFlags() {
  CudaOptions c;
  c.enforce_eager = absl::GetFlag(FLAGS_enforce_eager);
  ASSIGN_OR_RETURN(c.attention_kernels,
                   ParseAttentionKernels(absl::GetFlag(FLAGS_attention_kernels)));
  return c;
}

absl::StatusOr<ServiceOptions> ServiceFromFlags() {
  ServiceOptions s;
  s.host = absl::GetFlag(FLAGS_host);
  s.port = absl::GetFlag(FLAGS_port);
  s.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  s.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  s.http_port = absl::GetFlag(FLAGS_http_port);
  s.http_connections = absl::GetFlag(FLAGS_http_connections);
  s.served_model_name = absl::GetFlag(FLAGS_served_model_name);
  s.port_file = absl::GetFlag(FLAGS_port_file);
  s.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  s.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  s.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  s.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  s.expose_model_path = absl::GetFlag(FLAGS_expose_model_path);
  if (!ParseByteSize(absl::GetFlag(FLAGS_max_request_size), &s.max_request_bytes)) {
    return absl::InvalidArgumentError("--max_request_size: expected a size from 1KiB to 1GiB");
  }
  s.max_streams_per_connection = absl::GetFlag(FLAGS_max_streams_per_connection);
  s.default_max_new_tokens = absl::GetFlag(FLAGS_default_max_new_tokens);
  s.drain_grace_seconds = absl::GetFlag(FLAGS_drain_grace_seconds);
  return s;
}

}  // namespace

absl::StatusOr<ServingOptions> ServingOptionsFromFlags() {
  ServingOptions o;
  o.model = ModelFromFlags();
  o.scheduler = SchedulerFromFlags();
  ASSIGN_OR_RETURN(o.cache, CacheFromFlags());
  ASSIGN_OR_RETURN(o.backend, BackendFromFlags());
  ASSIGN_OR_RETURN(o.cuda, CudaFromFlags());
  ASSIGN_OR_RETURN(o.service, ServiceFromFlags());
  return o;
}

}  // namespace gqa
