// gqa-server: flags -> ServerConfig -> RunServer.
#include <charconv>
#include <iostream>
#include <string_view>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/byte_size.h"
#include "common/dashed_flags.h"
#include "google/protobuf/stubs/logging.h"
#include "server.h"
#include "spdlog/spdlog.h"

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
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("gqa-server --model DIR [flags]: serve a Llama-family model");
  gqa::ShowProgramFlagsInHelp();
  gqa::AcceptDashedFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  spdlog::set_level(spdlog::level::from_str(absl::GetFlag(FLAGS_log_level)));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  // Protobuf reports every malformed client message on stderr; a client could flood the log.
  // The client gets INVALID_ARGUMENT; the log keeps it at debug level.
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string& message) {
        spdlog::debug("protobuf: {}", message);
      });

  gqa::ServerConfig config;
  config.model_dir = absl::GetFlag(FLAGS_model);
  const std::string format = absl::GetFlag(FLAGS_load_format);
  if (config.model_dir.empty()) {
    std::cerr << "gqa-server: --model DIR is required\n";
    return 2;
  }
  if (format != "auto" && format != "safetensors" && format != "dummy") {
    std::cerr << "gqa-server: --load_format must be auto or dummy\n";
    return 2;
  }
  config.load_format = format == "dummy" ? gqa::LoadFormat::kDummy : gqa::LoadFormat::kSafetensors;
  config.dummy_seed = absl::GetFlag(FLAGS_dummy_seed);
  config.backend = absl::GetFlag(FLAGS_backend);
  config.host = absl::GetFlag(FLAGS_host);
  config.port = absl::GetFlag(FLAGS_port);
  config.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  config.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  config.http_port = absl::GetFlag(FLAGS_http_port);
  config.served_model_name = absl::GetFlag(FLAGS_served_model_name);
  if (config.http_port < -1 || config.http_port > 65535) {
    std::cerr << "gqa-server: --http_port " << config.http_port
              << " must be a port, 0 (off) or -1 (any free port)\n";
    return 2;
  }
  config.http_connections = absl::GetFlag(FLAGS_http_connections);
  if (config.http_connections < 1 || config.http_connections > 65536) {
    std::cerr << "gqa-server: --http_connections " << config.http_connections
              << " must be from 1 to 65536\n";
    return 2;
  }
  config.port_file = absl::GetFlag(FLAGS_port_file);
  config.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  config.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  config.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  config.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  config.expose_model_path = absl::GetFlag(FLAGS_expose_model_path);
  config.max_waiting_requests = absl::GetFlag(FLAGS_max_waiting_requests);
  config.max_streams_per_connection = absl::GetFlag(FLAGS_max_streams_per_connection);
  if (!gqa::ParseByteSize(absl::GetFlag(FLAGS_max_request_size), &config.max_request_bytes) ||
      config.max_request_bytes < 1024 || config.max_request_bytes > (1u << 30)) {
    std::cerr << "gqa-server: --max_request_size: expected a size from 1KiB to 1GiB\n";
    return 2;
  }
  if (config.max_waiting_requests < 0 || config.max_streams_per_connection < 1) {
    std::cerr << "gqa-server: --max_waiting_requests must be >= 0 and "
                 "--max_streams_per_connection >= 1\n";
    return 2;
  }
  config.block_size = absl::GetFlag(FLAGS_block_size);
  config.dtype = absl::GetFlag(FLAGS_dtype);
  config.kv_cache_dtype = absl::GetFlag(FLAGS_kv_cache_dtype);
  config.gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
  config.enforce_eager = absl::GetFlag(FLAGS_enforce_eager);
  config.deterministic = absl::GetFlag(FLAGS_deterministic);
  if (!(config.gpu_memory_utilization > 0.0 && config.gpu_memory_utilization <= 1.0)) {
    char value[32];  // as given: the shortest text that reads back as the same double
    const auto end = std::to_chars(value, value + sizeof value, config.gpu_memory_utilization).ptr;
    std::cerr << "gqa-server: --gpu_memory_utilization " << std::string_view(value, end - value)
              << " must be in (0, 1]\n";
    return 2;
  }
  if (const std::string kv = absl::GetFlag(FLAGS_kv_cache_memory);
      !kv.empty() && !gqa::ParseByteSize(kv, &config.kv_cache_bytes)) {
    std::cerr << "gqa-server: --kv_cache_memory: expected a size like 512MiB or 2GiB\n";
    return 2;
  }
  config.num_kv_blocks = absl::GetFlag(FLAGS_num_kv_blocks);
  config.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  config.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  config.enable_prefix_caching = absl::GetFlag(FLAGS_enable_prefix_caching);
  config.max_model_len = absl::GetFlag(FLAGS_max_model_len);
  config.default_max_new_tokens = absl::GetFlag(FLAGS_default_max_new_tokens);
  config.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  config.drain_grace_seconds = absl::GetFlag(FLAGS_drain_grace_seconds);
  config.step_profile_interval = absl::GetFlag(FLAGS_step_profile_interval);
  if (config.step_profile_interval < 0) {
    std::cerr << "gqa-server: --step_profile_interval must be >= 0, got "
              << config.step_profile_interval << "\n";
    return 2;
  }
  if (config.block_size < 1 || config.max_num_seqs < 1 || config.max_num_batched_tokens < 1) {
    std::cerr << "gqa-server: --block_size, --max_num_seqs and --max_num_batched_tokens must be "
                 ">= 1\n";
    return 2;
  }
  return gqa::RunServer(config);
}
