#include "http/openai_server.h"

#include <sys/socket.h>

#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "http/openai_format.h"
#include "httplib.h"
#include "net/bounded_http_server.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace gqa::http {
namespace {

using nlohmann::json;
constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// Compares in time that depends only on the lengths, not on where the bytes differ.
bool SameBytes(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  uint8_t difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= uint8_t(a[i]) ^ uint8_t(b[i]);
  return difference == 0;
}

uint64_t RandomNumber() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lock(mu);
  return rng();
}

void SendJson(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(Dump(body), "application/json");
}

void SendError(httplib::Response& res, const absl::Status& status) {
  const int http_status = HttpStatusOf(status.code());
  SendJson(res, http_status, ErrorBody(http_status, status.message()));
}

// One HTTP generation request: its engine requests (one per choice) and the events they send,
// handed from the engine's delivery thread (Push) to the connection's worker thread (Take).
class Exchange {
 public:
  Exchange(Engine* engine, int choices, std::atomic<int>* open)
      : engine_(engine), choices_(choices), open_(open) {
    open_->fetch_add(1);
  }
  ~Exchange() { open_->fetch_sub(1); }

  // The sink of choice `index`; it keeps the exchange alive while the engine holds it.
  static EventSink SinkFor(const std::shared_ptr<Exchange>& self, int index) {
    return [self, index](TokenEvent event) { self->Push(index, std::move(event)); };
  }

  void Submitted(uint64_t engine_id) {
    std::lock_guard lock(mu_);
    engine_ids_.push_back(engine_id);
  }

  // The choices that were never submitted (a refused Submit) count as finished.
  void Abandon(int unsubmitted) {
    std::lock_guard lock(mu_);
    finished_ += unsubmitted;
    cv_.notify_all();
  }

  // Waits up to `timeout` for events; moves them into `out`. True once every choice has finished
  // and every event was taken.
  bool Take(std::vector<Delta>* out, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, timeout, [this] { return !deltas_.empty() || finished_ >= choices_; });
    while (!deltas_.empty()) {
      out->push_back(std::move(deltas_.front()));
      deltas_.pop_front();
    }
    return finished_ >= choices_;
  }

  // Cancels every engine request of this exchange (the client went away); the engine frees their
  // blocks at its next step. Requests already finished are ignored by the engine.
  void CancelAll() {
    std::vector<uint64_t> ids;
    {
      std::lock_guard lock(mu_);
      ids = engine_ids_;
    }
    for (uint64_t id : ids) engine_->Cancel(id);
  }

 private:
  // The engine's delivery thread: never blocks beyond the lock.
  void Push(int index, TokenEvent event) {
    std::lock_guard lock(mu_);
    const bool last = event.finish.has_value() || !event.error.ok();
    deltas_.push_back(Delta{index, std::move(event)});
    if (last) ++finished_;
    cv_.notify_all();
  }

  Engine* const engine_;
  const int choices_;
  std::atomic<int>* const open_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Delta> deltas_;          // guarded by mu_
  int finished_ = 0;                  // guarded by mu_
  std::vector<uint64_t> engine_ids_;  // guarded by mu_
};

// What a stream writer keeps between calls of httplib's content provider.
struct StreamState {
  std::shared_ptr<Exchange> exchange;
  std::unique_ptr<ResponseBuilder> builder;
  bool started = false;
};

bool WriteSse(httplib::DataSink& sink, const json& event) {
  const std::string text = absl::StrCat("data: ", Dump(event), "\n\n");
  return sink.write(text.data(), text.size());
}

// One call of the content provider: the events that arrived since the last (at most 100 ms of
// waiting), then, once every choice has finished, usage and [DONE]. False: the client is gone.
bool WriteStreamStep(StreamState& state, httplib::DataSink& sink) {
  if (!state.started) {
    state.started = true;
    for (const json& event : state.builder->StreamStart()) {
      if (!WriteSse(sink, event)) return false;
    }
  }
  std::vector<Delta> deltas;
  const bool done = state.exchange->Take(&deltas, std::chrono::milliseconds(100));
  for (Delta& delta : deltas) {
    std::optional<json> event = state.builder->StreamEvent(delta);
    if (event && !WriteSse(sink, *event)) return false;
  }
  if (!done) return true;
  for (const json& event : state.builder->StreamEnd()) {
    if (!WriteSse(sink, event)) return false;
  }
  if (!sink.write(kSseDone.data(), kSseDone.size())) return false;
  sink.done();
  return true;
}

// How often a non-streaming request looks whether its client is still there.
constexpr std::chrono::milliseconds kPeerCheckInterval(100);

// Waits for every choice and answers with one JSON body. A client that closes its connection
// meanwhile cancels the request (the engine frees its blocks at its next step); nothing is sent.
void Respond(Exchange& exchange, ResponseBuilder& builder, httplib::Response& res) {
  std::vector<Delta> deltas;
  bool done = false;
  while (!done) {
    done = exchange.Take(&deltas, kPeerCheckInterval);
    for (Delta& delta : deltas) builder.Add(delta);
    deltas.clear();
    if (!done && net::PeerClosed()) {
      exchange.CancelAll();
      res.status = 499;  // nginx's "client closed request"; the write fails anyway
      res.set_header("Connection", "close");
      return;
    }
  }
  if (!builder.error().ok()) return SendError(res, builder.error());
  SendJson(res, 200, builder.Body());
}

}  // namespace

OpenAiHttpServer::OpenAiHttpServer(const ServiceOptions& service, std::string auth_token,
                                   std::string served_model_name, EngineMetrics* metrics)
    : service_(service),
      auth_token_(std::move(auth_token)),
      served_model_name_(std::move(served_model_name)),
      metrics_(metrics) {}

OpenAiHttpServer::~OpenAiHttpServer() { Stop(); }

void OpenAiHttpServer::Attach(Engine* engine, HttpServeInfo info) {
  info_ = std::move(info);
  engine_.store(engine, std::memory_order_release);
}

bool OpenAiHttpServer::WaitForRequests(std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (open_requests_.load() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

absl::StatusOr<int> OpenAiHttpServer::Start() {
  if (service_.tls_cert_file.empty() != service_.tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  // Each request's headers capped at net::kMaxHeaderBlockBytes (431); a connection that finds
  // every worker busy gets 503 at once.
  net::ConnectionOptions connections;
  connections.workers = static_cast<size_t>(service_.http_connections);
  connections.refuse_when_busy = true;
  connections.refusal.format = [](int status, absl::string_view message) {
    return Dump(ErrorBody(status, message));
  };
  const std::string& host = service_.host;
  const int port = service_.http_port < 0 ? 0 : service_.http_port;
  int bound = -1;
  if (service_.tls_cert_file.empty()) {
    auto plain = std::make_unique<net::BoundedServer>(std::move(connections));
    Register(*plain);
    bound = plain->BindAndListen(host, port);
    server_ = std::move(plain);
  } else {
    auto tls = std::make_unique<net::BoundedSslServer>(
        std::move(connections), service_.tls_cert_file.c_str(), service_.tls_key_file.c_str(),
        service_.tls_client_ca_file.empty() ? nullptr : service_.tls_client_ca_file.c_str());
    if (!tls->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("HTTP: cannot use --tls_cert ", service_.tls_cert_file, " and --tls_key ",
                       service_.tls_key_file, " (not a PEM certificate and its key?)"));
    }
    Register(*tls);
    bound = tls->BindAndListen(host, port);
    server_ = std::move(tls);
  }
  if (bound < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", host, ":", port,
                                               " (is another process using the port? "
                                               "--http_port picks another, 0 turns HTTP off)"));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void OpenAiHttpServer::Stop() {
  if (thread_.joinable()) {
    server_->stop();
    thread_.join();
  }
}

void OpenAiHttpServer::Register(httplib::Server& s) {
  // Bounded per client: the body, slow or idle connections, and the worker threads.
  s.set_payload_max_length(service_.max_request_bytes);
  s.set_read_timeout(10, 0);
  s.set_write_timeout(10, 0);
  s.set_keep_alive_timeout(5);
  s.set_keep_alive_max_count(1000);
  s.set_tcp_nodelay(true);  // an SSE chunk leaves at once, not after the previous one's ACK
  s.set_socket_options([](int sock) {  // SO_REUSEADDR only: no second server on the port
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });

  // Before any body is read: the token, and bodies whose size the Content-Length does not bound
  // (chunked or compressed uploads).
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.path != "/health" && !auth_token_.empty()) {
      const std::string header = req.get_header_value("Authorization");
      constexpr std::string_view kScheme = "Bearer ";
      if (!(header.size() > kScheme.size() && header.compare(0, kScheme.size(), kScheme) == 0 &&
            SameBytes(std::string_view(header).substr(kScheme.size()), auth_token_))) {
        if (metrics_ != nullptr) metrics_->RequestsRejected("unauthenticated")->Inc();
        SendError(res, absl::UnauthenticatedError(
                           "authorization: send the header \"Authorization: Bearer <token>\" with "
                           "the server's token (--auth_token_file)"));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (req.has_header("Content-Encoding") &&
        req.get_header_value("Content-Encoding") != "identity") {
      SendJson(res, 415,
               ErrorBody(415, "Content-Encoding: compressed request bodies are not accepted"));
      return httplib::Server::HandlerResponse::Handled;
    }
    // A body over the limit is refused from its Content-Length, before a byte of it is read;
    // the connection closes (the unread body must not be taken for the next request).
    if (const std::string length = req.get_header_value("Content-Length"); !length.empty()) {
      char* end = nullptr;
      const unsigned long long bytes = std::strtoull(length.c_str(), &end, 10);
      if (end == length.c_str() || *end != '\0' || bytes > service_.max_request_bytes) {
        res.set_header("Connection", "close");
        SendJson(res, 413,
                 ErrorBody(413, absl::StrCat("body: Content-Length ", length.substr(0, 32),
                                             " is over the limit of ", service_.max_request_bytes,
                                             " bytes (--max_request_size)")));
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (req.has_header("Transfer-Encoding")) {
      res.set_header("Connection", "close");
      SendJson(res, 411, ErrorBody(411, "Transfer-Encoding: send the body with a Content-Length"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's own refusals (413 for a large body, 404 for an unknown path, 400 for a malformed
  // request) get OpenAI's error object.
  s.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                  httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    if (res.status == 413) {
      message = absl::StrCat("body: larger than ", service_.max_request_bytes,
                             " bytes (--max_request_size)");
    } else if (res.status == 404) {
      message = absl::StrCat("path: no endpoint ", req.method, " ", req.path.substr(0, 128),
                             " (POST /v1/completions, POST /v1/chat/completions, GET /v1/models, "
                             "GET /health)");
    } else {
      message = absl::StrCat("request: refused with HTTP status ", res.status);
    }
    SendJson(res, res.status, ErrorBody(res.status, message));
    return httplib::Server::HandlerResponse::Handled;
  }));

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool serving = engine_.load(std::memory_order_acquire) != nullptr && accepting_.load();
    res.status = serving ? 200 : 503;
    res.set_content(serving ? "ok\n" : "not serving\n", "text/plain");
  });
  auto model_object = [this] {
    const Engine* engine = engine_.load(std::memory_order_acquire);
    return json{{"id", served_model_name_},
                {"object", "model"},
                {"created", info_.created},
                {"owned_by", "gqa-serve"},
                {"max_model_len", engine ? engine->config().limits.max_model_len : 0}};
  };
  s.Get("/v1/models", [this, model_object](const httplib::Request&, httplib::Response& res) {
    if (engine_.load(std::memory_order_acquire) == nullptr) {
      return SendError(res, absl::UnavailableError("model: still loading; retry shortly"));
    }
    SendJson(res, 200, json{{"object", "list"}, {"data", json::array({model_object()})}});
  });
  s.Get(R"(/v1/models/(.+))", [this, model_object](const httplib::Request& req,
                                                   httplib::Response& res) {
    if (engine_.load(std::memory_order_acquire) == nullptr) {
      return SendError(res, absl::UnavailableError("model: still loading; retry shortly"));
    }
    if (req.matches[1] != served_model_name_) {
      json error = ErrorBody(404, absl::StrCat("model: \"", req.matches[1].str().substr(0, 128),
                                               "\" is not served here"));
      error["error"]["code"] = "model_not_found";
      return SendJson(res, 404, error);
    }
    SendJson(res, 200, model_object());
  });

  auto generate = [this](bool chat) {
    return [this, chat](const httplib::Request& req, httplib::Response& res) {
      const uint64_t number = next_request_number_.fetch_add(1);
      Engine* engine = engine_.load(std::memory_order_acquire);
      absl::Status refusal;
      if (engine == nullptr) {
        refusal = absl::UnavailableError("model: still loading; retry shortly");
      } else if (!accepting_.load()) {
        refusal = absl::UnavailableError("server: draining; retry elsewhere");
      }
      if (refusal.ok()) refusal = Generate(engine, chat, number, req.body, res);
      if (refusal.ok()) return;
      if (metrics_ != nullptr) {
        const absl::StatusCode code = refusal.code();
        metrics_
            ->RequestsRejected(code == absl::StatusCode::kResourceExhausted ? "overloaded"
                               : code == absl::StatusCode::kUnavailable     ? "unavailable"
                                                                            : "invalid_argument")
            ->Inc();
      }
      SendError(res, refusal);
    };
  };
  s.Post("/v1/completions", generate(false));
  s.Post("/v1/chat/completions", generate(true));

  // A known path asked with another method: 405.
  auto not_allowed = [](const char* allowed) {
    return [allowed](const httplib::Request& req, httplib::Response& res) {
      res.set_header("Allow", allowed);
      SendJson(res, 405,
               ErrorBody(405, absl::StrCat("method: ", req.method, " is not allowed on ", req.path,
                                           "; use ", allowed)));
    };
  };
  for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
    s.Get(path, not_allowed("POST"));
    s.Put(path, not_allowed("POST"));
    s.Delete(path, not_allowed("POST"));
    s.Patch(path, not_allowed("POST"));
  }
  for (const char* path : {"/v1/models", "/health"}) {
    s.Post(path, not_allowed("GET"));
    s.Put(path, not_allowed("GET"));
    s.Delete(path, not_allowed("GET"));
    s.Patch(path, not_allowed("GET"));
  }
}

absl::Status OpenAiHttpServer::Generate(Engine* engine, bool chat, uint64_t number,
                                        const std::string& body, httplib::Response& res) {
  const EngineDefaults defaults{info_.tokenizer, engine->config().limits,
                                info_.default_max_new_tokens};
  CommonParams params;
  std::vector<int32_t> prompt;
  std::unique_ptr<ResponseBuilder> builder;
  const std::string id =
      absl::StrCat(chat ? "chatcmpl-" : "cmpl-", number, "-", RandomNumber() % 100000000);
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  FormatContext context{id, served_model_name_, created, info_.tokenizer};
  int prompt_top_logprobs = -1;
  if (chat) {
    absl::StatusOr<ChatParams> parsed = ParseChatRequest(body, served_model_name_);
    if (!parsed.ok()) return parsed.status();
    if (!info_.chat || info_.tokenizer == nullptr) {
      return absl::InvalidArgumentError(
          "messages: this model has no chat template (tokenizer_config.json \"chat_template\"); "
          "use /v1/completions");
    }
    absl::StatusOr<std::string> text = info_.chat(parsed->messages, parsed->add_generation_prompt);
    if (!text.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("messages: ", text.status().message()));
    }
    prompt = info_.tokenizer->Encode(*text);  // the template writes the special tokens
    if (prompt.empty()) return absl::InvalidArgumentError("messages: the prompt is empty");
    params = std::move(parsed->common);
    builder = MakeChatBuilder(context, params);
  } else {
    absl::StatusOr<CompletionParams> parsed = ParseCompletionRequest(body, served_model_name_);
    if (!parsed.ok()) return parsed.status();
    absl::StatusOr<std::vector<int32_t>> ids = CompletionPromptIds(*parsed, defaults);
    if (!ids.ok()) return ids.status();
    prompt = *std::move(ids);
    std::string echo_text;
    if (parsed->echo) {
      if (const auto* text = std::get_if<std::string>(&parsed->prompt)) {
        echo_text = *text;
      } else if (info_.tokenizer != nullptr) {
        echo_text = info_.tokenizer->Decode(prompt);
      }
      if (parsed->common.top_logprobs >= 0) prompt_top_logprobs = parsed->common.top_logprobs;
    }
    params = std::move(parsed->common);
    builder = MakeCompletionBuilder(context, params, parsed->echo, std::move(echo_text));
  }
  if (params.top_logprobs >= 0 && !kLogprobsSupported) {
    return absl::InvalidArgumentError("logprobs: logprobs is not supported yet");
  }

  std::vector<Request> requests;
  const uint64_t seed = RandomNumber();
  for (int i = 0; i < params.n; ++i) {
    absl::StatusOr<Request> r =
        ToEngineRequest(params, prompt, defaults, params.n == 1 ? id : absl::StrCat(id, "-", i), i,
                        seed, chat ? "messages" : "prompt");
    if (!r.ok()) return r.status();
    r->logprobs.prompt_top_logprobs = prompt_top_logprobs;  // each streamed choice echoes them
    requests.push_back(*std::move(r));
  }
  auto exchange = std::make_shared<Exchange>(engine, params.n, &open_requests_);
  for (int i = 0; i < params.n; ++i) {
    requests[i].sink = Exchange::SinkFor(exchange, i);
    absl::StatusOr<uint64_t> engine_id = engine->Submit(std::move(requests[i]));
    if (!engine_id.ok()) {
      exchange->Abandon(params.n - i);
      exchange->CancelAll();
      return engine_id.status();
    }
    exchange->Submitted(*engine_id);
  }
  if (!params.stream) {
    Respond(*exchange, *builder, res);
    return absl::OkStatus();
  }
  auto state = std::make_shared<StreamState>();
  state->exchange = exchange;
  state->builder = std::move(builder);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [state](size_t, httplib::DataSink& sink) { return WriteStreamStep(*state, sink); },
      [exchange](bool success) {
        if (!success) exchange->CancelAll();  // the client went away (or the server stopped)
      });
  return absl::OkStatus();
}

}  // namespace gqa::http
