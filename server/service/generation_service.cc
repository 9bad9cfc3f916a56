#include "service/generation_service.h"

#include <chrono>
#include <memory>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "service/request_conversion.h"
#include "service/status_conversion.h"

namespace gqa {
namespace {

namespace pb = gqa::v1;

pb::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return pb::FINISH_REASON_LENGTH;
    case FinishReason::kEos:
      return pb::FINISH_REASON_EOS;
    case FinishReason::kStopToken:
      return pb::FINISH_REASON_STOP_TOKEN;
    case FinishReason::kStopString:
      return pb::FINISH_REASON_STOP_STRING;
    case FinishReason::kCancelled:
      return pb::FINISH_REASON_CANCELLED;
  }
  return pb::FINISH_REASON_UNSPECIFIED;
}

// The service's methods take raw bytes and parse them here, so that a message that does not parse
// (truncated, or a string field that is not UTF-8) gets INVALID_ARGUMENT saying so rather than
// gRPC's UNIMPLEMENTED with no message.
template <typename Message>
grpc::Status ParseMessage(const grpc::ByteBuffer* bytes, Message* message) {
  grpc::ByteBuffer copy(*bytes);
  if (grpc::SerializationTraits<Message>::Deserialize(&copy, message).ok()) {
    return grpc::Status::OK;
  }
  return ToGrpcStatus(absl::InvalidArgumentError(
      absl::StrCat("request: not a valid ", Message::descriptor()->full_name(),
                   " (a truncated message, or a string field that is not UTF-8)")));
}

template <typename Message>
void SerializeMessage(const Message& message, grpc::ByteBuffer* bytes) {
  bytes->Clear();  // the serializer writes only into an empty buffer
  bool own_buffer;
  grpc::SerializationTraits<Message>::Serialize(message, bytes, &own_buffer);
}

// A unary call over raw bytes: the token, then parsing, then `handler`, then the reply.
template <typename Request, typename Response, typename Handler>
grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* context, const BearerToken& auth,
                                     const grpc::ByteBuffer* request_bytes,
                                     grpc::ByteBuffer* response_bytes, Handler handler) {
  Request request;
  Response response;
  grpc::Status status = auth.Check(*context);
  if (status.ok()) status = ParseMessage(request_bytes, &request);
  if (status.ok()) status = handler(request, &response);
  if (status.ok()) SerializeMessage(response, response_bytes);
  auto* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// Streams one request's events. Owned jointly by gRPC (until OnDone) and the engine's sink
// (until its final event is delivered), so neither side can outlive the other's use of it. State
// changes happen under mu_; the gRPC calls they decide on (StartWrite, Finish) happen after
// unlocking.
class GenerateReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                        public std::enable_shared_from_this<GenerateReactor> {
 public:
  // `open` counts the service's Generate calls gRPC has not yet finished with (until OnDone).
  GenerateReactor(Engine* engine, std::string request_id, std::atomic<int>* open)
      : engine_(engine), request_id_(std::move(request_id)), open_(open) {
    open_->fetch_add(1);
  }

  // Submits the request to the engine; when it refuses, the caller rejects the call.
  absl::Status Start(Request request) {
    self_ = shared_from_this();
    request.sink = [reactor = self_](TokenEvent event) { reactor->OnEvent(std::move(event)); };
    absl::StatusOr<uint64_t> id = engine_->Submit(std::move(request));
    if (!id.ok()) return id.status();
    bool cancel_now;
    {
      std::lock_guard lock(mu_);
      engine_id_ = *id;
      submitted_ = true;
      cancel_now = broken_;
    }
    if (cancel_now) engine_->Cancel(*id);
    return absl::OkStatus();
  }

  // Finishes the call at once with an error (bad input, draining).
  void Reject(const grpc::Status& status) {
    self_ = shared_from_this();
    {
      std::lock_guard lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    Finish(status);
  }

  void OnWriteDone(bool ok) override {
    Action action;
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (!ok) broken_ = true;
      action = NextAction();
    }
    if (!ok) CancelInEngine();
    Run(action);
  }

  void OnCancel() override {
    Action action;
    {
      std::lock_guard lock(mu_);
      broken_ = true;
      action = NextAction();
    }
    CancelInEngine();
    Run(action);
  }

  void OnDone() override {
    open_->fetch_sub(1);
    std::shared_ptr<GenerateReactor> last_ref;
    std::lock_guard lock(mu_);
    last_ref.swap(self_);  // released after the lock: the engine's sink may hold the last one
  }

 private:
  enum class Action { kNone, kWrite, kFinish };

  // The engine's delivery thread: merge the event into the pending message and write if the
  // stream is free.
  void OnEvent(TokenEvent event) {
    Action action;
    {
      std::lock_guard lock(mu_);
      for (int32_t t : event.new_tokens) pending_.add_token_ids(static_cast<uint32_t>(t));
      pending_.mutable_text()->append(event.text);
      AddLogprobsToProto(event.logprobs, pending_.mutable_logprobs());
      AddLogprobsToProto(event.prompt_logprobs, pending_.mutable_prompt_logprobs());
      if (!event.error.ok()) {
        final_status_ = ToGrpcStatus(event.error);
      } else if (event.finish) {
        SetFinal(event);
      }
      final_received_ = event.finish.has_value() || !event.error.ok();
      action = NextAction();
    }
    Run(action);
  }

  void SetFinal(const TokenEvent& event) {
    pending_.set_finish_reason(ToProto(*event.finish));
    pending_.set_matched_stop(static_cast<uint32_t>(event.matched_stop));
    auto* usage = pending_.mutable_usage();
    usage->set_prompt_tokens(event.prompt_tokens);
    usage->set_completion_tokens(event.completion_tokens);
    usage->set_preemptions(event.preemptions);
    usage->set_cached_prompt_tokens(event.cached_prompt_tokens);
    auto* timing = pending_.mutable_timing();
    timing->set_queue_seconds(event.queue_seconds);
    timing->set_time_to_first_token_seconds(event.time_to_first_token_seconds);
    timing->set_total_seconds(event.total_seconds);
    final_pending_ = true;
  }

  // Decides the next gRPC operation; called with mu_ held.
  Action NextAction() {
    if (writing_ || finished_) return Action::kNone;
    if (broken_) {
      final_status_ = ToGrpcStatus(absl::CancelledError("cancelled by the client"));
      finished_ = true;
      return Action::kFinish;
    }
    if (pending_.token_ids_size() > 0 || !pending_.text().empty() || final_pending_) {
      pending_.set_request_id(request_id_);
      SerializeMessage(pending_, &in_flight_);
      pending_.Clear();
      final_pending_ = false;
      writing_ = true;
      return Action::kWrite;
    }
    if (final_received_) {
      finished_ = true;
      return Action::kFinish;
    }
    return Action::kNone;
  }

  void Run(Action action) {
    if (action == Action::kWrite) StartWrite(&in_flight_);
    if (action == Action::kFinish) Finish(final_status_);
  }

  void CancelInEngine() {
    uint64_t id;
    {
      std::lock_guard lock(mu_);
      if (!submitted_) return;
      id = engine_id_;
    }
    engine_->Cancel(id);
  }

  Engine* engine_;
  const std::string request_id_;
  std::atomic<int>* const open_;
  std::shared_ptr<GenerateReactor> self_;  // released in OnDone

  std::mutex mu_;
  uint64_t engine_id_ = 0;
  bool submitted_ = false;
  bool broken_ = false;  // cancelled or a write failed: no more writes
  bool writing_ = false;
  bool final_received_ = false;
  bool final_pending_ = false;  // pending_ carries the final message
  bool finished_ = false;
  grpc::Status final_status_ = grpc::Status::OK;
  pb::GenerateResponse pending_;
  grpc::ByteBuffer in_flight_;  // pending_ serialized, while a write is under way
};

uint64_t RandomSeed() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard lock(mu);
  return rng();
}

}  // namespace

void GenerationService::Attach(Engine* engine, ServiceInfo info) {
  info_ = std::move(info);
  engine_.store(engine, std::memory_order_release);
}

bool GenerationService::WaitForStreams(std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (open_streams_.load() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* bytes) {
  next_request_number_.fetch_add(1);
  // A stream reset before its request was read (HTTP/2 rapid reset): gRPC calls here without a
  // message (no buffer at all, unlike an empty message); neither served nor counted as invalid.
  if (!bytes->Valid() || context->IsCancelled()) {
    auto reactor = std::make_shared<GenerateReactor>(nullptr, "", &open_streams_);
    reactor->Reject(grpc::Status(grpc::StatusCode::CANCELLED, "request: none arrived"));
    return reactor.get();
  }
  if (grpc::Status denied = auth_.Check(*context); !denied.ok()) {
    auto reactor = std::make_shared<GenerateReactor>(nullptr, "", &open_streams_);
    CountRejected(absl::StatusCode::kUnauthenticated);
    reactor->Reject(denied);
    return reactor.get();
  }
  pb::GenerateRequest parsed;
  if (grpc::Status malformed = ParseMessage(bytes, &parsed); !malformed.ok()) {
    auto reactor = std::make_shared<GenerateReactor>(nullptr, "", &open_streams_);
    CountRejected(absl::StatusCode::kInvalidArgument);
    reactor->Reject(malformed);
    return reactor.get();
  }
  const pb::GenerateRequest* proto = &parsed;
  Engine* engine = engine_.load(std::memory_order_acquire);
  absl::StatusOr<Request> request =
      engine ? RequestFromProto(
                   *proto,
                   {info_.tokenizer, engine->config().limits.max_model_len,
                    info_.default_max_new_tokens, info_.chat_template},
                   absl::StrCat("gen-", next_request_number_.load(), "-", RandomSeed() % 1000000),
                   RandomSeed())
             : absl::UnavailableError("the model is still loading; retry shortly");
  if (request.ok() && !accepting_.load()) {
    request = absl::UnavailableError("the server is draining; retry elsewhere");
  }
  auto reactor =
      std::make_shared<GenerateReactor>(engine, request.ok() ? request->id : "", &open_streams_);
  const absl::Status status = request.ok() ? reactor->Start(*std::move(request)) : request.status();
  if (!status.ok()) {
    CountRejected(status.code());
    reactor->Reject(ToGrpcStatus(status));
  }
  return reactor.get();
}

void GenerationService::CountRejected(absl::StatusCode code) const {
  if (metrics_ == nullptr) return;
  const char* reason = code == absl::StatusCode::kResourceExhausted ? "overloaded"
                       : code == absl::StatusCode::kUnauthenticated ? "unauthenticated"
                       : code == absl::StatusCode::kUnavailable     ? "unavailable"
                                                                    : "invalid_argument";
  metrics_->RequestsRejected(reason)->Inc();
}

grpc::Status GenerationService::TokenizeMessage(const pb::TokenizeRequest* request,
                                                pb::TokenizeResponse* response) {
  if (engine_.load(std::memory_order_acquire) == nullptr) {
    return ToGrpcStatus(absl::UnavailableError("the model is still loading"));
  }
  if (info_.tokenizer == nullptr) {
    return ToGrpcStatus(absl::InvalidArgumentError("text: this model has no tokenizer.json"));
  }
  for (int32_t id : info_.tokenizer->EncodePrompt(request->text())) {
    response->add_ids(static_cast<uint32_t>(id));
  }
  return grpc::Status::OK;
}

grpc::Status GenerationService::ModelInfoMessage(pb::ModelInfo* info) {
  const Engine* engine = engine_.load(std::memory_order_acquire);
  if (engine == nullptr) {
    return ToGrpcStatus(absl::UnavailableError("the model is still loading"));
  }
  const ModelConfig& c = info_.config;
  const KvCacheSpec& kv = engine->kv_spec();
  info->set_architecture(c.architecture_name);
  info->set_num_layers(c.num_layers);
  info->set_num_attention_heads(c.num_heads);
  info->set_num_key_value_heads(c.num_kv_heads);
  info->set_group_size(c.group_size());
  info->set_head_dim(c.head_dim);
  info->set_hidden_size(c.hidden_size);
  info->set_intermediate_size(c.intermediate_size);
  info->set_vocab_size(c.vocab_size);
  info->set_max_model_len(engine->config().limits.max_model_len);
  info->set_dtype(std::string(DTypeTorchName(c.dtype)));
  info->set_kv_block_size(kv.block_size);
  info->set_kv_blocks_total(kv.num_blocks);
  info->set_kv_token_capacity(kv.token_capacity());
  info->set_backend(std::string(engine->backend_name()));
  info->set_device(engine->backend().device_name());
  info->set_compute_dtype(std::string(DTypeTorchName(kv.dtype)));
  info->set_tensor_parallel_size(engine->backend().tensor_parallel_size());
  info->set_kv_heads_per_rank(kv.num_kv_heads);
  info->set_model_path(info_.model_path);
  for (int id : c.eos_token_ids) info->add_eos_token_ids(id);
  info->set_has_tokenizer(info_.tokenizer != nullptr);
  info->set_converted_from_kv_heads(c.converted_from_kv_heads.value_or(0));
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* GenerationService::Tokenize(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return ServeUnary<pb::TokenizeRequest, pb::TokenizeResponse>(
      context, auth_, request, response,
      [this](const pb::TokenizeRequest& in, pb::TokenizeResponse* out) {
        return TokenizeMessage(&in, out);
      });
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request,
                                                          grpc::ByteBuffer* response) {
  return ServeUnary<pb::GetModelInfoRequest, pb::ModelInfo>(
      context, auth_, request, response,
      [this](const pb::GetModelInfoRequest&, pb::ModelInfo* out) { return ModelInfoMessage(out); });
}

}  // namespace gqa
