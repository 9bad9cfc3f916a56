// gqa.v1.Generation over the gRPC callback API. Reactors only convert, enqueue into the engine
// and write what the engine sends back; they never block.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include "chat_template/chat_template.h"
#include "engine/engine.h"
#include "gqa/v1/generation.grpc.pb.h"
#include "metrics/engine_metrics.h"
#include "model/config.h"
#include "service/bearer_token.h"
#include "service/request_conversion.h"
#include "tokenizer/tokenizer.h"

namespace gqa {

struct ServiceInfo {
  ModelConfig config;
  std::string model_path;  // reported by GetModelInfo (empty: not revealed)
  int default_max_new_tokens = 256;
  const Tokenizer* tokenizer = nullptr;  // text prompts and stop strings need one
  const chat::LoadedChatTemplate* chat_template = nullptr;  // prompt.messages needs one
};

// Every method takes and returns raw bytes (gRPC's raw callback API) and parses them itself, so a
// malformed message gets INVALID_ARGUMENT with a message rather than a bare UNIMPLEMENTED.
using RawGenerationService = gqa::v1::Generation::WithRawCallbackMethod_Generate<
    gqa::v1::Generation::WithRawCallbackMethod_GetModelInfo<
        gqa::v1::Generation::WithRawCallbackMethod_Tokenize<gqa::v1::Generation::Service>>>;

class GenerationService final : public RawGenerationService {
 public:
  // Serves from the start; calls get UNAVAILABLE until Attach gives it a loaded model.
  // Every call must pass `auth` (none by default); refused Generate calls are counted in
  // `metrics` (may be null).
  explicit GenerationService(BearerToken auth = BearerToken(), EngineMetrics* metrics = nullptr)
      : auth_(std::move(auth)), metrics_(metrics) {}
  // Publishes the engine (which must outlive the service's calls) and what it serves.
  void Attach(Engine* engine, ServiceInfo info);

  // New Generate calls get UNAVAILABLE from now on.
  void StopAccepting() { accepting_.store(false); }
  // Waits until every Generate call has finished (its last message written or the call
  // cancelled), at most `timeout`; false if some are still open.
  bool WaitForStreams(std::chrono::milliseconds timeout) const;

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  grpc::Status TokenizeMessage(const gqa::v1::TokenizeRequest* request,
                               gqa::v1::TokenizeResponse* response);
  grpc::Status ModelInfoMessage(gqa::v1::ModelInfo* info);
  void CountRejected(absl::StatusCode code) const;

  const BearerToken auth_;
  EngineMetrics* const metrics_;
  ServiceInfo info_;                      // written once, before engine_ is published
  std::atomic<Engine*> engine_{nullptr};  // null while the model loads
  std::atomic<bool> accepting_{true};
  std::atomic<int> open_streams_{0};  // Generate calls gRPC has not finished with
  std::atomic<uint64_t> next_request_number_{1};
};

}  // namespace gqa
