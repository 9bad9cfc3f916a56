// Startup and shutdown of the whole server: load, build the engine, serve, drain on SIGTERM.
#pragma once

#include <cstdint>
#include <string>

#include "model/checkpoint.h"

namespace gqa {

struct ServerConfig {
  std::string model_dir;
  LoadFormat load_format = LoadFormat::kSafetensors;
  uint64_t dummy_seed = 0;
  std::string backend = "auto";         // auto, cpu, cuda
  std::string dtype = "auto";           // GPU: auto, bfloat16, float16
  std::string kv_cache_dtype = "auto";  // auto, bfloat16, float16, fp8_e4m3
  double gpu_memory_utilization = 0.9;
  bool enforce_eager = false;
  bool deterministic = false;
  std::string host = "0.0.0.0";
  int port = 50051;
  int metrics_port = 50052;
  std::string metrics_host;       // empty: `host`
  int http_port = 8000;           // OpenAI-compatible HTTP (0: off; -1 in tests: any)
  int http_connections = 256;     // HTTP connections served at once (beyond: 503)
  std::string served_model_name;  // /v1/models' id (empty: the model directory's name)
  std::string port_file;  // written once serving: "<grpc port> <metrics port> <http port or 0>"
  std::string tls_cert_file, tls_key_file;  // PEM; both or neither: TLS for gRPC
  std::string tls_client_ca_file;           // PEM; clients must present a certificate it signed
  std::string auth_token_file;              // calls must send "authorization: Bearer <token>"
  bool expose_model_path = false;           // GetModelInfo reports the model directory
  int max_waiting_requests = 1024;          // beyond: RESOURCE_EXHAUSTED (0: no limit)
  uint64_t max_request_bytes = 4 << 20;     // a request's size (compressed requests: refused)
  int max_streams_per_connection = 256;
  int block_size = 16;
  uint64_t kv_cache_bytes = 0;  // 0: the backend's default
  int num_kv_blocks = 0;        // overrides kv_cache_bytes when > 0
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
  bool enable_prefix_caching = true;
  int max_model_len = 0;  // 0: the model's max_position_embeddings
  int default_max_new_tokens = 256;
  int cpu_threads = 0;
  int drain_grace_seconds = 30;
  int step_profile_interval = 16;  // one step in this many timed on the device (0: none)
};

// Runs until SIGTERM or SIGINT; returns the process exit code. Startup failures print one line.
int RunServer(const ServerConfig& config);

}  // namespace gqa
