#include "server.h"

#include <signal.h>

#include <cctype>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "backend/factory.h"
#include "backend/roofline.h"
#include "chat_template/chat_template.h"
#include "common/status_macros.h"
#include "common/text_file.h"
#include "engine/engine.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "http/openai_server.h"
#include "metrics/engine_metrics.h"
#include "metrics/http_server.h"
#include "metrics/process_metrics.h"
#include "service/generation_service.h"
#include "service/health_service.h"
#include "service/reflection_v1.h"
#include "spdlog/spdlog.h"
#include "tokenizer/tokenizer.h"

namespace gqa {
namespace {

int Fail(const std::string& message) {
  spdlog::error("startup failed: {}", message);
  return 1;
}

// The root of the prefix cache's hash chains: everything the served K/V depend on besides the
// tokens (one model per process today; a LoRA adapter would enter here).
uint64_t PrefixCacheSalt(const ModelOptions& mo, const ModelConfig& c, const Backend& b) {
  return std::hash<std::string>{}(absl::StrCat(mo.dir, "|", c.architecture_name, "|",
                                               std::string(b.kv_spec().cache_dtype_name()), "|",
                                               mo.dummy_seed));
}

void LogLoaded(const ServingOptions& so, const ModelConfig& c, const Backend& backend,
               int max_model_len, int grpc_port, int metrics_port) {
  const KvCacheSpec& kv = backend.kv_spec();
  const uint64_t capacity = kv.token_capacity();
  const uint64_t blocks_per_seq = (max_model_len + kv.block_size - 1) / kv.block_size;
  // Tensor parallelism: each rank's pool holds only its KV heads, so the MiB are one rank's.
  const int ranks = so.backend.tensor_parallel_size;
  const std::string per_rank =
      ranks > 1 ? absl::StrCat(" on each of ", ranks, " ranks, ", kv.num_kv_heads, " kv heads each")
                : "";
  spdlog::info(
      "serving {} ({}): {} layers, {} heads, {} kv heads (group {}), head_dim {}, {}; "
      "kv cache {} blocks x {} tokens = {} tokens ({:.1f} MiB {}{}, {} max-length sequences of "
      "{}); "
      "prefix caching {}; async scheduling {}; backend {} on {}; grpc :{}, metrics :{}",
      so.model.dir, c.architecture_name, c.num_layers, c.num_heads, c.num_kv_heads, c.group_size(),
      c.head_dim, DTypeTorchName(c.dtype), kv.num_blocks, kv.block_size, capacity,
      kv.total_bytes() / 1048576.0, kv.cache_dtype_name(), per_rank, kv.num_blocks / blocks_per_seq,
      max_model_len, so.cache.enable_prefix_caching ? "on" : "off",
      UsesAsyncScheduling(so.backend, backend.name()) ? "on" : "off", backend.name(),
      backend.device_name(), grpc_port, metrics_port);
  if (kv.cache_dtype != KvCacheDType::kCompute) {
    const KvCacheSpec as_compute = [&] {
      KvCacheSpec s = kv;
      s.cache_dtype = KvCacheDType::kCompute;
      return s;
    }();
    spdlog::info(
        "kv cache dtype {}: {} byte per K/V element, {}x the tokens a {} cache holds in the same "
        "memory ({} tokens instead of {})",
        kv.cache_dtype_name(), kv.element_bytes(),
        as_compute.bytes_per_block() / kv.bytes_per_block(), DTypeTorchName(kv.dtype), capacity,
        kv.total_bytes() / as_compute.bytes_per_block() * kv.block_size);
  }
  for (const auto& [kind, bytes] : backend.memory_by_kind()) {
    spdlog::info("gpu memory: {} {:.1f} MiB", kind, bytes / 1048576.0);
  }
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

// Plaintext, TLS (--tls_cert, --tls_key) or mutual TLS (and --tls_client_ca).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServiceOptions& sc) {
  // Validated: --tls_cert and --tls_key together, --tls_client_ca only with them.
  if (sc.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      sc.tls_client_ca_file.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                    : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.private_key, ReadTextFile(sc.tls_key_file));
  ASSIGN_OR_RETURN(pair.cert_chain, ReadTextFile(sc.tls_cert_file));
  for (const auto& [file, text] : {std::pair{sc.tls_key_file, pair.private_key},
                                   std::pair{sc.tls_cert_file, pair.cert_chain}}) {
    if (text.find("-----BEGIN ") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": not a PEM file"));
    }
  }
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!sc.tls_client_ca_file.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadTextFile(sc.tls_client_ca_file));
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<BearerToken> AuthToken(const ServiceOptions& sc) {
  if (sc.auth_token_file.empty()) return BearerToken();
  ASSIGN_OR_RETURN(std::string token, ReadTextFile(sc.auth_token_file, 4096));
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
    token.pop_back();
  }
  if (token.empty() || token.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(sc.auth_token_file, ": the token must be one non-empty word"));
  }
  return BearerToken(std::move(token));
}

// The model's name in the HTTP API: --served_model_name, or the model directory's last part.
std::string ServedModelName(const ServingOptions& so) {
  if (!so.service.served_model_name.empty()) return so.service.served_model_name;
  std::filesystem::path dir(so.model.dir);
  if (!dir.has_filename()) dir = dir.parent_path();  // "models/x/" -> "models/x"
  return dir.filename().string();
}

// The model, the engine and what the service needs, built after the ports are open.
struct LoadedModel {
  ModelConfig config;
  std::unique_ptr<Tokenizer> tokenizer;  // when the model directory has tokenizer.json
  std::unique_ptr<Engine> engine;
  // tokenizer_config.json's chat_template, when the model has one (prompt.messages needs it)
  std::optional<chat::LoadedChatTemplate> chat_template;
};

// The HTTP front end's chat renderer: the model's template, or none.
http::ChatRenderer ChatRendererOf(const std::optional<chat::LoadedChatTemplate>& loaded) {
  if (!loaded) return http::ChatRenderer();
  return [&loaded](const std::vector<http::ChatMessageParam>& messages,
                   bool add_generation_prompt) -> absl::StatusOr<std::string> {
    std::vector<chat::ChatMessage> converted;
    converted.reserve(messages.size());
    for (const auto& m : messages) converted.push_back({m.role, m.content});
    return loaded->Render(std::move(converted), add_generation_prompt);
  };
}

// The model's chat template, logged either way; a template we cannot render fails the startup.
absl::Status LoadChatTemplateInto(const ModelOptions& mo, LoadedModel& model) {
  absl::StatusOr<std::optional<chat::LoadedChatTemplate>> loaded = chat::LoadChatTemplate(mo.dir);
  if (!loaded.ok()) return loaded.status();
  model.chat_template = *std::move(loaded);
  if (!model.chat_template) {
    spdlog::info("no chat template in {}/tokenizer_config.json: prompt.messages is refused",
                 mo.dir);
  } else if (model.tokenizer == nullptr) {
    spdlog::warn("a chat template but no tokenizer.json: prompt.messages is refused");
  } else {
    spdlog::info("chat template: from {}/tokenizer_config.json (prompt.messages accepted)", mo.dir);
  }
  return absl::OkStatus();
}

// The engine's view of the tree: the scheduler part with the block size the backend's pool took,
// the model's limits and eos ids, and the roofline terms.
EngineConfig MakeEngineConfig(const ServingOptions& so, const LoadedModel& model, const Backend& b,
                              int max_model_len) {
  EngineConfig ec;
  ec.scheduler = {b.kv_spec().block_size,
                  so.scheduler.max_num_seqs,
                  so.scheduler.max_num_batched_tokens,
                  so.cache.enable_prefix_caching,
                  PrefixCacheSalt(so.model, model.config, b),
                  UsesAsyncScheduling(so.backend, b.name())};
  ec.limits = {model.config.vocab_size, max_model_len};
  ec.eos_token_ids.assign(model.config.eos_token_ids.begin(), model.config.eos_token_ids.end());
  ec.tokenizer = model.tokenizer.get();
  ec.max_waiting_requests = so.scheduler.max_waiting_requests;
  ec.cost = {b.weight_bytes_per_step(), KvBytesPerToken(b.kv_spec()),
             model.config.attention_window()};
  ec.step_profile_interval = so.backend.step_profile_interval;
  ec.step_timeout = std::chrono::seconds(StepTimeoutSeconds(so.backend, b.name()));
  return ec;
}

absl::StatusOr<LoadedModel> LoadModel(const ServingOptions& so, BackendKind kind,
                                      EngineMetrics& metrics, std::function<void()> on_broken) {
  const ModelOptions& mo = so.model;
  auto ckpt = Checkpoint::Load(
      mo.dir, mo.load_format == "dummy" ? LoadFormat::kDummy : LoadFormat::kSafetensors,
      mo.dummy_seed);
  if (!ckpt.ok()) return ckpt.status();
  LoadedModel model{(*ckpt)->config(), nullptr, nullptr, std::nullopt};
  if (std::filesystem::exists(std::filesystem::path(mo.dir) / "tokenizer.json")) {
    auto tokenizer = Tokenizer::Load(mo.dir);
    if (!tokenizer.ok()) return tokenizer.status();
    model.tokenizer = std::move(*tokenizer);
  }
  if (absl::Status chat = LoadChatTemplateInto(mo, model); !chat.ok()) return chat;
  const int max_model_len = ServedMaxModelLen(so.scheduler, model.config);
  const int asked = so.scheduler.max_model_len > 0 ? so.scheduler.max_model_len
                                                   : model.config.max_position_embeddings;
  if (max_model_len < asked) {
    spdlog::info("max_model_len capped at the sliding window, {} tokens", max_model_len);
  }
  auto backend = CreateBackend(so, kind, std::move(*ckpt));
  if (!backend.ok()) return backend.status();
  Backend& b = **backend;
  metrics.SetModelInfo(model.config, b.kv_spec(), std::string(b.name()), b.device_name(),
                       b.memory_by_kind(), b.tensor_parallel_size());
  // A metric never stops serving: without a bandwidth the roofline series stay empty.
  if (absl::StatusOr<double> bandwidth = b.MeasureReadBandwidth(); bandwidth.ok()) {
    metrics.SetDeviceBandwidth(*bandwidth);
    spdlog::info("memory bandwidth of {} (the roofline's): {:.1f} GB/s", b.device_name(),
                 *bandwidth / 1e9);
  } else {
    spdlog::warn("no memory bandwidth for the roofline metrics: {}", bandwidth.status().ToString());
  }
  EngineConfig engine_config = MakeEngineConfig(so, model, b, max_model_len);
  engine_config.on_backend_broken = std::move(on_broken);
  model.engine = std::make_unique<Engine>(engine_config, std::move(*backend), &metrics);
  return model;  // the CPU backend keeps the checkpoint: it reads the mapped weights in place
}

}  // namespace

int RunServer(const ServingOptions& so) {
  const ServiceOptions& sc = so.service;
  BlockSignals();
  std::string device;
  absl::StatusOr<BackendKind> kind = ResolveBackendKind(so.backend.kind, &device);
  if (!kind.ok()) return Fail(std::string(kind.status().message()));
  MetricsRegistry registry;
  EngineMetrics metrics(registry);
  AddProcessMetrics(registry);
  std::atomic<bool> serving{false};
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = Credentials(sc);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  absl::StatusOr<BearerToken> auth = AuthToken(sc);
  if (!auth.ok()) return Fail(std::string(auth.status().message()));
  MetricsHttpServer http(&registry, [&serving] { return serving.load(); });
  const std::string metrics_host = sc.metrics_host.empty() ? sc.host : sc.metrics_host;
  auto metrics_port = http.Start(metrics_host, sc.metrics_port);
  if (!metrics_port.ok()) return Fail(std::string(metrics_port.status().message()));

  // The OpenAI-compatible HTTP front end (--http_port): 503 until the model is loaded.
  std::unique_ptr<http::OpenAiHttpServer> openai;
  int http_port = 0;
  if (sc.http_port != 0) {
    openai = std::make_unique<http::OpenAiHttpServer>(so.service, auth->token(),
                                                      ServedModelName(so), &metrics);
    absl::StatusOr<int> bound = openai->Start();
    if (!bound.ok()) return Fail(std::string(bound.status().message()));
    http_port = *bound;
  }

  // Listen first, so that health checks see NOT_SERVING (not a refused connection) while the
  // model loads; Generate answers UNAVAILABLE until then.
  GenerationService service(*std::move(auth), &metrics);
  // Our own grpc.health.v1 (NOT_SERVING until the model is loaded): its Watch streams end when
  // draining starts, where gRPC's default service would hold them, and SIGTERM, until Shutdown's
  // deadline.
  HealthService health({"gqa.v1.Generation"});
  // Reflection in both versions (gRPC's plugin serves v1alpha, ours v1); both list and describe
  // every service the server registers, the health service included.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  AddReflectionV1(builder);
  // gRPC sets SO_REUSEPORT by default, which lets a second server bind the same port and take
  // half the clients: a port in use must stop startup instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Bounded per client: the request size, streams per connection, and idle or dead
  // connections closed (keepalive pings every 2 minutes).
  builder.SetMaxReceiveMessageSize(static_cast<int>(sc.max_request_bytes));
  // gRPC inflates a compressed message whole before it checks the size limit, so a small gzip
  // request could make the server allocate gigabytes: requests (prompts) travel uncompressed.
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, sc.max_streams_per_connection);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 120'000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 30 * 60'000);
  int grpc_port = 0;
  builder.AddListeningPort(absl::StrCat(sc.host, ":", sc.port), *credentials, &grpc_port);
  builder.RegisterService(&service);
  builder.RegisterService(&health);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || grpc_port == 0) {
    return Fail(absl::StrCat("cannot listen for gRPC on ", sc.host, ":", sc.port,
                             " (is another process using the port?)"));
  }
  spdlog::info("listening: grpc :{}, metrics :{}, http :{}; loading {} for the {} backend on {}",
               grpc_port, *metrics_port, http_port, so.model.dir, BackendKindName(*kind), device);

  // A device error that the GPU cannot recover from, or a step hung past --step_timeout_seconds:
  // stop answering and exit, so that an orchestrator restarts the process.
  auto on_broken = [&serving, &health] {
    serving.store(false);
    health.SetServing(false);
    spdlog::critical(
        "the backend cannot serve any more (an unrecoverable GPU error or a hung "
        "step): exiting");
    std::_Exit(3);
  };
  absl::StatusOr<LoadedModel> model = LoadModel(so, *kind, metrics, on_broken);
  if (!model.ok()) {
    server->Shutdown();
    return Fail(std::string(model.status().message()));
  }
  Engine& engine = *model->engine;
  engine.Start();
  const chat::LoadedChatTemplate* chat_template =
      model->chat_template && model->tokenizer ? &*model->chat_template : nullptr;
  service.Attach(&engine, {model->config, sc.expose_model_path ? so.model.dir : std::string(),
                           sc.default_max_new_tokens, model->tokenizer.get(), chat_template});
  if (openai) {
    openai->Attach(
        &engine, {model->tokenizer.get(), sc.default_max_new_tokens,
                  ChatRendererOf(model->chat_template), static_cast<int64_t>(std::time(nullptr))});
  }
  health.SetServing(true);
  serving.store(true);
  LogLoaded(so, model->config, engine.backend(), engine.config().limits.max_model_len, grpc_port,
            *metrics_port);
  if (!sc.port_file.empty()) {
    std::ofstream(sc.port_file) << grpc_port << " " << *metrics_port << " " << http_port << "\n";
  }

  const int signal = WaitForSignal();
  spdlog::info("{}: draining (grace {} s)", signal == SIGTERM ? "SIGTERM" : "SIGINT",
               sc.drain_grace_seconds);
  serving.store(false);
  health.Shutdown();  // NOT_SERVING to every watcher, then their streams end
  service.StopAccepting();
  if (openai) openai->StopAccepting();
  engine.Drain(std::chrono::seconds(sc.drain_grace_seconds));
  // The streams' last messages are written (5 s at most), then the server shuts down at once:
  // a Shutdown deadline would be waited out whenever a client keeps an idle connection open,
  // since gRPC closes connections only when the deadline passes.
  const bool flushed = service.WaitForStreams(std::chrono::seconds(5)) &&
                       (!openai || openai->WaitForRequests(std::chrono::seconds(5))) &&
                       health.WaitForWatches(std::chrono::seconds(1));
  if (!flushed) spdlog::warn("drain: streams still open after 5 s; cancelling them");
  server->Shutdown(std::chrono::system_clock::now());
  if (openai) openai->Stop();
  http.Stop();
  spdlog::info("stopped");
  return 0;
}

}  // namespace gqa
