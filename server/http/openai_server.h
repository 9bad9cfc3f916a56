// The OpenAI-compatible HTTP front end (--http_port): /v1/completions, /v1/chat/completions
// (JSON or SSE streams), /v1/models and /health, over the same engine as the gRPC service.
// cpp-httplib serves each connection on a worker thread; a request's engine events reach that
// thread through an Exchange (openai_server.cc), so the engine thread never blocks on a client.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "http/openai_request.h"
#include "metrics/engine_metrics.h"
#include "options/serving_options.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
struct Response;
}  // namespace httplib

namespace gqa::http {

// The model's chat template: the prompt text of `messages` (with the generation prompt when
// asked). Empty when the model has none: chat requests then get 400.
using ChatRenderer = std::function<absl::StatusOr<std::string>(
    const std::vector<ChatMessageParam>& messages, bool add_generation_prompt)>;

// What a loaded model gives the front end.
struct HttpServeInfo {
  const Tokenizer* tokenizer = nullptr;
  int default_max_new_tokens = 256;
  ChatRenderer chat;    // may be empty
  int64_t created = 0;  // unix seconds, /v1/models
};

class OpenAiHttpServer {
 public:
  // Serves on service.host:http_port (-1: any free port) with service's TLS files, limits
  // (max_request_bytes, http_connections); a non-empty auth_token is required as
  // "Authorization: Bearer <token>". `metrics` (may be null) counts refused requests.
  OpenAiHttpServer(const ServiceOptions& service, std::string auth_token,
                   std::string served_model_name, EngineMetrics* metrics);
  ~OpenAiHttpServer();

  // Binds and serves (503 for generation until Attach); returns the bound port.
  absl::StatusOr<int> Start();
  // Publishes the engine (which must outlive every request) and the model's tokenizer.
  void Attach(Engine* engine, HttpServeInfo info);
  // New generation requests get 503 from now on; /health answers 503.
  void StopAccepting() { accepting_.store(false); }
  // Waits until every generation request has finished writing, at most `timeout`.
  bool WaitForRequests(std::chrono::milliseconds timeout) const;
  void Stop();

  // Requests being served (for tests of cancellation).
  int open_requests() const { return open_requests_.load(); }

 private:
  // The routes and limits of `s`.
  void Register(httplib::Server& s);
  // One completion or chat request, submitted to the engine and answered in `res` (a JSON body
  // or an SSE stream); an error status when it is refused before anything was submitted.
  absl::Status Generate(Engine* engine, bool chat, uint64_t number, const std::string& body,
                        httplib::Response& res);

  ServiceOptions service_;
  std::string auth_token_;
  std::string served_model_name_;
  EngineMetrics* const metrics_;
  HttpServeInfo info_;                    // written once, before engine_ is published
  std::atomic<Engine*> engine_{nullptr};  // null while the model loads
  std::atomic<bool> accepting_{true};
  std::atomic<int> open_requests_{0};
  std::atomic<uint64_t> next_request_number_{1};
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace gqa::http
