#include "server.h"

#include <signal.h>

#include <cctype>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "backend/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "gqa/kernels/cpu_ops.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/server_builder.h"
#include "metrics/engine_metrics.h"
#include "metrics/http_server.h"
#include "service/generation_service.h"
#include "spdlog/spdlog.h"
#include "tokenizer/tokenizer.h"

namespace gqa {
namespace {

int Fail(const std::string& message) {
  spdlog::error("startup failed: {}", message);
  return 1;
}

int MaxModelLen(const ServerConfig& sc, const ModelConfig& c) {
  int len = sc.max_model_len > 0 ? sc.max_model_len : c.max_position_embeddings;
  if (c.sliding_window && c.attention_window() == 0 && *c.sliding_window < len) {
    spdlog::info("max_model_len capped at the sliding window, {} tokens", *c.sliding_window);
    len = *c.sliding_window;
  }
  return len;
}

int NumKvBlocks(const ServerConfig& sc, const ModelConfig& c) {
  if (sc.num_kv_blocks > 0) return sc.num_kv_blocks;
  // The CPU backend keeps its cache in fp32.
  const KvCacheSpec probe{sc.block_size, 0, c.num_kv_heads, c.head_dim, c.num_layers, DType::kF32};
  return static_cast<int>(
      std::min<uint64_t>(sc.kv_cache_bytes / probe.bytes_per_block(), 1u << 30));
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const ServerConfig& sc,
                                                     std::shared_ptr<const Checkpoint> ckpt) {
  if (sc.backend != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend=", sc.backend, ": this build has only the cpu backend"));
  }
  kernels::cpu::SetNumThreads(sc.cpu_threads);
  const int blocks = NumKvBlocks(sc, ckpt->config());
  if (blocks < 1) return absl::InvalidArgumentError("--kv-cache-memory holds not even one block");
  auto backend = CpuBackend::Create(std::move(ckpt), sc.block_size, blocks);
  if (!backend.ok()) return backend.status();
  return std::unique_ptr<Backend>(std::move(*backend));
}

void LogLoaded(const ServerConfig& sc, const ModelConfig& c, const KvCacheSpec& kv,
               int max_model_len, int grpc_port, int metrics_port) {
  const uint64_t capacity = kv.token_capacity();
  const uint64_t blocks_per_seq = (max_model_len + kv.block_size - 1) / kv.block_size;
  spdlog::info(
      "serving {} ({}): {} layers, {} heads, {} kv heads (group {}), head_dim {}, {}; "
      "kv cache {} blocks x {} tokens = {} tokens ({:.1f} MiB, {} max-length sequences of {}); "
      "backend {}; grpc :{}, metrics :{}",
      sc.model_dir, c.architecture_name, c.num_layers, c.num_heads, c.num_kv_heads, c.group_size(),
      c.head_dim, DTypeTorchName(c.dtype), kv.num_blocks, kv.block_size, capacity,
      kv.total_bytes() / 1048576.0, kv.num_blocks / blocks_per_seq, max_model_len, sc.backend,
      grpc_port, metrics_port);
  if (capacity < static_cast<uint64_t>(max_model_len)) {
    spdlog::warn(
        "the KV cache holds fewer tokens ({}) than max_model_len ({}): longer requests "
        "are refused",
        capacity, max_model_len);
  }
}

int WaitForSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int signal = 0;
  sigwait(&set, &signal);
  return signal;
}

void BlockSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // inherited by every thread started after this
}

// The model, the engine and what the service needs, built after the ports are open.
struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;  // when the model directory has tokenizer.json
  std::unique_ptr<Engine> engine;
};

absl::StatusOr<LoadedModel> LoadModel(const ServerConfig& sc, EngineMetrics& metrics) {
  auto ckpt = Checkpoint::Load(sc.model_dir, sc.load_format, sc.dummy_seed);
  if (!ckpt.ok()) return ckpt.status();
  LoadedModel model{(*ckpt)->config(), nullptr, nullptr};
  if (std::filesystem::exists(std::filesystem::path(sc.model_dir) / "tokenizer.json")) {
    auto tokenizer = Tokenizer::Load(sc.model_dir);
    if (!tokenizer.ok()) return tokenizer.status();
    model.tokenizer = std::move(*tokenizer);
  }
  auto backend = MakeBackend(sc, std::move(*ckpt));
  if (!backend.ok()) return backend.status();
  metrics.SetModelInfo(model.config, (*backend)->kv_spec(), sc.backend);
  EngineConfig engine_config;
  engine_config.scheduler = {sc.block_size, sc.max_num_seqs, sc.max_num_batched_tokens};
  engine_config.limits = {model.config.vocab_size, MaxModelLen(sc, model.config)};
  engine_config.eos_token_ids.assign(model.config.eos_token_ids.begin(),
                                     model.config.eos_token_ids.end());
  engine_config.tokenizer = model.tokenizer.get();
  model.engine = std::make_unique<Engine>(engine_config, std::move(*backend), &metrics);
  return model;  // the backend keeps the checkpoint: it reads the mapped weights in place
}

}  // namespace

int RunServer(const ServerConfig& sc) {
  BlockSignals();
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  std::atomic<bool> serving{false};
  MetricsHttpServer http(&registry, [&serving] { return serving.load(); });
  auto metrics_port = http.Start(sc.host, sc.metrics_port);
  if (!metrics_port.ok()) return Fail(std::string(metrics_port.status().message()));

  // Listen first, so that health checks see NOT_SERVING (not a refused connection) while the
  // model loads; Generate answers UNAVAILABLE until then.
  GenerationService service;
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(absl::StrCat(sc.host, ":", sc.port), grpc::InsecureServerCredentials(),
                           &grpc_port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || grpc_port == 0) {
    return Fail(absl::StrCat("cannot listen for gRPC on ", sc.host, ":", sc.port));
  }
  server->GetHealthCheckService()->SetServingStatus(false);
  spdlog::info("listening: grpc :{}, metrics :{}; loading {}", grpc_port, *metrics_port,
               sc.model_dir);

  absl::StatusOr<LoadedModel> model = LoadModel(sc, metrics);
  if (!model.ok()) {
    server->Shutdown();
    return Fail(std::string(model.status().message()));
  }
  Engine& engine = *model->engine;
  engine.Start();
  service.Attach(&engine,
                 {model->config, sc.model_dir, sc.default_max_new_tokens, model->tokenizer.get()});
  server->GetHealthCheckService()->SetServingStatus(true);
  serving.store(true);
  LogLoaded(sc, model->config, engine.kv_spec(), engine.config().limits.max_model_len, grpc_port,
            *metrics_port);
  if (!sc.port_file.empty()) {
    std::ofstream(sc.port_file) << grpc_port << " " << *metrics_port << "\n";
  }

  const int signal = WaitForSignal();
  spdlog::info("{}: draining (grace {} s)", signal == SIGTERM ? "SIGTERM" : "SIGINT",
               sc.drain_grace_seconds);
  serving.store(false);
  server->GetHealthCheckService()->SetServingStatus(false);
  service.StopAccepting();
  engine.Drain(std::chrono::seconds(sc.drain_grace_seconds));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  http.Stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace gqa
